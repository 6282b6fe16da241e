"""Declared = read: each stage reads exactly the params, modules and files its dvc.yaml entry declares.

Why: DVC reruns a stage only when something it *declares* changed. A param read but not declared
means stale results after a change; one declared but never read means needless reruns.

How: every stage runs in a sandbox holding only params.yaml, the package `__init__.py` files and
the stage's declared deps (copied from the previous stages' sandbox outputs), so an undeclared
import or data file makes it fail. Each process leaves two traces: the params loader's record of
the keys and project modules it used (MNIST_PIPELINE_TRACE) and a Python audit hook's list of the
files it opened (installed through a `sitecustomize` on PYTHONPATH). The tests compare both with
dvc.yaml, in both directions, and check that the stage writes nothing outside its declared outs.

Configuration rule: a key read only under some configuration (the CNN keys when `model.type` is
cnn) counts as read when any configuration reads it. The train stage is therefore run once per
value of every key in VARIANT_KEYS and the traces are merged. A new key that only some setting of
another key reads belongs in VARIANT_KEYS, or this test reports it as declared but never read.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_FILES, PROJECT_ROOT, TINY_PARAMS, set_dotted, subprocess_env
from dvc_spec import PARAMS_FILE, Stage, choices, covers, expand, leaf_params, load_stages

# Keys whose value picks which other keys are read; the train stage runs once per allowed value.
VARIANT_KEYS = ("model.type",)
# A validation split, so the validation arrays are really read and the eval curves really written.
SANDBOX_PARAMS = {**TINY_PARAMS, "preprocess.val_size": 100}
STAGES = load_stages(PROJECT_ROOT)

OPEN_HOOK = """\
import atexit, json, os, sys

_out = os.environ.get("OPENS_TRACE")
if _out:
    _opened = []

    def _hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            write = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & (os.O_WRONLY | os.O_RDWR))
            _opened.append([os.path.abspath(os.fsdecode(path)), write])

    def _dump():
        text = json.dumps(_opened) + "\\n"
        with open(_out, "a") as f:
            f.write(text)

    sys.addaudithook(_hook)
    atexit.register(_dump)
"""


@dataclass
class Run:
    """What one stage process did in its sandbox."""

    params: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)


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


def run_sandboxed(stage: Stage, work: Path, sandbox: Path, hook_dir: Path, overrides: dict | None = None) -> Run:
    """Run the stage's own `cmd` where only its declared inputs exist; return its traces."""
    for rel in [PARAMS_FILE, *package_inits(work), *stage.deps]:
        copy_into(work, sandbox, rel)
    if overrides:
        tree = yaml.safe_load((sandbox / PARAMS_FILE).read_text())
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        (sandbox / PARAMS_FILE).write_text(yaml.safe_dump(tree, sort_keys=False))
    before = files_under(sandbox)
    params_trace, opens_trace = sandbox.parent / f"{sandbox.name}.params", sandbox.parent / f"{sandbox.name}.opens"
    env = subprocess_env(
        DATASET_MIRROR=os.environ["DATASET_MIRROR"],
        MNIST_PIPELINE_TRACE=str(params_trace),
        OPENS_TRACE=str(opens_trace),
        PYTHONPATH=str(hook_dir),
        PYTHONDONTWRITEBYTECODE="1",
    )
    result = subprocess.run(stage.cmd, shell=True, cwd=sandbox, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (
        f"stage {stage.name} failed with only its declared deps present (an undeclared import or file?)\n"
        f"{result.stderr[-3000:]}"
    )
    records = [json.loads(line) for line in params_trace.read_text().splitlines()]
    assert len(records) == 1, f"expected one params trace from {stage.cmd}, found {len(records)}"
    opened = [entry for line in opens_trace.read_text().splitlines() for entry in json.loads(line)]
    root = sandbox.resolve()
    reads = set()
    for path, write in opened:
        rel = Path(path).resolve()
        if not write and rel.is_relative_to(root):
            reads.add(rel.relative_to(root).as_posix())
    created = files_under(sandbox) - before
    return Run(set(records[0]["params"]), set(records[0]["modules"]), reads & before, created)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> dict[str, list[Run]]:
    """Every stage in dvc.yaml order, each in its own sandbox; train again for each VARIANT_KEYS value."""
    os.environ.setdefault("DATASET_MIRROR", str(mirror_root))
    root = tmp_path_factory.mktemp("declared")
    hook_dir = root / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(OPEN_HOOK)
    work = root / "work"
    for name in PROJECT_FILES:
        copy_into(PROJECT_ROOT, work, name)
    tree = yaml.safe_load((work / PARAMS_FILE).read_text())
    for key, value in SANDBOX_PARAMS.items():
        set_dotted(tree, key, value)
    (work / PARAMS_FILE).write_text(yaml.safe_dump(tree, sort_keys=False))
    leaves = leaf_params(work)

    found: dict[str, list[Run]] = {}
    for stage in load_stages(work).values():
        found[stage.name] = [run_sandboxed(stage, work, root / stage.name, hook_dir)]
        for out in stage.outs:  # downstream sandboxes copy their deps from here
            shutil.rmtree(work / out, ignore_errors=True)
            copy_into(root / stage.name, work, out)
        for key in VARIANT_KEYS:
            if key not in expand(stage.params, leaves):
                continue
            for value in choices(key):
                if value != leaves[key]:
                    sandbox = root / f"{stage.name}-{key}-{value}"
                    found[stage.name].append(run_sandboxed(stage, work, sandbox, hook_dir, {key: value}))
    return found


@pytest.fixture(scope="module")
def leaves() -> dict:
    return leaf_params(PROJECT_ROOT)


def union(runs: list[Run], attr: str) -> set[str]:
    return set().union(*(getattr(r, attr) for r in runs))


@pytest.mark.parametrize("name", STAGES)
def test_every_param_read_is_declared(name: str, runs: dict[str, list[Run]], leaves: dict) -> None:
    undeclared = union(runs[name], "params") - expand(STAGES[name].params, leaves)
    assert not undeclared, f"stage {name} reads params it does not declare in dvc.yaml: {sorted(undeclared)}"


@pytest.mark.parametrize("name", STAGES)
def test_every_declared_param_is_read(name: str, runs: dict[str, list[Run]], leaves: dict) -> None:
    unread = expand(STAGES[name].params, leaves) - union(runs[name], "params")
    assert not unread, (
        f"stage {name} declares params it never reads (under any of {VARIANT_KEYS}): {sorted(unread)}"
    )


@pytest.mark.parametrize("name", STAGES)
def test_imported_modules_are_exactly_the_code_deps(name: str, runs: dict[str, list[Run]]) -> None:
    imported = union(runs[name], "modules") - set(package_inits(PROJECT_ROOT))
    declared = STAGES[name].code_deps
    assert not imported - declared, f"stage {name} imports undeclared modules: {sorted(imported - declared)}"
    assert not declared - imported, f"stage {name} declares modules it never imports: {sorted(declared - imported)}"


@pytest.mark.parametrize("name", STAGES)
def test_every_declared_data_dep_is_read(name: str, runs: dict[str, list[Run]]) -> None:
    reads = union(runs[name], "reads")
    for dep in set(STAGES[name].deps) - STAGES[name].code_deps:
        assert any(covers(r, dep) for r in reads), f"stage {name} declares {dep} but never opens it"


@pytest.mark.parametrize("name", STAGES)
def test_every_file_read_is_declared(name: str, runs: dict[str, list[Run]]) -> None:
    # Package __init__ files: present in every sandbox, exempt while docstring-only (see the last test).
    allowed = [PARAMS_FILE, *package_inits(PROJECT_ROOT), *STAGES[name].deps]
    undeclared = {r for r in union(runs[name], "reads") if not any(covers(r, d) for d in allowed)}
    assert not undeclared, f"stage {name} opens files it does not declare: {sorted(undeclared)}"


@pytest.mark.parametrize("name", STAGES)
def test_writes_only_declared_outs(name: str, runs: dict[str, list[Run]]) -> None:
    stage = STAGES[name]
    created = union(runs[name], "created")
    stray = {c for c in created if not any(covers(c, o) for o in stage.outs)}
    assert not stray, f"stage {name} writes files outside its declared outs: {sorted(stray)}"
    for out in stage.outs:
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


def test_package_inits_hold_no_code() -> None:
    """They are imported by every stage yet declared by none: that is safe only while they are docstrings."""
    for rel in package_inits(PROJECT_ROOT):
        body = ast.parse((PROJECT_ROOT / rel).read_text()).body
        docstring_only = all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)
        assert docstring_only and len(body) <= 1, f"{rel} holds code: declare it in dvc.yaml deps or move the code"
