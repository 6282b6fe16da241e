"""What the mnist-serve tests share: a pipeline trained on real MNIST, and `mnist-serve` run as a user runs it.

The project is the real pipeline (`dvc repro` up to evaluate) on the first TRAIN_IMAGES images of
real MNIST, so the server finds a real dvc.lock, metrics/evaluate.json and metrics/confusion.png
next to a model that really recognises digits. It is built once per test session, whichever
test module asks first.
"""

from __future__ import annotations

import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_project, subprocess_env

# Measured: about 0.88 test accuracy (first 1,000 test images), and drawn digits come out right.
SERVE_PARAMS = {"preprocess.train_limit": 5000, "preprocess.test_limit": 1000, "train.epochs": 5}
READY = re.compile(r"^mnist-serve: (http://\S+/) ")
# How long a start may take before the test gives up, on a machine shared with other test runs.
START_LIMIT_S = 120


def trained_project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Path:
    """The session's pipeline project with a trained, evaluated model (built on first use)."""
    path = tmp_path_factory.getbasetemp() / "serve-project"
    if not (path / "dvc.lock").is_file():
        shutil.rmtree(path, ignore_errors=True)
        project = make_project(path, mirror_root, SERVE_PARAMS)
        project.repro("evaluate")
    return path


def serve_command() -> str:
    """The installed `mnist-serve` console script of this environment."""
    found = shutil.which("mnist-serve", path=subprocess_env()["PATH"])
    assert found, "mnist-serve is not installed: run `make setup` (pip install -e .)"
    return found


@dataclass
class Served:
    url: str
    process: subprocess.Popen[str]
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextmanager
def serving(cwd: Path, *args: str, log_dir: Path) -> Iterator[Served]:
    """`mnist-serve --port 0 ARGS` in `cwd`: yields once it prints its URL; stops it with SIGTERM after.

    The server binds before it prints the URL, so a request sent after the line is queued, never refused.
    """
    stderr = log_dir / f"mnist-serve-{time.monotonic_ns()}.log"
    with open(stderr, "w") as err:
        process = subprocess.Popen([serve_command(), "--port", "0", *args], cwd=cwd, env=subprocess_env(),
                                   stdout=subprocess.PIPE, stderr=err, text=True)
    served = None
    try:
        url = _read_url(process)
        assert url, f"mnist-serve did not start (exit {process.poll()}):\n{stderr.read_text()}"
        served = Served(url, process, stderr)
        yield served
    finally:
        process.terminate()
        status = process.wait(timeout=60)
        process.stdout.close()
    # Stopping a server is not a fault: SIGTERM ends it gracefully, with exit 0.
    assert status == 0, f"mnist-serve exited {status} on SIGTERM:\n{stderr.read_text()}"


def _read_url(process: subprocess.Popen[str]) -> str | None:
    """The URL of the server's start line, waiting at most START_LIMIT_S; None when it exits first."""
    deadline = time.monotonic() + START_LIMIT_S
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=left):
                continue
            line = process.stdout.readline()
            if not line:
                return None
            match = READY.match(line)
            if match:
                return match.group(1)
    finally:
        selector.close()
    raise AssertionError(f"mnist-serve printed no URL within {START_LIMIT_S} s")


def run_serve(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`mnist-serve ARGS` to completion, for faults that must stop it before it listens."""
    return subprocess.run([serve_command(), *args], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line, which must be our `error:` line, with exit 2 and no traceback (a warning of
    ours may come before it)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Uvicorn running" not in result.stderr and not result.stdout, result.stdout + result.stderr
    return result.stderr.strip().splitlines()[-1]

