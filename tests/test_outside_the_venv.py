"""`.venv/bin/dvc repro` without `source .venv/bin/activate`: the stages' `python` is then the system's.

The real DVC of this venv runs the real pipeline with a PATH whose `python` is a system Python 3 that lacks
the project's packages: the stage must end in one line saying to activate the venv, not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import make_project

SYSTEM_DIRS = "/usr/local/bin:/usr/bin:/bin"


def python_without_packages(folder: Path) -> Path:
    """A Python 3.11 with nothing installed, as a machine without the venv has: a bare venv of the same
    interpreter, made without pip (no download, a second)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    assert subprocess.run([python, "-c", "import numpy"], capture_output=True, timeout=60).returncode != 0
    return python


def test_repro_with_the_system_python_ends_in_one_line_saying_to_activate_the_venv(tmp_path: Path) -> None:
    system_python = python_without_packages(tmp_path / "bare")
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
