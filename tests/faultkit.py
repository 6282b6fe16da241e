"""Helpers for the fault tests: a stage project without git or DVC, real stage processes, tiny inputs.

Fault tests run one stage as `python -m stages.<name>` the way dvc.yaml does, so no DVC repo is
needed; skipping `git init` and `dvc init` keeps each case well under a second for stages that
fail before TensorFlow loads.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from conftest import PROJECT_ROOT, TINY_PARAMS, set_dotted, subprocess_env
from idxkit import encode_idx

from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, raw_name
from mnist_pipeline.prepared import idx_spec, save_spec, split_paths

STAGE_ARGS = {
    "download": ("data/raw",),
    "preprocess": ("data/raw", "data/prepared"),
    "train": ("data/prepared", "models", "metrics/train", "metrics/train.json"),
    "evaluate": ("models/model.onnx", "data/prepared", "metrics"),
    "predict_sample": ("models/model.onnx", "data/prepared", "metrics"),
}


class StageDir:
    """The pipeline's code and params.yaml in a temporary folder; stages run in it as real processes."""

    def __init__(self, path: Path, mirror: Path | None = None) -> None:
        self.path = path
        self.env = subprocess_env(**({"DATASET_MIRROR": str(mirror)} if mirror else {}))
        if not mirror:
            self.env.pop("DATASET_MIRROR", None)

    @property
    def params_file(self) -> Path:
        return self.path / "params.yaml"

    def params(self) -> dict[str, Any]:
        return yaml.safe_load(self.params_file.read_text())

    def set_params(self, values: dict[str, Any]) -> None:
        tree = self.params()
        for key, value in values.items():
            set_dotted(tree, key, value)
        self.params_file.write_text(yaml.safe_dump(tree, sort_keys=False))

    def command(self, stage: str) -> list[str]:
        return [sys.executable, "-m", f"stages.{stage}", *STAGE_ARGS[stage]]

    def run(self, stage: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(stage), cwd=self.path, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, stage: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """The stage as a process the test signals: Ctrl-C back to its default, whatever the runner set
        (a shell that starts a job in the background has it ignored, and children inherit that)."""
        return subprocess.Popen(self.command(stage), cwd=self.path, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_ctrl_c)


def default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stage_dir(path: Path, mirror: Path | None = None, params: dict[str, Any] | None = None) -> StageDir:
    """A copy of stages/, mnist_pipeline/ and params.yaml (with TINY_PARAMS) under `path`."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "mnist_pipeline"):
        shutil.copytree(PROJECT_ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__", ".tmp-*"))
    shutil.copy2(PROJECT_ROOT / "params.yaml", path / "params.yaml")
    project = StageDir(path, mirror)
    project.set_params({**TINY_PARAMS, **(params or {})})
    return project


def error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The stage's one error line, after checking the exit code and that nothing else was printed."""
    assert result.returncode == code, f"exit {result.returncode}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def last_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """For stages that load TensorFlow, whose own start-up lines (not ours) come first on stderr."""
    assert result.returncode == code, f"exit {result.returncode}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def labels_for(count: int) -> np.ndarray:
    return (np.arange(count) % 10).astype(np.uint8)


def write_prepared(folder: Path, sizes: dict[str, int] | None = None) -> None:
    """Valid prepared arrays (random pixels, labels 0-9 in turn) as preprocess would write them."""
    rng = np.random.default_rng(0)
    for split, count in (sizes or {"train": 40, "val": 0, "test": 20}).items():
        x_path, y_path = split_paths(folder, split)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(x_path, rng.uniform(-0.5, 0.5, (count, 784)).astype(np.float32))
        np.save(y_path, labels_for(count))
    save_spec(folder, idx_spec(DATASETS["mnist"]))


def write_raw(folder: Path, train: int = 30, test: int = 10, train_labels: int | None = None) -> None:
    """Raw IDX files (uncompressed, as the download stage stores them) for the mnist data set."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        TRAIN_IMAGES: rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: labels_for(train if train_labels is None else train_labels),
        TEST_IMAGES: rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        TEST_LABELS: labels_for(test),
    }
    for name, array in files.items():
        (folder / raw_name(name)).write_bytes(encode_idx(array))
