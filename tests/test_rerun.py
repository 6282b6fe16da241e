"""Only changed stages rerun: for every param key and for code edits, `dvc repro` runs exactly what it should.

Two baselines for the module: tiny real MNIST with a validation split (so `preprocess.seed`
matters), where every key is changed but those of IDX_FIXED; and the folder configuration
(`data.dataset: folder` on a small folder of real MNIST test digits as PNG files), where the keys of
FOLDER_KEYS are changed: those only a folder reads, and IDX_FIXED, whose other values an IDX data
set cannot take. Each baseline is reproduced once per test session, whichever worker needs it first
(`conftest.once_per_session`); each case starts from a copy of it (see `reset`) and costs one `dvc repro`.

Expected stages for a param change (the rule):
1. every stage that declares the key, or interpolates it into its cmd, deps or outs (`${data.folder}`),
   reruns (DVC sees the param or the command change);
2. such a stage's outputs change only if it really read the key in this configuration (the
   baseline repro is traced; an interpolated key names the stage's input, so it counts as read)
   and the key is in neither OUTPUT_INVARIANT nor UNCHANGED_HERE;
3. a stage downstream of a changed output reruns, and its own outputs count as changed,
   except where SKIPPED names it: it depends on the stage but not on the files that changed.
Keys read only under another configuration (CNN keys while `model.type` is mlp, the folder keys
such as `preprocess.test_fraction` for MNIST) thus rerun their stage, whose outputs come out
byte-identical, so the stages after it are skipped.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT, Project, copy_linked, make_project, once_per_session, ran_stages, set_dotted
from dvc_spec import Stage, choices, covers, expand, leaf_params, load_stages
from test_declared_deps import DIGIT_FOLDER, DIGITS_PER_CLASS, TRACE_HOOK, write_digit_folder

from mnist_pipeline.core.config import with_overrides
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.train.registry import all_types, keys_read_only_by, load_config, validate

pytestmark = pytest.mark.slow

BASE_PARAMS = {"preprocess.val_size": 100}
# Keys that rerun their stage without changing its output bytes.
OUTPUT_INVARIANT = {
    # Files are accepted only when their pinned checksums match: where they came from leaves no trace.
    "download.mirrors": "the local mirror is tried first and serves the same checksummed files",
    "download.timeout_s": "checksummed files, whatever the timeout",
    "download.retries": "checksummed files, whatever the retries",
    # Checkpoints are a side file in .cache/ (removed after the run); the training itself is the same.
    "train.checkpoint": "saving the state after each epoch changes no weight",
}
# Keys whose change in these cases leaves the bytes as they were, for a reason in the cases' data
# rather than in the key: the rule treats them as OUTPUT_INVARIANT.
UNCHANGED_HERE = {
    "train.memory_budget_mb": "1024 -> 1025 MiB: the few MiB of training images stay in memory, as before",
    "preprocess.bad_images": "the digit folder holds no unusable file: skipping them, not failing, drops none",
    "preprocess.max_image_pixels": "one pixel more still admits every 28x28 digit",
}
# Keys an IDX data set cannot take another value of: they are changed in the folder configuration only.
IDX_FIXED = {
    "data.folder": "an IDX data set is read from data/raw, the download's output: no other folder holds it",
    "preprocess.image_size": "MNIST's images are 28x28: preprocess refuses another size in one line (no resampling)",
    "preprocess.color": "MNIST is grayscale: preprocess refuses rgb in one line, it does not repeat the channel",
}
# Changed in the folder configuration: IDX_FIXED, and the keys only a folder reads (for MNIST they rerun
# preprocess alone, its bytes unchanged; here their effect reaches the model).
FOLDER_KEYS = (*IDX_FIXED, "preprocess.test_fraction", "preprocess.val_fraction", "preprocess.bad_images",
               "preprocess.max_image_pixels")
# Folder keys whose other value needs another layout of the folder: changed in their own case below.
LAYOUT_KEYS = {
    "preprocess.split": "folders reads train/ and test/ folders; the digit folder has its class folders at the top",
}
OTHER_DIGIT_FOLDER = "data/more-digits"  # the folder configuration's other data.folder: other digits
FOLDER_PARAMS = {**BASE_PARAMS, "data.dataset": "folder", "data.folder": DIGIT_FOLDER}
# Other values other_value() cannot make up: a path must name a folder the case holds.
OTHER_VALUES = {"data.folder": OTHER_DIGIT_FOLDER}
# Keys whose effect on the output bytes depends on the CPU: TensorFlow splits its sums differently with
# another thread count on some CPUs (an AMD EPYC of this project) and not on others (an Intel Xeon), so
# downstream stages rerun on the first kind only. Either outcome is accepted; nothing else is.
CPU_DEPENDENT = {"train.cpu_threads"}
# Stages downstream of a changed stage that still skip, because the files they read did not change.
SKIPPED = {
    "preprocess.test_limit": {"train": "only x_test/y_test change; train reads the train and val arrays"},
}
LEAVES = leaf_params(PROJECT_ROOT)
STAGES = load_stages(PROJECT_ROOT)
UNREACHABLE_MIRROR = "https://unused.invalid/"


def other_value(key: str, value: Any) -> Any:
    """Another value the schema accepts: the next choice, the flipped bool, the number nudged up."""
    if key in OTHER_VALUES:
        candidates: list[Any] = [OTHER_VALUES[key]]
    elif choices(key):
        candidates = [c for c in choices(key) if c != value]
    elif isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, int):
        candidates = [value + 1, value - 1]
    elif isinstance(value, float):
        candidates = [value * 2, value + 0.25, value / 2]
    elif isinstance(value, list):
        candidates = [[value[0] + 1, *value[1:]]] if value else [[8], [1]]  # [1]: a block number
    elif isinstance(value, dict):  # mirrors: one more (never reached) public URL per data set
        candidates = [{k: [*v, UNREACHABLE_MIRROR] for k, v in value.items()}]
    else:
        candidates = []
    base = load_config(PROJECT_ROOT / "params.yaml")
    for candidate in candidates:
        if candidate == value:
            continue
        try:
            with_overrides(base, {key: candidate})
        except PipelineError:
            continue
        return candidate
    raise AssertionError(f"no other valid value for {key} = {value!r}: teach other_value() one")


def ignored_by_model_type(key: str) -> bool:
    """A key that only the model type not chosen reads (the product's own table): no effect on the bytes,
    though the stage hashes it into its checkpoint key and warns when it differs from its default."""
    chosen = LEAVES["model.type"]
    return any(key in keys_read_only_by(kind) for kind in all_types() if kind != chosen)


def expected_stages(key: str, baseline: Project, bytes_change: bool = True) -> set[str]:
    """The rule in the module docstring, applied to dvc.yaml as the baseline's configuration resolves it."""
    stages: dict[str, Stage] = baseline.stages  # type: ignore[attr-defined]
    read: dict[str, set[str]] = baseline.read  # type: ignore[attr-defined]
    declaring = {name for name, stage in stages.items()
                 if key in expand(stage.params, LEAVES) or key in stage.templated}
    changed = {name for name in declaring if (key in read[name] or key in stages[name].templated)
               and key not in OUTPUT_INVARIANT and key not in UNCHANGED_HERE
               and not ignored_by_model_type(key) and bytes_change}
    expected = set(declaring)
    for name, stage in stages.items():  # dvc.yaml order is topological
        if name in expected or name in SKIPPED.get(key, {}):
            continue
        upstream_outs = [o for c in changed for o in stages[c].outs]
        if any(covers(d, o) or covers(o, d) for d in stage.deps for o in upstream_outs):
            expected.add(name)
            changed.add(name)
    return expected


def reproduce_traced(project: Project) -> None:
    """The baseline: every stage run once, traced (`trace.jsonl` beside the repo records which params each
    stage really read), and committed."""
    # Which params each stage really reads, recorded from outside by the declared-deps test's tracer.
    trace, hook_dir = project.path.parent / "trace.jsonl", project.path.parent / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(TRACE_HOOK)
    result = project.dvc("repro", env={**project.env, "STAGE_TRACE": str(trace), "PYTHONPATH": str(hook_dir)})
    assert ran_stages(result.stdout + result.stderr) == list(STAGES)
    project.commit("baseline: reproduced, metrics and dvc.lock committed")


def params_read(trace: Path) -> dict[str, set[str]]:
    """Which params each stage read in the traced baseline repro."""
    read: dict[str, set[str]] = {name: set() for name in STAGES}
    by_file = {stage.module.replace(".", "/") + ".py": name for name, stage in STAGES.items()}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        entries = [by_file[m] for m in record["modules"] if m in by_file]
        if entries:  # dvc's own processes load the tracer too, and record no stage
            (entry,) = entries
            read[entry] |= set(record["params"])
    return read


def build_mnist(folder: Path, mirror_root: Path) -> None:
    reproduce_traced(make_project(folder / "repo", mirror_root, BASE_PARAMS))


def build_folder(folder: Path, mirror_root: Path) -> None:
    """The folder configuration: two DVC-tracked folders of real digits, the second for data.folder's other value."""
    project = make_project(folder / "repo", mirror_root, FOLDER_PARAMS)
    write_digit_folder(project.path / DIGIT_FOLDER, mirror_root)
    write_digit_folder(project.path / OTHER_DIGIT_FOLDER, mirror_root, skip=DIGITS_PER_CLASS)
    project.dvc("add", DIGIT_FOLDER, OTHER_DIGIT_FOLDER)
    project.commit("the digit folders")
    reproduce_traced(project)


BASELINES = {"project": build_mnist, "folder_project": build_folder}  # fixture name -> how its baseline is built


def baseline(name: str, request: pytest.FixtureRequest, mirror_root: Path) -> Project:
    """The reproduced baseline of fixture `name`, built once per session (a worker that finds it being built
    builds the other one meanwhile, if some selected test needs it); `project.read` holds which params each
    stage really read, `project.stages` the stages as this configuration resolves dvc.yaml."""
    wanted = {fixture for item in request.session.items if item.path == request.path for fixture in item.fixturenames}
    others = {f"rerun-{other}": functools.partial(build, mirror_root=mirror_root)
              for other, build in BASELINES.items() if other != name and other in wanted}
    folder = once_per_session(request.getfixturevalue("tmp_path_factory"), f"rerun-{name}",
                              functools.partial(BASELINES[name], mirror_root=mirror_root), others)
    project = Project(folder / "repo", mirror_root)
    project.read = params_read(folder / "trace.jsonl")  # type: ignore[attr-defined]
    project.stages = load_stages(project.path)  # type: ignore[attr-defined]
    return project


@pytest.fixture(scope="module")
def project(request: pytest.FixtureRequest, mirror_root: Path) -> Project:
    return baseline("project", request, mirror_root)


@pytest.fixture(scope="module")
def folder_project(request: pytest.FixtureRequest, mirror_root: Path) -> Project:
    return baseline("folder_project", request, mirror_root)


def reset(project: Project, path: Path) -> Project:
    """A copy of the committed, reproduced baseline at `path`: its git repo, DVC cache and outputs as the
    baseline repro left them (`conftest.copy_linked`: data files hard-linked, as `dvc checkout` links them).

    Each case gets its own working tree, copied from the finished baseline rather than cloned and checked
    out (three `dvc` commands a case): nothing is left over from another case, and
    `test_second_repro_runs_nothing` proves such a copy is up to date.
    """
    copy_linked(project.path, path)
    case = Project(path, None)
    case.env = project.env
    case.read, case.stages = project.read, project.stages  # type: ignore[attr-defined]
    return case


def test_other_values_are_valid() -> None:
    """Every key gets another value, and params.yaml with it still validates as a whole."""
    for key, value in LEAVES.items():
        tree = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
        set_dotted(tree, key, other_value(key, value))
        validate(tree, "params.yaml")


def check_param_change(baseline: Project, key: str, path: Path) -> None:
    """One `dvc repro` after changing `key` in a copy of `baseline` at `path` runs exactly the rule's stages."""
    case = reset(baseline, path)
    value = leaf_params(case.path)[key]
    new = other_value(key, value)
    case.set_params({key: new})
    ran = case.repro()
    expected = expected_stages(key, baseline)
    assert len(ran) == len(set(ran)), f"a stage ran twice: {ran}"
    if key in CPU_DEPENDENT and set(ran) != expected:
        expected = expected_stages(key, baseline, bytes_change=False)
    assert set(ran) == expected, f"{key}: {value!r} -> {new!r} ran {ran}, expected {sorted(expected)}"


def test_every_key_is_changed_in_some_configuration() -> None:
    """A key the MNIST cases leave out is changed in the folder configuration, and only such keys are."""
    assert set(IDX_FIXED) <= set(FOLDER_KEYS) <= set(LEAVES), sorted(set(FOLDER_KEYS) - set(LEAVES))


@pytest.mark.parametrize("key", [k for k in LEAVES if k not in IDX_FIXED])
def test_param_change_reruns_exactly_the_expected_stages(project: Project, key: str, tmp_path: Path) -> None:
    check_param_change(project, key, tmp_path / "repo")


@pytest.mark.parametrize("key", FOLDER_KEYS)
def test_param_change_in_the_folder_configuration_reruns_exactly_the_expected_stages(
        folder_project: Project, key: str, tmp_path: Path) -> None:
    check_param_change(folder_project, key, tmp_path / "repo")


def test_keys_only_a_folder_reads_are_changed_in_the_folder_configuration(
        project: Project, folder_project: Project) -> None:
    """FOLDER_KEYS is complete: every key the folder configuration reads and MNIST's does not is in it."""
    mnist_reads = set().union(*project.read.values())  # type: ignore[attr-defined]
    folder_reads = set().union(*folder_project.read.values())  # type: ignore[attr-defined]
    assert folder_reads - mnist_reads, "the folder configuration reads no key of its own: is it a folder run?"
    missing = folder_reads - mnist_reads - set(FOLDER_KEYS) - set(LAYOUT_KEYS)
    assert not missing, f"keys only the folder configuration reads, never changed there: {sorted(missing)}"


def test_split_change_in_the_folder_configuration_reruns_preprocess_which_reads_the_other_layout(
        folder_project: Project, tmp_path: Path) -> None:
    """`preprocess.split: folders` on the digit folder: preprocess reruns, as it declares the key, and refuses
    class folders at the top in one line; no later stage runs on the failed preprocess."""
    case = reset(folder_project, tmp_path / "repo")
    case.set_params({"preprocess.split": "folders"})
    result = case.dvc("repro", check=False)
    assert result.returncode != 0
    assert ran_stages(result.stdout + result.stderr) == ["preprocess"]
    assert f"error: {DIGIT_FOLDER}/0: a folder beside the split folders" in result.stderr


def test_second_repro_runs_nothing(project: Project, tmp_path: Path) -> None:
    """The baseline, and so every case's copy of it, is up to date: a repro there runs nothing."""
    case = reset(project, tmp_path / "repo")
    assert case.repro() == []


@pytest.mark.parametrize("name", STAGES)
def test_editing_stage_code_reruns_only_that_stage(project: Project, name: str, tmp_path: Path) -> None:
    """A comment changes the code hash, not the outputs: the stage reruns and, its bytes equal, nothing after it."""
    case = reset(project, tmp_path / "repo")
    code = case.path / (STAGES[name].module.replace(".", "/") + ".py")
    code.write_text(code.read_text() + "# touched by test_rerun\n")
    assert case.repro() == [name]


def _one_module_per_declarer_set() -> list[str]:
    """Shared modules grouped by which stages declare them; one module stands for each group."""
    groups: dict[frozenset[str], str] = {}
    modules = sorted({d for s in STAGES.values() for d in s.code_deps if d.startswith("mnist_pipeline/")})
    for module in modules:
        groups.setdefault(frozenset(n for n, s in STAGES.items() if module in s.deps), module)
    return list(groups.values())


@pytest.mark.parametrize("module", _one_module_per_declarer_set())
def test_editing_shared_module_reruns_exactly_its_declarers(project: Project, module: str, tmp_path: Path) -> None:
    case = reset(project, tmp_path / "repo")
    path = case.path / module
    path.write_text(path.read_text() + "# touched by test_rerun\n")
    declarers = {n for n, s in STAGES.items() if module in s.deps}
    ran = case.repro()
    assert len(ran) == len(set(ran)) and set(ran) == declarers, f"{module}: ran {ran}, expected {sorted(declarers)}"
