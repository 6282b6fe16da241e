"""`.venv/bin/dvc repro` without `source .venv/bin/activate`: the stages' `python` is then the system's.

The real DVC of this venv runs the real pipeline with a PATH whose `python` is a system Python 3 that lacks
the project's packages: the stage must end in one line saying to activate the venv, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_project

SYSTEM_DIRS = "/usr/local/bin:/usr/bin:/bin"


def system_python_without_packages() -> str | None:
    """A python3 outside this venv that cannot import numpy (what a fresh machine has), if there is one."""
    found = shutil.which("python3", path=SYSTEM_DIRS)
    if found is None or Path(found).resolve() == Path(sys.executable).resolve():
        return None
    probe = subprocess.run([found, "-c", "import numpy"], capture_output=True, timeout=60)
    return found if probe.returncode != 0 else None


def test_repro_with_the_system_python_ends_in_one_line_saying_to_activate_the_venv(tmp_path: Path) -> None:
    system_python = system_python_without_packages()
    if system_python is None:
        pytest.skip("no system python3 without numpy on this machine")
    project = make_project(tmp_path / "repo", None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(system_python)  # `python` as a machine without the venv on PATH finds it
    env = {**project.env, "PATH": f"{bin_dir}{os.pathsep}{SYSTEM_DIRS}"}
    env.pop("VIRTUAL_ENV", None)
    dvc = Path(sys.executable).parent / "dvc"  # `.venv/bin/dvc`, called by its path
    result = subprocess.run([str(dvc), "repro"], cwd=project.path, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output, output
    ours = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, output
    assert ours[0].startswith(f"error: {bin_dir / 'python'} (Python "), ours  # the one PATH found
    assert "has no module '" in ours[0] and "source .venv/bin/activate" in ours[0] and "make repro" in ours[0]
    assert not (project.path / "data/raw").exists() or not any((project.path / "data/raw").iterdir())
