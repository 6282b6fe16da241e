"""A model type is one module in mnist_pipeline/train/model_types: the registry finds it, the train stage trains it.

The end-to-end test drops a softmax-regression type into a real DVC project's model_types folder and
trains it with `dvc repro`; the others check what reads the registry (the docs table, its refusals).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project, make_project
from faultkit import error_line, stage_dir

from tools.model_params import TABLE_END, TABLE_START, params_table

DOC = PROJECT_ROOT / "docs" / "params.md"

# A model type as a user would add it: one file, one param of its own (in its own section, model.linear).
LINEAR = '''"""`model.type: linear`: softmax regression, the tutorial's network without hidden layers, with L2 decay."""

from __future__ import annotations

from typing import Any

from mnist_pipeline.core.config import Section, documented, number

SIZE_KEYS = ()


class LinearConfig(Section):
    l2: float = documented(number(0.0, 1.0), 0.0, "L2 penalty on the weights")


class Params(Section):
    linear: LinearConfig


def build(model: Any, spec: Any) -> Any:
    from mnist_pipeline.train.tensorflow_runtime import keras

    penalty = keras.regularizers.L2(model.linear.l2) if model.linear.l2 else None
    dense = keras.layers.Dense(spec.n_classes, activation="softmax", kernel_regularizer=penalty)
    return keras.Sequential([keras.Input(shape=(spec.n_pixels,)), dense], name="linear")


def weights_and_outputs(model: Any, spec: Any) -> tuple[int, int]:
    return spec.n_pixels * spec.n_classes + spec.n_classes, spec.n_classes
'''


def test_the_docs_params_table_is_the_one_the_registry_gives() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.partition(TABLE_START)[2].partition(TABLE_END)[0].strip()
    assert table == params_table(), "run: python tools/model_params.py --doc docs/params.md"
    assert "| `mlp` | `model.hidden` | `[64, 64]` |" in table  # a row per key, with its shipped value


@pytest.mark.parametrize(("source", "expected"), [
    (LINEAR.replace("def build(", "def make("), "model type 'broken' defines no build: expected Params, SIZE_KEYS, "
     "build, weights_and_outputs"),
    (LINEAR.replace("def build(model: Any, spec: Any) -> Any:", "def build(model, spec) -> Any"),
     "model type 'broken' does not import: SyntaxError: expected ':'"),
    (LINEAR.replace('documented(number(0.0, 1.0), 0.0, "L2 penalty on the weights")', "number(0.0, 1.0)"),
     "model type 'broken': model.linear.l2 has no shipped value or description"),
], ids=["no-builder", "syntax-error", "undocumented-key"])
def test_a_faulty_model_type_module_stops_the_train_stage_with_one_line_naming_it(
        tmp_path: Path, source: str, expected: str) -> None:
    project = stage_dir(tmp_path / "p")
    (project.path / "mnist_pipeline/train/model_types/broken.py").write_text(source)
    line = error_line(project.run("train"))
    assert line.startswith(f"error: {project.path}/mnist_pipeline/train/model_types/broken.py: "), line
    assert expected in line
    assert not (project.path / "models").exists()


def changed_stages(project: Project) -> set[str]:
    """The stages up to train that `dvc status` says would rerun."""
    status = json.loads(project.dvc("status", "--json", "train").stdout or "{}")
    return {name.rpartition(":")[2] for name in status}


@pytest.mark.slow
def test_a_model_type_dropped_into_the_folder_reruns_train_and_trains(tmp_path: Path, mirror_root: Path) -> None:
    project = make_project(tmp_path / "repo", mirror_root)
    assert project.repro("train") == ["download", "preprocess", "train"]
    project.commit("trained the mlp")
    assert changed_stages(project) == set()

    (project.path / "mnist_pipeline/train/model_types/linear.py").write_text(LINEAR)
    # The folder is a dep of train, and of nothing else: the new module reruns train before any params change.
    assert changed_stages(project) == {"train"}
    check = subprocess.run([sys.executable, str(PROJECT_ROOT / "tools/stage_deps.py"), "--check", "--root",
                            str(project.path)], capture_output=True, text=True)
    assert check.returncode == 1
    assert "stage train: imports but does not declare mnist_pipeline/train/model_types/linear.py" in check.stderr

    project.set_params({"model.type": "linear", "model.linear": {"l2": 0.0001}})
    assert project.repro("train") == ["train"]
    summary = json.loads((project.path / "metrics/train.json").read_text())
    # One epoch of 32 steps on 1,000 images (0.36 measured, averaged over the epoch): above chance, 0.1.
    assert summary["epochs"] == 1 and 0.25 < summary["accuracy"] <= 1.0
    with zipfile.ZipFile(project.path / "models/model.keras") as saved:
        config = json.loads(saved.read("config.json"))
    assert config["config"]["name"] == "linear"
    assert [layer["class_name"] for layer in config["config"]["layers"]] == ["InputLayer", "Dense"]
    assert changed_stages(project) == set()
