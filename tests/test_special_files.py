"""A FIFO or a link to /dev/zero where a regular file belongs ends a real stage with one line, at once.

Opened blindly, a FIFO with no writer blocks forever and /dev/zero is read until memory runs out.
Each case below is a raw IDX file, a local mirror's file (as a folder or as a file:// URL in
`$DATASET_MIRROR`) or params.yaml; each stage runs as a real process. The subprocess timeout only
keeps a regression from hanging the test run: a refused file ends the stage in about a second.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import requires
from faultkit import error_line, stage_dir, write_raw

from mnist_pipeline.core.datasets import TRAIN_IMAGES, raw_name

pytestmark = requires(hasattr(os, "mkfifo") and os.path.exists("/dev/zero"), "needs FIFOs and /dev/zero (POSIX)")

NOT_REGULAR = "not a regular file (a FIFO, device or socket): expected a regular file"
# Each way to put an endless file at a path.
SPECIAL: dict[str, Callable[[Path], None]] = {
    "fifo": lambda path: os.mkfifo(path),
    "link to /dev/zero": lambda path: path.symlink_to("/dev/zero"),
}
HANG_GUARD_S = 120


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("special", SPECIAL)
def test_preprocess_refuses_a_special_raw_file(tmp_path: Path, special: str) -> None:
    project = stage_dir(tmp_path / "p")
    raw = project.path / "data" / "raw" / "mnist"
    write_raw(raw)
    (raw / raw_name(TRAIN_IMAGES)).unlink()
    SPECIAL[special](raw / raw_name(TRAIN_IMAGES))
    assert error_line(project.run("preprocess", timeout=HANG_GUARD_S)) == (
        "error: data/raw/mnist/train-images-idx3-ubyte: not a regular file (a FIFO, device or socket): "
        "expected a regular file")
    assert not (project.path / "data" / "prepared").exists()


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file URL"])
@pytest.mark.parametrize("special", SPECIAL)
def test_download_refuses_a_special_mirror_file(tmp_path: Path, special: str, as_url: bool) -> None:
    root = (tmp_path / "mirror").resolve()
    (root / "mnist").mkdir(parents=True)
    SPECIAL[special](root / "mnist" / TRAIN_IMAGES)
    env_root = root.as_uri() if as_url else str(root)
    public = f"http://127.0.0.1:{closed_port()}/mnist/"
    project = stage_dir(tmp_path / "p", params={"download.mirrors.mnist": [public], "download.retries": 0})
    line = error_line(project.run("download", env={"DATASET_MIRROR": env_root}, timeout=HANG_GUARD_S))
    assert line.startswith(
        f"error: {TRAIN_IMAGES}: every mirror failed: $DATASET_MIRROR={env_root}: {root}/mnist/{TRAIN_IMAGES}: "
        "not a regular file (a FIFO, device or socket): expected a regular file; "
        f"{public}: cannot connect ("), line
    assert not (project.path / "data" / "raw" / "mnist" / raw_name(TRAIN_IMAGES)).exists()


@pytest.mark.parametrize("special", SPECIAL)
def test_stage_refuses_a_special_params_file(tmp_path: Path, special: str) -> None:
    project = stage_dir(tmp_path / "p")
    project.params_file.unlink()
    SPECIAL[special](project.params_file)
    assert error_line(project.run("download", timeout=HANG_GUARD_S)) == (
        "error: params.yaml: not a regular file (a FIFO, device or socket): expected a regular YAML file")
    assert not (project.path / "data").exists()
