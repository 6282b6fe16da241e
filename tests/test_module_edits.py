"""An edit to a module reruns exactly the stages whose process imports it, and the docs' table says which.

dvc.yaml's `.py` deps are the modules each stage's process imports (test_declared_deps.py traces real
runs to show it). Here each module of the library and of `stages/` gets a comment appended, in turn, in a
reproduced project, and `dvc status` must list exactly the stages that declare it: no training module
reruns download or preprocess, and a module no stage runs reruns nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project, make_project
from dvc_spec import load_stages

from tools.stage_deps import TABLE_END, TABLE_START, is_module, module_table

DOC = PROJECT_ROOT / "docs" / "module-stages.md"
TRAINING_ONLY = ("checkpoint.py", "loop.py", "training.py", "whitening.py", "footprint.py", "distribute.py",
                 "tensorflow_runtime.py", "cpu_kernels.py", "models.py", "metrics.py", "significance.py",
                 "serve.py", "predict.py", "imageprep.py", "onnx_export.py", "onnx_model.py")


def library_modules(root: Path) -> list[str]:
    """Every file whose edit can change a run: modules, and package `__init__` files holding more than a docstring."""
    return sorted(p.relative_to(root).as_posix() for folder in ("mnist_pipeline", "stages")
                  for p in (root / folder).rglob("*.py") if is_module(root, p))


def test_the_docs_module_table_is_the_one_dvc_yaml_gives() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.partition(TABLE_START)[2].partition(TABLE_END)[0].strip()
    assert table == module_table(PROJECT_ROOT), "run: python tools/stage_deps.py --doc docs/module-stages.md"


def test_no_training_evaluation_or_serving_module_is_a_dep_of_download_or_preprocess() -> None:
    stages = load_stages(PROJECT_ROOT)
    for name in ("download", "preprocess"):
        offenders = [d for d in stages[name].deps if d.rpartition("/")[2] in TRAINING_ONLY]
        assert not offenders, f"stage {name} depends on {offenders}"


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("module-edits") / "repo", mirror_root)
    project.repro()
    project.commit("reproduced")
    return project


def changed_stages(project: Project) -> set[str]:
    status = json.loads(project.dvc("status", "--json").stdout or "{}")
    return {name.rpartition(":")[2] for name in status}


@pytest.mark.slow
def test_editing_each_module_changes_exactly_the_stages_that_import_it(reproduced: Project) -> None:
    assert changed_stages(reproduced) == set(), "the reproduced project is not up to date"
    stages = load_stages(reproduced.path)
    modules = library_modules(reproduced.path)
    assert len(modules) > 20
    wrong = []
    for module in modules:
        path = reproduced.path / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit that changes nothing but the file's hash\n")
        try:
            changed = changed_stages(reproduced)
        finally:
            path.write_bytes(original)
        expected = {name for name, stage in stages.items() if module in stage.deps}
        if changed != expected:
            wrong.append(f"{module}: dvc status lists {sorted(changed)}, expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)
