"""Nothing half-written: real stage processes killed (SIGTERM, SIGINT, SIGHUP) while an output is being written.

The kill must land inside the window that matters, every time, without sleeping. The product holds
no hook for this: the stage runs with a `sitecustomize` (on PYTHONPATH) that adds a Python audit hook.
When the stage is about to rename a finished temporary file onto the named output (the `os.rename`
audit event, which `os.replace` raises too), or first writes into the named output's temporary
folder, the hook announces the temporary path on a FIFO and blocks there. The test reads the FIFO
(select, so a stage that dies early fails the test instead of hanging it), sends the signal, and
checks that the previous output is intact (same bytes) or absent, and that no `.tmp-*` file is left.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faultkit import StageDir, stage_dir, write_prepared, write_raw

from mnist_pipeline.core.datasets import TRAIN_IMAGES, raw_name

PREPARED = ("x_train.npy", "y_train.npy", "x_val.npy", "y_val.npy", "x_test.npy", "y_test.npy")
MESSAGES = {
    signal.SIGTERM: "error: terminated (SIGTERM); no partial output was kept",
    signal.SIGINT: "error: interrupted (Ctrl-C); no partial output was kept",
    signal.SIGHUP: "error: terminated (SIGHUP); no partial output was kept",
}
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 130, signal.SIGHUP: 128 + signal.SIGHUP}
PAUSE_ENV = "TEST_PAUSE_AT"  # "<rename|write-in>:<output name>:<fifo path>", read by PAUSE_HOOK only
PAUSE_HOOK = '''\
"""Stops this process where a test kills it: before the rename onto an output, or at its first
write into the output's temporary folder. Announces the temporary path on a FIFO, then blocks."""
import os, sys, threading

_setting = os.environ.get("TEST_PAUSE_AT")
if _setting:
    _mode, _name, _fifo = _setting.split(":", 2)
    _paused = []

    def _pause(announce):
        _paused.append(announce)
        with open(_fifo, "w") as f:  # blocks until the test opens the FIFO to read
            f.write(announce + "\\n")
        with open(_fifo):  # no writer ever comes: blocks until the test's signal raises here
            pass

    def _temporary_folder(path):
        """The output's temporary folder (.tmp-*-<name>) holding `path`, if any."""
        parts = os.path.abspath(os.fsdecode(path)).split(os.sep)
        for i in range(len(parts) - 1, 0, -1):
            if parts[i].startswith(".tmp-") and parts[i].endswith("-" + _name) and i < len(parts) - 1:
                return os.sep.join(parts[: i + 1])
        return None

    def _hook(event, args):
        if _paused or threading.current_thread() is not threading.main_thread():
            return
        if _mode == "rename" and event == "os.rename":
            if os.path.basename(os.fsdecode(args[1])) == _name:
                _pause(os.path.abspath(os.fsdecode(args[0])))
        elif _mode == "write-in" and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            writing = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & (os.O_WRONLY | os.O_RDWR))
            folder = _temporary_folder(path) if writing else None
            if folder:
                _pause(folder)

    sys.addaudithook(_hook)
'''


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pause-hook")
    (folder / "sitecustomize.py").write_text(PAUSE_HOOK)
    return folder


def kill_while_writing(project: StageDir, stage: str, output: str, signum: int, fifo_dir: Path,
                       hook_dir: Path, at: str = "rename") -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run `stage`, wait until it pauses at `output` (see PAUSE_HOOK for `at`), send `signum`."""
    fifo = fifo_dir / f"pause-{output}"
    os.mkfifo(fifo)
    pythonpath = os.pathsep.join(p for p in (str(hook_dir), project.env.get("PYTHONPATH")) if p)
    proc = project.popen(stage, env={PAUSE_ENV: f"{at}:{output}:{fifo}", "PYTHONPATH": pythonpath})
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    announced = b""
    try:
        for _ in range(900):  # up to 15 minutes of 1-second waits on a loaded machine, then fail
            if announced.endswith(b"\n"):
                break
            ready, _, _ = select.select([reader], [], [], 1.0)
            if ready:
                announced += os.read(reader, 4096)
            elif proc.poll() is not None:
                pytest.fail(f"{stage} exited {proc.returncode} before writing {output}:\n{proc.stderr.read()}")
        else:
            proc.kill()
            pytest.fail(f"{stage} never reached the write of {output}")
        tmp = project.path / announced.decode().strip()  # absolute: the hook resolves it
        assert tmp.exists() and tmp.name.startswith(".tmp-"), tmp  # the new output is there, not yet in place
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), tmp


def assert_stopped_cleanly(result: subprocess.CompletedProcess[str], signum: int, tmp: Path, root: Path) -> None:
    assert result.returncode == EXIT_CODES[signum], result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == MESSAGES[signum], result.stderr
    assert not tmp.exists()
    leftovers = [p for p in root.rglob(".tmp-*") if "mnist_pipeline" not in p.parts]
    assert leftovers == []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> StageDir:
    return stage_dir(tmp_path / "p", params={"preprocess.val_size": 5})


@pytest.fixture
def preprocessed(project: StageDir) -> dict[str, bytes]:
    """A finished preprocess run on tiny raw data; its outputs are 'the previous output'."""
    write_raw(project.path / "data" / "raw" / "mnist", train=30, test=10)
    result = project.run("preprocess")
    assert result.returncode == 0, result.stderr
    project.set_params({"preprocess.offset": 0.0})  # the next run writes different bytes
    before = snapshot(project.path / "data" / "prepared")
    assert sorted(before) == sorted(PREPARED)
    return before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_preprocess_killed_while_writing_keeps_the_previous_array(
        project: StageDir, preprocessed: dict[str, bytes], tmp_path: Path, hook_dir: Path, signum: int) -> None:
    result, tmp = kill_while_writing(project, "preprocess", "x_train.npy", signum, tmp_path, hook_dir)
    assert_stopped_cleanly(result, signum, tmp, project.path)
    assert snapshot(project.path / "data" / "prepared") == preprocessed  # every file: same bytes


def test_preprocess_killed_at_its_last_write(project: StageDir, preprocessed: dict[str, bytes],
                                             tmp_path: Path, hook_dir: Path) -> None:
    """Files finished before the kill are whole new ones; the one being written is the old one."""
    result, tmp = kill_while_writing(project, "preprocess", "y_test.npy", signal.SIGTERM, tmp_path, hook_dir)
    assert_stopped_cleanly(result, signal.SIGTERM, tmp, project.path)
    after = snapshot(project.path / "data" / "prepared")
    assert after["y_test.npy"] == preprocessed["y_test.npy"]
    assert after["x_train.npy"] != preprocessed["x_train.npy"]
    x_train = np.load(project.path / "data" / "prepared" / "x_train.npy", allow_pickle=False)
    assert x_train.shape == (25, 784) and float(x_train.min()) >= 0.0  # complete, with the new offset


def test_first_run_killed_leaves_no_output(project: StageDir, tmp_path: Path, hook_dir: Path) -> None:
    write_raw(project.path / "data" / "raw" / "mnist", train=30, test=10)
    result, tmp = kill_while_writing(project, "preprocess", "x_train.npy", signal.SIGINT, tmp_path, hook_dir)
    assert_stopped_cleanly(result, signal.SIGINT, tmp, project.path)
    assert snapshot(project.path / "data" / "prepared") == {}


def test_download_killed_mid_file(tmp_path: Path, mirror_root: Path, hook_dir: Path) -> None:
    """The downloaded file being written stays the previous one, not a verified-looking partial one."""
    project = stage_dir(tmp_path / "p", mirror=mirror_root)
    previous = project.path / "data" / "raw" / "mnist" / raw_name(TRAIN_IMAGES)
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"previous bytes")
    result, tmp = kill_while_writing(project, "download", raw_name(TRAIN_IMAGES), signal.SIGTERM, tmp_path, hook_dir)
    assert_stopped_cleanly(result, signal.SIGTERM, tmp, project.path)
    assert snapshot(project.path / "data" / "raw") == {f"mnist/{previous.name}": b"previous bytes"}


@pytest.fixture
def trained_before(project: StageDir) -> dict[str, bytes]:
    """Stand-ins for a previous train run's outputs, and tiny inputs for the next one."""
    write_prepared(project.path / "data" / "prepared", {"train": 40, "val": 10, "test": 20})
    (project.path / "models").mkdir()
    (project.path / "models" / "model.keras").write_bytes(b"previous model")
    (project.path / "metrics" / "train").mkdir(parents=True)
    (project.path / "metrics" / "train" / "metrics.json").write_text('{"previous": true}\n')
    return {**snapshot(project.path / "models"), **snapshot(project.path / "metrics")}


def test_train_killed_while_writing_its_metrics_folder(project: StageDir, trained_before: dict[str, bytes],
                                                       tmp_path: Path, hook_dir: Path) -> None:
    """dvclive's folder is written aside and swapped in whole: a kill while it is written leaves the old one."""
    result, tmp = kill_while_writing(project, "train", "train", signal.SIGTERM, tmp_path, hook_dir, at="write-in")
    assert_stopped_cleanly(result, signal.SIGTERM, tmp, project.path)
    assert {**snapshot(project.path / "models"), **snapshot(project.path / "metrics")} == trained_before


def test_train_killed_while_saving_the_model(project: StageDir, trained_before: dict[str, bytes],
                                             tmp_path: Path, hook_dir: Path) -> None:
    result, tmp = kill_while_writing(project, "train", "model.keras", signal.SIGINT, tmp_path, hook_dir)
    assert_stopped_cleanly(result, signal.SIGINT, tmp, project.path)
    assert (project.path / "models" / "model.keras").read_bytes() == b"previous model"
    metrics = snapshot(project.path / "metrics" / "train")
    assert "metrics.json" not in metrics or metrics["metrics.json"] != trained_before["train/metrics.json"]
    assert "curves.png" in metrics  # the new folder, swapped in whole before the model write began
