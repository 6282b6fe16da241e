"""Nothing half-written: real stage processes killed (SIGTERM, SIGINT) while an output is being written.

The kill must land after the new bytes are written and before they are renamed into place, every
time, without sleeping. files.PAUSE_ENV makes the stage announce its temporary file on a FIFO and
block there; the test reads the FIFO (select, so a stage that dies early fails the test instead of
hanging it), sends the signal, and checks that the previous output is intact (same bytes) or absent,
and that no `.tmp-*` file is left behind.
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

from mnist_pipeline.datasets import TRAIN_IMAGES, raw_name
from mnist_pipeline.files import PAUSE_ENV

PREPARED = ("x_train.npy", "y_train.npy", "x_val.npy", "y_val.npy", "x_test.npy", "y_test.npy")
MESSAGES = {
    signal.SIGTERM: "error: terminated (SIGTERM); no partial output was kept",
    signal.SIGINT: "error: interrupted (Ctrl-C); no partial output was kept",
}
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 130}


def kill_while_writing(project: StageDir, stage: str, output: str, signum: int,
                       fifo_dir: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run `stage`, wait until its write of `output` is complete but not renamed, send `signum`."""
    fifo = fifo_dir / f"pause-{output}"
    os.mkfifo(fifo)
    proc = project.popen(stage, env={PAUSE_ENV: f"{output}:{fifo}"})
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
        tmp = project.path / announced.decode().strip()  # relative to the stage, or absolute
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_preprocess_killed_while_writing_keeps_the_previous_array(
        project: StageDir, preprocessed: dict[str, bytes], tmp_path: Path, signum: int) -> None:
    result, tmp = kill_while_writing(project, "preprocess", "x_train.npy", signum, tmp_path)
    assert_stopped_cleanly(result, signum, tmp, project.path)
    assert snapshot(project.path / "data" / "prepared") == preprocessed  # every file: same bytes


def test_preprocess_killed_at_its_last_write(project: StageDir, preprocessed: dict[str, bytes],
                                             tmp_path: Path) -> None:
    """Files finished before the kill are whole new ones; the one being written is the old one."""
    result, tmp = kill_while_writing(project, "preprocess", "y_test.npy", signal.SIGTERM, tmp_path)
    assert_stopped_cleanly(result, signal.SIGTERM, tmp, project.path)
    after = snapshot(project.path / "data" / "prepared")
    assert after["y_test.npy"] == preprocessed["y_test.npy"]
    assert after["x_train.npy"] != preprocessed["x_train.npy"]
    x_train = np.load(project.path / "data" / "prepared" / "x_train.npy", allow_pickle=False)
    assert x_train.shape == (25, 784) and float(x_train.min()) >= 0.0  # complete, with the new offset


def test_first_run_killed_leaves_no_output(project: StageDir, tmp_path: Path) -> None:
    write_raw(project.path / "data" / "raw" / "mnist", train=30, test=10)
    result, tmp = kill_while_writing(project, "preprocess", "x_train.npy", signal.SIGINT, tmp_path)
    assert_stopped_cleanly(result, signal.SIGINT, tmp, project.path)
    assert snapshot(project.path / "data" / "prepared") == {}


def test_download_killed_mid_file(tmp_path: Path, mirror_root: Path) -> None:
    """The downloaded file being written stays the previous one, not a verified-looking partial one."""
    project = stage_dir(tmp_path / "p", mirror=mirror_root)
    previous = project.path / "data" / "raw" / "mnist" / raw_name(TRAIN_IMAGES)
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"previous bytes")
    result, tmp = kill_while_writing(project, "download", raw_name(TRAIN_IMAGES), signal.SIGTERM, tmp_path)
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


def test_train_killed_while_replacing_its_metrics_folder(project: StageDir, trained_before: dict[str, bytes],
                                                         tmp_path: Path) -> None:
    """dvclive's folder is written aside and swapped in whole: the kill leaves the old folder as it was."""
    result, tmp = kill_while_writing(project, "train", "train", signal.SIGTERM, tmp_path)
    assert_stopped_cleanly(result, signal.SIGTERM, tmp, project.path)
    assert {**snapshot(project.path / "models"), **snapshot(project.path / "metrics")} == trained_before


def test_train_killed_while_saving_the_model(project: StageDir, trained_before: dict[str, bytes],
                                             tmp_path: Path) -> None:
    result, tmp = kill_while_writing(project, "train", "model.keras", signal.SIGINT, tmp_path)
    assert_stopped_cleanly(result, signal.SIGINT, tmp, project.path)
    assert (project.path / "models" / "model.keras").read_bytes() == b"previous model"
    metrics = snapshot(project.path / "metrics" / "train")
    assert "metrics.json" not in metrics or metrics["metrics.json"] != trained_before["train/metrics.json"]
    assert "curves.png" in metrics  # the new folder, swapped in whole before the model write began
