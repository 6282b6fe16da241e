"""A DVC remote round trip: run and push here, then a fresh clone pulls and has nothing left to do.

The remote is a local directory (an absolute path, so the clone's copy of .dvc/config still
finds it); S3, GCS and SSH remotes behave the same way through DVC (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Project, make_project

pytestmark = pytest.mark.slow

# What the remote must bring back: everything DVC caches (metrics and plots travel in git).
PULLED = ("data/", "models/")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cached_outs(repo: Path) -> list[dict[str, Any]]:
    """The `outs` entries of dvc.lock under data/ and models/."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return [out for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"].startswith(PULLED)]


def check_against_lock(repo: Path) -> set[str]:
    """Every file of every cached output exists with the md5 dvc.lock records; returns the files checked."""
    checked: set[str] = set()
    for out in cached_outs(repo):
        path = repo / out["path"]
        if not out["md5"].endswith(".dir"):
            assert path.is_file(), f"{out['path']} missing"
            assert md5(path) == out["md5"], out["path"]
            checked.add(out["path"])
            continue
        # A directory's md5 names its manifest in the cache: the md5 and relpath of every file.
        digest = out["md5"]
        manifest = json.loads((repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).read_text())
        on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        assert on_disk == sorted(entry["relpath"] for entry in manifest), out["path"]
        assert len(on_disk) == out["nfiles"]
        for entry in manifest:
            assert md5(path / entry["relpath"]) == entry["md5"], f"{out['path']}/{entry['relpath']}"
            checked.add(f"{out['path']}/{entry['relpath']}")
    return checked


def test_push_then_pull_in_a_fresh_clone_needs_no_rerun(tmp_path: Path, mirror_root: Path) -> None:
    remote = (tmp_path / "remote").resolve()
    project = make_project(tmp_path / "repo", mirror_root)
    project.dvc("remote", "add", "-d", "store", str(remote))
    assert project.repro() == ["download", "preprocess", "train", "evaluate", "predict-sample"]
    project.commit("trained, with a default remote")
    project.dvc("push")
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push wrote nothing to the remote"

    project.run("git", "clone", "-q", str(project.path), str(tmp_path / "clone"))
    clone = Project(tmp_path / "clone", mirror_root)
    outs = [out["path"] for out in cached_outs(clone.path)]
    assert outs and not any((clone.path / out).exists() for out in outs), "git alone must not bring the data"
    assert not (clone.path / ".dvc" / "cache").exists(), "the clone must start with no cache"

    clone.dvc("pull")
    restored = check_against_lock(clone.path)
    assert {"data/raw/mnist/train-images-idx3-ubyte", "data/prepared/x_train.npy", "data/prepared/y_test.npy",
            "models/model.keras", "models/model.weights.h5"} <= restored, sorted(restored)
    assert clone.repro() == [], "dvc repro reran stages after dvc pull"
    assert json.loads(clone.dvc("status", "--json").stdout) == {}
