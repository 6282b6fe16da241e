"""A stage that fails leaves the previous outputs where they were (`persist: true` in dvc.yaml).

Without it DVC deletes a stage's outputs before running its command, so a typo in params.yaml
would delete the committed model and metrics: `git status` then lists deleted files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, make_project

pytestmark = pytest.mark.slow


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_output_but_data_raw_persists() -> None:
    """data/raw holds one folder per data set: a kept folder of the previous one would join the output."""
    spec = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, flags = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                assert bool(flags.get("persist")) == (path != "data/raw"), f"{name}: {path}"


def test_typo_in_params_fails_and_deletes_nothing(tmp_path: Path, mirror_root: Path) -> None:
    project = make_project(tmp_path / "repo", mirror_root)
    project.repro()
    project.commit("reproduced")
    outputs = [*(project.path / "models").glob("model.*"), *(project.path / "metrics").rglob("*")]
    kept = {p: digest(p) for p in outputs if p.is_file()}
    assert project.path / "models" / "model.keras" in kept
    assert any(p.is_relative_to(project.path / "metrics" / "train") for p in kept)
    params = project.path / "params.yaml"
    text = params.read_text()
    assert text.count("  epochs: 1\n") == 1
    params.write_text(text.replace("  epochs: 1\n", "  epoch: 1\n"))

    result = project.dvc("repro", check=False)
    assert result.returncode != 0
    output = (result.stdout + result.stderr).splitlines()
    assert "error: params.yaml: unknown key 'train.epoch' (did you mean 'train.epochs'?)" in output
    assert project.git("status", "--porcelain").stdout == " M params.yaml\n"  # the typo, and nothing else
    assert {p: digest(p) for p in kept if p.is_file()} == kept

    params.write_text(text)
    assert project.repro() == []  # outputs and dvc.lock still agree: nothing to redo
