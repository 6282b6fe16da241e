"""Shared fixtures: real DVC projects in temporary git repos, fed from the local data mirror."""

from __future__ import annotations

import fcntl
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# What a temporary project needs: the code, the pipeline and its params (never the data).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "mnist_pipeline")
# Small enough for seconds per stage, real enough to train on: the first images of real MNIST.
TINY_PARAMS = {
    "preprocess.train_limit": 1000,
    "preprocess.test_limit": 200,
    "train.epochs": 1,
}
# Failed comparisons of big values report digests, not a diff that takes minutes under CI=true; the plugin
# moves CI's sign to its own variable (big_diffs.py says why).
pytest_plugins = ["big_diffs"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("MNIST_PIPELINE_TESTS_IN_CI") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--in-process-only", action="store_true",
                     help="skip each test at its first new process (the fast tier: tests/in_process_only.py)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--in-process-only"):
        if IN_CI:
            raise pytest.UsageError("--in-process-only skips every test that starts a process: CI runs them all")
        import in_process_only

        config.pluginmanager.register(in_process_only, "in_process_only")


def skip_unless_ci(message: str) -> NoReturn:
    """A missing tool or platform feature: a skip on a developer's machine, a failure in CI, where every
    test must run. The one way a test of this project skips (tests/test_skips.py holds them to it)."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def import_or_skip(name: str, install: str) -> ModuleType:
    """`pytest.importorskip`, but failing in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_unless_ci(f"no module {name} ({install})")


def requires(condition: bool, reason: str) -> pytest.MarkDecorator:
    """`pytest.mark.skipif(not condition)` outside CI; in CI the test runs, and fails where it cannot."""
    return pytest.mark.skipif(not condition and not IN_CI, reason=reason)


def find_mirror() -> Path | None:
    """$DATASET_MIRROR, else ../shared/datasets next to the project, else None."""
    candidates = [os.environ.get("DATASET_MIRROR"), str(PROJECT_ROOT.parent / "shared" / "datasets")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="session")
def mirror_root() -> Path:
    """The local mirror of the real data sets; in CI its absence is a failure, elsewhere a skip."""
    root = find_mirror()
    if root is None:
        skip_unless_ci("no local data mirror: set DATASET_MIRROR to a folder holding mnist/ and fashion-mnist/")
    return root


def subprocess_env(**extra: str) -> dict[str, str]:
    """This interpreter's venv first on PATH, so `python` and `dvc` in stage commands are ours."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("MNIST_PIPELINE_TF_LOG", None)  # a developer's debug setting would add lines the tests count
    env.update(extra)
    return env


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


class Project:
    """A copy of the pipeline in its own git + DVC repo, driven by the real `git` and `dvc` commands."""

    def __init__(self, path: Path, mirror: Path | None) -> None:
        self.path = path
        self.env = subprocess_env(**({"DATASET_MIRROR": str(mirror)} if mirror else {}))

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args), cwd=self.path, env=env or self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def dvc(self, *args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("dvc", *args, check=check, **kwargs)

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args)

    def repro(self, *args: str) -> list[str]:
        """Run `dvc repro` and return the names of the stages that ran, in order."""
        result = self.dvc("repro", *args)
        return ran_stages(result.stdout + result.stderr)

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, values: dict[str, Any]) -> None:
        tree = self.params()
        for key, value in values.items():
            set_dotted(tree, key, value)
        (self.path / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))

    def copy(self, path: Path) -> Project:
        """A copy of the repo at `path` (git, DVC and workspace), to change without touching this one."""
        shutil.copytree(self.path, path, symlinks=True)
        copy = Project(path, None)
        copy.env = self.env
        return copy

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)


def copy_linked(source: Path, target: Path) -> None:
    """A copy of a project in a moment, whatever its data: files that are hard links (DVC's cache and the
    outputs checked out from it, cache.type hardlink) are linked again, every other file is copied;
    `.dvc/tmp` (locks, DVC's hash state) is left out, as a clone has none. DVC never writes into a cache file
    or a linked output (it unlinks an output, or copies it first when it persists), so the copy cannot
    change the source."""

    def link_or_copy(src: str, dst: str) -> None:
        if os.stat(src).st_nlink > 1:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    def skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == source / ".dvc" else []

    shutil.copytree(source, target, symlinks=True, copy_function=link_or_copy, ignore=skip_dvc_tmp)


def once_per_session(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None],
                     meanwhile: Mapping[str, Callable[[Path], None]] | None = None) -> Path:
    """The folder `build(folder)` filled, built once per test session whichever pytest-xdist worker asks first.

    Other workers wait for it, under a lock, instead of building their own. A worker that finds it being
    built runs the builds of `meanwhile` that nobody has started (ones it will need too), rather than wait
    idle. A failed build leaves no folder marked done: the next worker to ask builds it afresh.
    """
    base = factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: a folder per worker under one

    def attempt(key: str, builder: Callable[[Path], None], blocking: bool) -> bool:
        with open(shared / f"{key}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            done, folder = shared / f"{key}.done", shared / key
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                builder(folder)
                done.touch()
            return True  # the lock goes with the file's closing

    if not attempt(name, build, blocking=False):
        for key, builder in (meanwhile or {}).items():
            attempt(key, builder, blocking=False)
        attempt(name, build, blocking=True)
    return shared / name


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def make_project(path: Path, mirror: Path | None, params: dict[str, Any] | None = None) -> Project:
    """Copy the pipeline into `path`, `git init` + `dvc init` it, apply params, and commit."""
    path.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__", ".tmp-*"))
        else:
            shutil.copy2(source, path / name)
    project = Project(path, mirror)
    project.git("init", "-q", "-b", "main")
    project.git("config", "user.email", "test@example.com")
    project.git("config", "user.name", "test")
    project.dvc("init", "-q")
    shutil.copy2(PROJECT_ROOT / ".dvcignore", path / ".dvcignore")  # the project's: bytecode caches are not deps
    project.dvc("config", "core.autostage", "true")
    project.dvc("config", "cache.type", "hardlink,copy")
    (path / ".gitignore").write_text("__pycache__/\n.tmp-*\n")
    project.set_params({**TINY_PARAMS, **(params or {})})
    project.commit("project")
    return project


@pytest.fixture
def tiny_project(tmp_path: Path, mirror_root: Path) -> Project:
    """A fresh pipeline on the first 1,000 training and 200 test images of real MNIST, 1 epoch."""
    return make_project(tmp_path / "repo", mirror_root)
