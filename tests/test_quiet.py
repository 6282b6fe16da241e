"""A stage or tool prints only its own lines: TensorFlow's native start-up log stays off stderr.

Real processes throughout: the train stage on tiny prepared arrays (as dvc.yaml runs it), then
`mnist-predict` on a PNG with the ONNX model that stage wrote. MNIST_PIPELINE_TF_LOG=1 brings
TensorFlow's lines back to the train stage, which shows that the pattern below does catch them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from faultkit import StageDir, error_line, stage_dir, write_prepared
from PIL import Image

from mnist_pipeline.core.quiet import DEBUG_ENV

# TensorFlow's native log (absl format `I0000 00:00:...`) and the start-up lines it writes before absl is set up.
TF_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} |oneDNN|cuda|TF_ENABLE_ONEDNN_OPTS|This TensorFlow binary is optimized|absl::InitializeLog",
    re.IGNORECASE,
)


def tf_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if TF_LOG_LINE.search(line)]


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set neither switch: the product's default has to do it alone."""
    env = subprocess_env(**extra)
    if DEBUG_ENV not in extra:
        env.pop(DEBUG_ENV, None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[StageDir, subprocess.CompletedProcess[str]]:
    """The train stage run as a process on 40 prepared images, 1 epoch; its result and folder."""
    project = stage_dir(tmp_path_factory.mktemp("quiet"))
    write_prepared(project.path / "data" / "prepared")
    project.env = quiet_env()
    return project, project.run("train")


@pytest.fixture(scope="module")
def digit(trained: tuple[StageDir, subprocess.CompletedProcess[str]]) -> Path:
    project, _ = trained
    path = project.path / "digit.png"
    stroke = np.zeros((28, 28), np.uint8)
    stroke[4:24, 13:16] = 255  # a "1": light ink on a dark ground, as MNIST draws it
    Image.fromarray(stroke).save(path)
    return path


def mnist_predict(project: StageDir, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script, as a user types it in the project folder."""
    return subprocess.run(["mnist-predict", *args], cwd=project.path, env=env or quiet_env(),
                          capture_output=True, text=True, timeout=300)


def test_train_stage_prints_its_epoch_line_and_no_tensorflow_log(
        trained: tuple[StageDir, subprocess.CompletedProcess[str]]) -> None:
    _, result = trained
    assert result.returncode == 0, result.stderr
    assert tf_lines(result.stderr) == [], result.stderr
    epoch_line = r"^epoch 1/1 - .* - loss: [0-9.]+ - accuracy: [0-9.]+$"
    assert re.search(epoch_line, result.stderr, re.MULTILINE), result.stderr


def test_mnist_predict_prints_its_answer_and_nothing_on_stderr(
        trained: tuple[StageDir, subprocess.CompletedProcess[str]], digit: Path) -> None:
    project, _ = trained
    result = mnist_predict(project, digit.name)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"digit\.png: \d \([0-9.]+%\)   top-3: .*\n", result.stdout), result.stdout
    assert result.stderr == ""


def test_a_broken_model_is_the_only_stderr_line_of_mnist_predict(
        trained: tuple[StageDir, subprocess.CompletedProcess[str]], digit: Path) -> None:
    """ONNX Runtime's own log (its parse failure is logged natively too) stays off stderr: one line."""
    project, _ = trained
    (project.path / "broken.onnx").write_bytes(b"GIF89a not a model")
    line = error_line(mnist_predict(project, "--model", "broken.onnx", digit.name))
    assert line.startswith("error: broken.onnx: not a loadable ONNX model (18 bytes: "), line


def test_debug_variable_brings_tensorflow_log_back(
        trained: tuple[StageDir, subprocess.CompletedProcess[str]]) -> None:
    """The train stage, the one that loads TensorFlow, run again with the switch: TensorFlow's lines return."""
    project, _ = trained
    result = project.run("train", env=quiet_env(**{DEBUG_ENV: "1"}))
    assert result.returncode == 0, result.stderr
    assert tf_lines(result.stderr), f"no TensorFlow log line with {DEBUG_ENV}=1:\n{result.stderr}"


COMMAND = """
import os, signal, sys, warnings
from mnist_pipeline.core.cli import run_command
def main():
    os.write(2, b"native line\\n")
    print("progress line", file=sys.stderr)
    warnings.warn("python warning")
    if sys.argv[1] == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    raise RuntimeError("unexpected")
run_command(main)
"""


def test_native_writes_vanish_while_python_messages_and_tracebacks_stay() -> None:
    result = subprocess.run([sys.executable, "-c", COMMAND, "raise"], env=quiet_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "native line" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "progress line", result.stderr
    assert "UserWarning: python warning" in lines[1], result.stderr
    assert "Traceback (most recent call last):" in lines, result.stderr
    assert lines[-1] == "RuntimeError: unexpected", result.stderr


def test_fault_handler_still_reaches_the_terminal_after_the_move() -> None:
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", COMMAND, "crash"], env=quiet_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode < 0, result.stderr
    assert "Fatal Python error: Segmentation fault" in result.stderr, result.stderr
    assert "in main" in result.stderr, result.stderr
