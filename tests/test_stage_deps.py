"""tools/stage_deps.py keeps dvc.yaml's code deps equal to the stages' imports, so DVC reruns what an edit affects.

Fast and static (no stage runs): the tool follows the imports; tests/test_declared_deps.py checks the
same lists against real stage processes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT
from dvc_spec import load_stages

TOOL = PROJECT_ROOT / "tools" / "stage_deps.py"


def stage_deps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def copy_project(target: Path) -> Path:
    """dvc.yaml and the code (all the tool reads), with dvc.yaml written by the tool: each case
    starts from a consistent copy whatever state the working tree is in. params.yaml too: `load_stages`
    fills dvc.yaml's `${...}` from it."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(PROJECT_ROOT / name, target / name)
    for name in ("stages", "mnist_pipeline"):
        shutil.copytree(PROJECT_ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", ".tmp-*"))
    written = stage_deps("--write", "--root", str(target))
    assert written.returncode == 0, written.stderr
    return target


def edit_deps(root: Path, stage: str, remove: str | None = None, add: str | None = None) -> None:
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    deps = spec["stages"][stage]["deps"]
    if remove:
        assert remove in deps, f"{stage} does not declare {remove}: pick another dep"
        deps.remove(remove)
    if add:
        assert add not in deps, f"{stage} already declares {add}: pick another module"
        deps.insert(1, add)
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def computed_deps(root: Path) -> dict[str, list[str]]:
    """The tool's own listing, `stage: dep dep ...` per line."""
    result = stage_deps("--root", str(root))
    assert result.returncode == 0, result.stderr
    return {name: deps.split() for name, _, deps in (line.partition(": ") for line in result.stdout.splitlines())}


def test_the_projects_dvc_yaml_declares_exactly_the_imported_modules() -> None:
    result = stage_deps("--check")
    assert result.returncode == 0, f"run `python tools/stage_deps.py --write`:\n{result.stderr}"
    assert result.stderr == ""


def test_check_names_a_module_missing_from_a_stages_deps(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    edit_deps(root, "train", remove="mnist_pipeline/core/errors.py")
    result = stage_deps("--check", "--root", str(root))
    assert result.returncode == 1, result.stderr
    assert result.stderr == "error: dvc.yaml: stage train: imports but does not declare mnist_pipeline/core/errors.py\n"


def test_check_names_a_declared_module_the_stage_never_imports(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    edit_deps(root, "evaluate", add="mnist_pipeline/sources/idx.py")
    result = stage_deps("--check", "--root", str(root))
    assert result.returncode == 1, result.stderr
    expected = "error: dvc.yaml: stage evaluate: declares but never imports mnist_pipeline/sources/idx.py\n"
    assert result.stderr == expected


def test_write_restores_the_computed_deps(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    assert stage_deps("--check", "--root", str(root)).returncode == 0
    consistent = load_stages(root)["train"].deps
    edit_deps(root, "train", remove="mnist_pipeline/core/errors.py", add="mnist_pipeline/sources/idx.py")
    assert stage_deps("--check", "--root", str(root)).returncode == 1
    assert stage_deps("--write", "--root", str(root)).returncode == 0
    assert stage_deps("--check", "--root", str(root)).returncode == 0
    assert load_stages(root)["train"].deps == consistent  # data deps kept, in order


def digests(root: Path, files: set[str]) -> dict[str, str]:
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("edited", ["mnist_pipeline/sources/idx.py"])
def test_a_comment_edit_touches_only_the_stages_that_import_the_module(tmp_path: Path, edited: str) -> None:
    """The IDX reader is preprocess's alone: editing it must not make DVC rerun train, evaluate or predict-sample."""
    root = copy_project(tmp_path)
    stages = load_stages(root)
    code = set().union(*(s.code_deps for s in stages.values()))
    before = digests(root, code)
    with (root / edited).open("a") as f:
        f.write("# a comment\n")
    after = digests(root, code)
    changed = {name for name, s in stages.items() if any(before[d] != after[d] for d in s.code_deps)}
    assert changed == {"preprocess"}, f"a comment in {edited} changes the deps of {sorted(changed)}"
    computed = computed_deps(root)
    for name in ("train", "evaluate", "predict-sample"):
        assert edited not in computed[name], f"{name} imports {edited}"
    assert edited in computed["preprocess"]
