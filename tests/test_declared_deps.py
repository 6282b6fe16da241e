"""Declared = read: each stage reads exactly the params, modules and files its dvc.yaml entry declares.

Why: DVC reruns a stage only when something it *declares* changed. A param read but not declared
means stale results after a change; one declared but never read means needless reruns.

How: every stage runs in a sandbox holding only params.yaml, the package `__init__.py` files and
the stage's declared deps (copied from the previous stages' sandbox outputs), so an undeclared
import or data file makes it fail. The evidence comes from outside the product, through a
`sitecustomize` on PYTHONPATH (TRACE_HOOK) that each stage process loads at start-up. It takes the
editable install's finder off `sys.meta_path`, so a module missing from the sandbox cannot be
borrowed from the project; it wraps `load_config` and the config section classes' attribute access
as `mnist_pipeline.core.config` is imported, to record the dotted keys the stage reads; at exit it writes
the modules imported from the sandbox (and any project module that came from elsewhere), and an
audit hook's list of the files the process opened. The tests compare these with dvc.yaml, in both
directions, and check that the stage writes nothing outside its declared outs.

Configuration rule: a key read only under some configuration (the CNN keys when `model.type` is
cnn, the folder keys such as `preprocess.test_fraction` when `data.dataset` is folder) counts as read
when any configuration reads it. Every stage that declares a key of VARIANTS therefore runs once more
per value listed there, with the overrides that value needs, and the traces are merged; each run is
checked against its own configuration's dvc.yaml (`${data.folder}` names another dep under folder).
A new key that only some setting of another key reads belongs in VARIANTS, or this test reports it
as declared but never read; a new value of a variant key must be listed there or in NOT_RUN.

The values run are listed, not taken from the schema's choices. `data.dataset: fashion_mnist` is
not run: the sandboxes hold only the default data set's download (data/raw is download's output in
the default configuration), and fashion_mnist goes through the same IDX code path and reads the same
keys as mnist, so its run would only cost a second download. The folder run reads a small folder of
real MNIST test digits written as PNG files into the workspace (DIGIT_FOLDER), the digit CSV run the
same kind of digits as rows of a CSV file (DIGIT_CSV).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_FILES, PROJECT_ROOT, TINY_PARAMS, once_per_session, set_dotted, subprocess_env
from dvc_spec import PARAMS_FILE, Stage, choices, covers, expand, leaf_params, load_stages
from PIL import Image

from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS
from mnist_pipeline.sources.idx import read_idx
from tools.stage_deps import holds_code

# Where the folder configuration's images lie in the workspace (a path inside the project, as
# data.folder must be), and how many: enough that each class has training images and the test split
# is not empty at the default fractions, few enough to decode in a moment.
DIGIT_FOLDER = "data/digits"
DIGIT_CLASSES, DIGITS_PER_CLASS = 3, 10
# The digit CSV configuration's file: the same digits as rows of Kaggle's train.csv layout.
DIGIT_CSV = "data/digits.csv"
# Keys whose value picks which other keys a stage reads: value -> the overrides its run needs besides
# the key itself. Each stage declaring the key runs once more per value listed.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "model.type": {"cnn": {}},
    "data.dataset": {"folder": {"data.folder": DIGIT_FOLDER}, "digit_csv": {"data.folder": DIGIT_CSV}},
}
# Values of a variant key that are not run, and why (the module docstring says more).
NOT_RUN = {
    ("data.dataset", "fashion_mnist"): "the same IDX code and keys as mnist; the sandboxes hold only mnist's download",
}
# A validation split, so the validation arrays are really read and the eval curves really written.
SANDBOX_PARAMS = {**TINY_PARAMS, "preprocess.val_size": 100}
STAGES = load_stages(PROJECT_ROOT)

TRACE_HOOK = '''\
"""Stage-process tracer for tests/test_declared_deps.py, loaded as `sitecustomize` (never imported by the product)."""
import atexit, functools, json, os, sys

PACKAGES = ("mnist_pipeline", "stages")
_opens_out, _trace_out = os.environ.get("OPENS_TRACE"), os.environ.get("STAGE_TRACE")
_sandbox = os.path.realpath(os.getcwd())


def _editable(obj):
    return str(getattr(obj, "__module__", "") or "").startswith("__editable__")


if _trace_out:
    # (1) Only the sandbox's copies of the project can be imported: the editable install's finder
    # (added by a .pth file before this runs) would load any module missing here from the project.
    sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
    sys.path[:] = [p for p in sys.path if not p.startswith("__editable__") and not any(
        os.path.isdir(os.path.join(p or ".", pkg)) for pkg in PACKAGES)]
    sys.path_importer_cache.clear()

    # (3) Param keys read: reads of leaf fields on the objects load_config returned, by dotted key.
    _params, _prefixes, _alive, _loads = set(), {}, [], []

    def _is_section(annotation):
        from pydantic import BaseModel
        return isinstance(annotation, type) and issubclass(annotation, BaseModel)

    def _instrument(config):
        leaves = {}  # section class -> its leaf field names

        def walk(cls):
            if cls not in leaves:
                leaves[cls] = {n for n, f in cls.model_fields.items() if not _is_section(f.annotation)}
                for f in cls.model_fields.values():
                    if _is_section(f.annotation):
                        walk(f.annotation)

        def trace_classes(root):
            """Trace reads on `root` and its sections: core's Config, or the train stage's wider schema."""
            known = set(leaves)
            walk(root)
            for cls in set(leaves) - known:
                original = cls.__getattribute__

                def traced(self, name, _original=original, _leaves=leaves[cls]):
                    value = _original(self, name)
                    prefix = _prefixes.get(id(self))
                    if prefix is not None:
                        if name in _leaves:
                            _params.add(prefix + name)
                        elif name in ("model_dump", "model_dump_json"):  # a whole section handed on as data
                            read_all(self, prefix)
                    return value
                cls.__getattribute__ = traced

        def register(obj, prefix):
            _prefixes[id(obj)] = prefix
            _alive.append(obj)  # kept alive, so its id is never reused by another object
            for name, value in object.__getattribute__(obj, "__dict__").items():
                if type(value) in leaves:
                    register(value, f"{prefix}{name}.")

        def read_all(obj, prefix):
            for name, value in object.__getattribute__(obj, "__dict__").items():
                if type(value) in leaves:
                    read_all(value, f"{prefix}{name}.")
                else:
                    _params.add(prefix + name)

        trace_classes(config.Config)
        load = config.load_config

        @functools.wraps(load)
        def load_config(*args, **kwargs):
            cfg = load(*args, **kwargs)
            _loads.append(1)
            trace_classes(type(cfg))
            register(cfg, "")
            return cfg

        config.load_config = load_config

    class _InstrumentingLoader:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):  # get_source and friends, for tracebacks
            return getattr(self._inner, name)

        def create_module(self, spec):
            return self._inner.create_module(spec)

        def exec_module(self, module):
            self._inner.exec_module(module)
            _instrument(module)

    class _ConfigWatcher:
        """Finds mnist_pipeline.core.config with the other finders and instruments it once it has run."""

        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if fullname != "mnist_pipeline.core.config":
                return None
            for finder in sys.meta_path:
                if finder is not cls and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        spec.loader = _InstrumentingLoader(spec.loader)
                        return spec
            return None

    sys.meta_path.insert(0, _ConfigWatcher)

    # (2) Modules: every one whose file lies in the sandbox's packages; a project module from anywhere
    # else means the sandbox leaked, which the test reports.
    def _dump_trace():
        inside, outside = set(), set()
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if not file:
                continue
            path = os.path.realpath(file)
            rel = os.path.relpath(path, _sandbox)
            if not rel.startswith("..") and rel.split(os.sep)[0] in PACKAGES:
                inside.add(rel.replace(os.sep, "/"))
            elif name.split(".")[0] in PACKAGES:
                outside.add(f"{name} ({path})")
        record = {"params": sorted(_params), "modules": sorted(inside), "outside": sorted(outside),
                  "load_config_calls": len(_loads)}
        with open(_trace_out, "a") as f:
            f.write(json.dumps(record) + "\\n")

    atexit.register(_dump_trace)

if _opens_out:
    _opened = []

    def _hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            write = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & (os.O_WRONLY | os.O_RDWR))
            _opened.append([os.path.abspath(os.fsdecode(path)), write])

    def _dump_opens():
        text = json.dumps(_opened) + "\\n"
        with open(_opens_out, "a") as f:
            f.write(text)

    sys.addaudithook(_hook)
    atexit.register(_dump_opens)
'''


@dataclass
class Run:
    """What one stage process did in its sandbox."""

    stage: Stage  # as dvc.yaml resolves for this run's configuration
    params: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)


@dataclass
class Workspace:
    """The runs' shared folders: `work` collects each stage's outputs for the next stage's sandbox."""

    root: Path
    work: Path
    hook_dir: Path


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def package_inits(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for name in ("stages", "mnist_pipeline")
                  for p in (root / name).glob("__init__.py"))


def copy_into(source: Path, target: Path, rel: str) -> None:
    src, dst = source / rel, target / rel
    assert src.exists(), f"{rel} is a declared dep but neither the project nor an upstream stage provides it"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def run_in_sandbox(stage: Stage, space: Workspace, sandbox: Path,
                   overrides: dict | None = None) -> tuple[subprocess.CompletedProcess[str], dict, set[str]]:
    """Run the stage's own `cmd` where only its declared inputs exist: the process, its trace record
    (TRACE_HOOK) and the sandbox's files before the run."""
    for rel in [PARAMS_FILE, *package_inits(space.work), *stage.deps]:
        copy_into(space.work, sandbox, rel)
    if overrides:
        tree = yaml.safe_load((sandbox / PARAMS_FILE).read_text())
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        (sandbox / PARAMS_FILE).write_text(yaml.safe_dump(tree, sort_keys=False))
    before = files_under(sandbox)
    stage_trace, opens_trace = sandbox.parent / f"{sandbox.name}.trace", sandbox.parent / f"{sandbox.name}.opens"
    env = subprocess_env(
        DATASET_MIRROR=os.environ["DATASET_MIRROR"],
        STAGE_TRACE=str(stage_trace),
        OPENS_TRACE=str(opens_trace),
        PYTHONPATH=str(space.hook_dir),
        PYTHONDONTWRITEBYTECODE="1",
    )
    result = subprocess.run(stage.cmd, shell=True, cwd=sandbox, env=env, capture_output=True, text=True, timeout=900)
    records = [json.loads(line) for line in stage_trace.read_text().splitlines()] if stage_trace.exists() else []
    assert len(records) == 1, f"expected one trace from {stage.cmd}, found {len(records)}\n{result.stderr[-3000:]}"
    assert not records[0]["outside"], (
        f"stage {stage.name} loaded project modules from outside its sandbox: {records[0]['outside']}"
    )
    return result, records[0], before


def run_sandboxed(stage: Stage, space: Workspace, sandbox: Path, overrides: dict | None = None) -> Run:
    """A stage run that must succeed with only its declared deps present; what it read and wrote."""
    result, record, before = run_in_sandbox(stage, space, sandbox, overrides)
    assert result.returncode == 0, (
        f"stage {stage.name} failed with only its declared deps present (an undeclared import or file?)\n"
        f"{result.stderr[-3000:]}"
    )
    assert record["load_config_calls"] == 1, f"stage {stage.name}: load_config ran {record['load_config_calls']} times"
    opens_trace = sandbox.parent / f"{sandbox.name}.opens"
    opened = [entry for line in opens_trace.read_text().splitlines() for entry in json.loads(line)]
    root = sandbox.resolve()
    reads = set()
    for path, write in opened:
        rel = Path(path).resolve()
        if not write and rel.is_relative_to(root):
            reads.add(rel.relative_to(root).as_posix())
    created = files_under(sandbox) - before
    return Run(stage, set(record["params"]), set(record["modules"]), reads & before, created)


def write_digit_folder(root: Path, mirror: Path, classes: int = DIGIT_CLASSES, per_class: int = DIGITS_PER_CLASS,
                       skip: int = 0) -> None:
    """A folder data set of real MNIST test digits as 28x28 PNG files, `root/<digit>/<n>.png`: the
    first `per_class` of each of the digits 0 .. classes-1, after `skip` of each."""
    images = read_idx(mirror / "mnist" / TEST_IMAGES, "images")
    labels = read_idx(mirror / "mnist" / TEST_LABELS, "labels")
    for digit in range(classes):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        picked = images[labels == digit][skip : skip + per_class]
        assert len(picked) == per_class, f"the mirror's test set has too few {digit}s"
        for index, pixels in enumerate(picked):
            Image.fromarray(pixels).save(folder / f"{skip + index:04d}.png")


def write_digit_csv(path: Path, mirror: Path, rows: int = DIGIT_CLASSES * DIGITS_PER_CLASS * 2) -> None:
    """The first `rows` real MNIST test digits as Kaggle's digit CSV: a header, then label and 784 pixels a row."""
    images = read_idx(mirror / "mnist" / TEST_IMAGES, "images")[:rows]
    labels = read_idx(mirror / "mnist" / TEST_LABELS, "labels")[:rows]
    header = "label," + ",".join(f"pixel{i}" for i in range(images[0].size))
    path.write_text(header + "\n" + "".join(f"{label}," + ",".join(map(str, pixels.reshape(-1).tolist())) + "\n"
                                            for pixels, label in zip(images, labels, strict=True)))


def build_space(root: Path, mirror_root: Path) -> Workspace:
    """The project (SANDBOX_PARAMS applied) and the folder variant's digits in `work`, and the hook
    folder every stage process loads."""
    space = Workspace(root, root / "work", root / "hook")
    space.hook_dir.mkdir()
    (space.hook_dir / "sitecustomize.py").write_text(TRACE_HOOK)
    for name in PROJECT_FILES:
        copy_into(PROJECT_ROOT, space.work, name)
    tree = yaml.safe_load((space.work / PARAMS_FILE).read_text())
    for key, value in SANDBOX_PARAMS.items():
        set_dotted(tree, key, value)
    (space.work / PARAMS_FILE).write_text(yaml.safe_dump(tree, sort_keys=False))
    write_digit_folder(space.work / DIGIT_FOLDER, mirror_root)
    write_digit_csv(space.work / DIGIT_CSV, mirror_root)
    return space


def run_all(space: Workspace) -> dict[str, list[Run]]:
    """Every stage in dvc.yaml order, each in its own sandbox; again for each VARIANTS value of a key it declares."""
    leaves = leaf_params(space.work)
    found: dict[str, list[Run]] = {}
    for stage in load_stages(space.work).values():
        found[stage.name] = [run_sandboxed(stage, space, space.root / stage.name)]
        for out in stage.outs:  # downstream sandboxes copy their deps from here
            shutil.rmtree(space.work / out, ignore_errors=True)
            copy_into(space.root / stage.name, space.work, out)
        for key, values in VARIANTS.items():
            if key not in expand(stage.params, leaves):
                continue
            for value, extra in values.items():
                overrides = {key: value, **extra}
                variant = load_stages(space.work, overrides)[stage.name]  # `${data.folder}` may differ
                sandbox = space.root / f"{stage.name}-{key}-{value}"
                found[stage.name].append(run_sandboxed(variant, space, sandbox, overrides))
    return found


RUNS_FILE = "runs.pickle"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Workspace:
    """The workspace after every sandboxed run (`run_all`), once per test session whichever worker asks first;
    the runs' record is in RUNS_FILE."""
    os.environ.setdefault("DATASET_MIRROR", str(mirror_root))

    def build(root: Path) -> None:
        (root / RUNS_FILE).write_bytes(pickle.dumps(run_all(build_space(root, mirror_root))))

    root = once_per_session(tmp_path_factory, "declared", build)
    return Workspace(root, root / "work", root / "hook")


@pytest.fixture(scope="module")
def runs(space: Workspace) -> dict[str, list[Run]]:
    return pickle.loads((space.root / RUNS_FILE).read_bytes())


@pytest.fixture(scope="module")
def leaves() -> dict:
    return leaf_params(PROJECT_ROOT)


def union(runs: list[Run], attr: str) -> set[str]:
    return set().union(*(getattr(r, attr) for r in runs))


def test_every_value_of_a_variant_key_is_run_or_excused(leaves: dict) -> None:
    """A value added to a variant key's choices (a new model type, a new data set) is run or given a reason."""
    for key, values in VARIANTS.items():
        assert choices(key), f"{key} is not a choice key: VARIANTS lists the values of choice keys"
        assert leaves[key] not in values, f"{key}: {leaves[key]} is params.yaml's value, run already"
        left = set(choices(key)) - {leaves[key]} - set(values) - {v for k, v in NOT_RUN if k == key}
        assert not left, f"{key}: values {sorted(left)} are neither run (VARIANTS) nor excused (NOT_RUN)"


def test_the_digit_csv_variant_reads_its_file(runs: dict[str, list[Run]]) -> None:
    """The CSV run really took the CSV path: its dep is DIGIT_CSV, which it opened."""
    (csv_run,) = [r for r in runs["preprocess"] if DIGIT_CSV in r.stage.deps]
    assert DIGIT_CSV in csv_run.reads, sorted(csv_run.reads)


def test_the_folder_variant_reads_its_folder(runs: dict[str, list[Run]]) -> None:
    """The folder run really took the folder path: its dep is DIGIT_FOLDER, whose images it opened."""
    (folder_run,) = [r for r in runs["preprocess"] if DIGIT_FOLDER in r.stage.deps]
    opened = {r for r in folder_run.reads if covers(r, DIGIT_FOLDER)}
    assert len(opened) == DIGIT_CLASSES * DIGITS_PER_CLASS, sorted(opened)
    assert "data/prepared/manifest.csv" in folder_run.created


@pytest.mark.parametrize("name", STAGES)
def test_every_param_read_is_declared(name: str, runs: dict[str, list[Run]], leaves: dict) -> None:
    undeclared = union(runs[name], "params") - expand(STAGES[name].params, leaves)
    assert not undeclared, f"stage {name} reads params it does not declare in dvc.yaml: {sorted(undeclared)}"


@pytest.mark.parametrize("name", STAGES)
def test_every_declared_param_is_read(name: str, runs: dict[str, list[Run]], leaves: dict) -> None:
    unread = expand(STAGES[name].params, leaves) - union(runs[name], "params")
    assert not unread, (
        f"stage {name} declares params it never reads (under any of {sorted(VARIANTS)}): {sorted(unread)}"
    )


@pytest.mark.parametrize("name", STAGES)
def test_imported_modules_are_exactly_the_code_deps(name: str, runs: dict[str, list[Run]]) -> None:
    docstring_inits = {p for p in package_inits(PROJECT_ROOT) if not holds_code(PROJECT_ROOT / p)}
    imported = union(runs[name], "modules") - docstring_inits
    declared = STAGES[name].code_deps
    # A package folder dep (model_types: its modules are found at run time) declares every file in it.
    undeclared = {m for m in imported - declared if not any(covers(m, d) for d in STAGES[name].deps)}
    assert not undeclared, f"stage {name} imports undeclared modules: {sorted(undeclared)}"
    assert not declared - imported, f"stage {name} declares modules it never imports: {sorted(declared - imported)}"


@pytest.mark.parametrize("name", STAGES)
def test_every_declared_data_dep_is_read(name: str, runs: dict[str, list[Run]]) -> None:
    """Each data dep is opened by some run whose configuration declares it."""
    for dep in {d for r in runs[name] for d in r.stage.deps} - STAGES[name].code_deps:
        reads = union([r for r in runs[name] if dep in r.stage.deps], "reads")
        assert any(covers(r, dep) for r in reads), f"stage {name} declares {dep} but never opens it"


@pytest.mark.parametrize("name", STAGES)
def test_every_file_read_is_declared(name: str, runs: dict[str, list[Run]]) -> None:
    """Each run opens only the files its own configuration's dvc.yaml entry declares."""
    for run in runs[name]:
        # Package __init__ files: present in every sandbox, exempt while docstring-only (see the last test).
        allowed = [PARAMS_FILE, *package_inits(PROJECT_ROOT), *run.stage.deps]
        undeclared = {r for r in run.reads if not any(covers(r, d) for d in allowed)}
        assert not undeclared, f"stage {name} opens files it does not declare: {sorted(undeclared)}"


@pytest.mark.parametrize("name", STAGES)
def test_writes_only_declared_outs(name: str, runs: dict[str, list[Run]]) -> None:
    for run in runs[name]:
        stray = {c for c in run.created if not any(covers(c, o) for o in run.stage.outs)}
        assert not stray, f"stage {name} writes files outside its declared outs: {sorted(stray)}"
    created = union(runs[name], "created")
    for out in STAGES[name].outs:
        assert any(covers(c, out) for c in created), f"stage {name} declares out {out} but never writes it"


@pytest.mark.parametrize("name", STAGES)
def test_cmd_path_arguments_are_deps_or_outs(name: str) -> None:
    """A path in `cmd` is a dep or out, lies inside one, or is the folder holding some."""
    stage = STAGES[name]
    declared = [*stage.deps, *stage.outs]
    assert stage.path_args, f"stage {name}: expected path arguments in cmd {stage.cmd!r}"
    for arg in stage.path_args:
        assert any(covers(arg, d) or covers(d, arg) for d in declared), (
            f"stage {name}: cmd argument {arg} is neither a dep nor an out"
        )


def test_a_package_init_holding_code_is_declared_by_every_stage_that_runs_it() -> None:
    """Python runs a package's `__init__` before any of its modules: one holding more than a docstring (the
    stages' venv check) must be a dep of every stage importing from that package, else editing it reruns nothing."""
    stages = load_stages(PROJECT_ROOT)
    inits = [p for p in PROJECT_ROOT.rglob("__init__.py")
             if p.relative_to(PROJECT_ROOT).parts[0] in ("stages", "mnist_pipeline") and "__pycache__" not in p.parts]
    with_code = [p.relative_to(PROJECT_ROOT).as_posix() for p in inits if holds_code(p)]
    assert "stages/__init__.py" in with_code, "the stages' venv check moved: update this test"
    for init in with_code:
        package = init.rsplit("/", 1)[0] + "/"
        for name, stage in stages.items():
            if any(d.startswith(package) and d != init for d in stage.deps):
                assert init in stage.deps, f"stage {name} runs {init} (it holds code) but does not declare it"


def test_a_module_left_out_of_the_deps_cannot_be_borrowed_from_the_project(
        space: Workspace, runs: dict[str, list[Run]], tmp_path: Path) -> None:
    """The sandbox really holds: with one module dep cut from a copy of dvc.yaml, the stage finds no
    copy of it anywhere (the editable install would otherwise load it from the project) and fails."""
    dropped = "mnist_pipeline/core/errors.py"
    spec = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    deps = spec["stages"]["train"]["deps"]
    assert dropped in deps, f"train no longer declares {dropped}: pick another module it imports"
    deps.remove(dropped)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy2(space.work / PARAMS_FILE, tmp_path / PARAMS_FILE)  # what dvc.yaml's `${...}` are filled from
    cut = load_stages(tmp_path)["train"]

    result, record, _ = run_in_sandbox(cut, space, space.root / "train-without-errors")  # checks record["outside"]
    assert result.returncode != 0, f"train ran without {dropped} in its sandbox: modules {record['modules']}"
    assert "No module named 'mnist_pipeline.core.errors'" in result.stderr, result.stderr[-3000:]
    assert dropped not in record["modules"]
