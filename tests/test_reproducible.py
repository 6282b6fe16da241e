"""Byte-reproducible outputs: same code, params and inputs give the same bytes, so forced reruns don't ripple.

Every file under every declared output (model, weights, arrays, JSON, CSV, TSV, PNG) is hashed
after a first `dvc repro`, after `dvc repro -f` (every stage again, seconds to minutes later, so
any embedded clock would differ), and after running each stage's command by hand into another
folder. A mismatch names the files.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project, make_project
from dvc_spec import covers, load_stages, output_files

from mnist_pipeline.train.models import FIXED_SAVE_DATE, FIXED_ZIP_TIME

pytestmark = pytest.mark.slow

# A validation split, so the eval curves are produced too.
BASE_PARAMS = {"preprocess.val_size": 100}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("reproducible") / "repo", mirror_root, BASE_PARAMS)
    project.repro()
    project.commit("baseline")
    project.baseline = output_files(project.path, load_stages(project.path))  # type: ignore[attr-defined]
    return project


def reset(project: Project) -> None:
    project.git("checkout", "HEAD", "--", ".")
    project.dvc("checkout", "--force")


def differing(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def lock_diff(project: Project) -> str:
    """Changes to dvc.lock against the commit (autostage may have staged them, so compare with HEAD)."""
    return project.run("git", "diff", "HEAD", "--", "dvc.lock").stdout


def test_every_stage_declares_outputs_that_exist(project: Project) -> None:
    baseline = project.baseline  # type: ignore[attr-defined]
    for stage in load_stages(project.path).values():
        for out in stage.outs:
            assert any(covers(f, out) for f in baseline), f"{stage.name}: no file under {out}"
    suffixes = {Path(f).suffix for f in baseline}
    assert {".keras", ".h5", ".json", ".csv", ".tsv", ".png", ".npy"} <= suffixes, suffixes


def test_forced_rerun_of_every_stage_gives_identical_bytes(project: Project) -> None:
    reset(project)
    stages = load_stages(project.path)
    assert project.repro("-f") == list(stages)
    changed = differing(project.baseline, output_files(project.path, stages))  # type: ignore[attr-defined]
    assert not changed, f"a forced rerun changed these outputs: {changed}"
    assert lock_diff(project) == ""


def test_model_file_has_no_save_time(project: Project) -> None:
    """Why the bytes above are equal: every zip entry has the fixed time and metadata the fixed date."""
    reset(project)
    with zipfile.ZipFile(project.path / "models" / "model.keras") as archive:
        assert {info.date_time for info in archive.infolist()} == {FIXED_ZIP_TIME}
        assert json.loads(archive.read("metadata.json"))["date_saved"] == FIXED_SAVE_DATE


def test_force_train_leaves_lock_unchanged_and_downstream_skipped(project: Project) -> None:
    reset(project)
    assert project.repro("-f", "-s", "train") == ["train"]
    assert lock_diff(project) == "", "dvc repro -f -s train changed dvc.lock"
    assert project.repro() == [], "evaluate and predict-sample should be skipped after an identical retrain"


@pytest.mark.parametrize("name", list(load_stages(PROJECT_ROOT)))
def test_stage_command_by_hand_gives_identical_bytes(project: Project, tmp_path: Path, name: str) -> None:
    """The stage's own cmd, outputs sent to another folder: same bytes as the pipeline's, wherever they land."""
    reset(project)
    stage = load_stages(project.path)[name]
    words = shlex.split(stage.cmd)
    out_args = {a for a in stage.path_args if any(covers(o, a) for o in stage.outs) and a not in stage.deps}
    assert out_args, f"{name}: no output folder among the cmd arguments {stage.path_args}"
    command = [str(tmp_path / w) if w in out_args else w for w in words]
    result = subprocess.run(command, cwd=project.path, env=project.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    baseline: dict[str, str] = project.baseline  # type: ignore[attr-defined]
    expected = {f: h for f, h in baseline.items() if any(covers(f, o) for o in stage.outs)}
    produced = output_files(tmp_path, {name: stage})
    assert expected, f"{name}: no baseline outputs"
    assert not differing(expected, produced), f"{name}: by-hand run differs in {differing(expected, produced)}"
