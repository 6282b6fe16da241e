"""The stages that do not train stay light: download and preprocess never load TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, subprocess_env

HEAVY = ("tensorflow", "keras", "dvclive", "matplotlib")


@pytest.mark.parametrize("module", ["stages.download", "stages.preprocess"])
def test_stage_imports_no_tensorflow(module: str) -> None:
    """Importing the stage (everything its main can reach at import time) leaves TensorFlow unloaded."""
    code = (
        f"import sys, {module}\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"


def test_training_targets_are_float32() -> None:
    """One-hot targets in float32: Keras' to_categorical would make a float64 copy of the labels."""
    import numpy as np

    from mnist_pipeline.train.training import one_hot

    targets = one_hot(np.array([3, 0, 9], dtype=np.uint8), 10)
    assert targets.dtype == np.float32
    assert targets.argmax(axis=1).tolist() == [3, 0, 9] and targets.sum() == 3
