"""The whole pipeline on full real MNIST with the committed default params, in a fresh repo.

Guards the tutorial's result (test accuracy >= 0.95, first five predictions 7 2 1 0 4), then
checks that what it produced is byte for byte what the project commits: every `outs` md5 in
dvc.lock and every file under metrics/. A mismatch names the output that changed: either the
code changed results without the committed results being regenerated, or a run is not
reproducible, or the CPU computes otherwise than an x86-64 CPU with AVX2 and FMA (the message names the
CPU's features). In CI (`CI=true`) a missing mirror fails instead of skipping (see conftest).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT, TINY_PARAMS, Project, make_project

from mnist_pipeline.train.cpu_kernels import describe_cpu

pytestmark = pytest.mark.slow


def committed(path: str) -> bytes:
    """A file as committed at HEAD in the project (not as it may sit, edited, in the working tree)."""
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=PROJECT_ROOT, capture_output=True,
                          check=True).stdout


def committed_files(folder: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--", folder], cwd=PROJECT_ROOT, capture_output=True,
                            check=True).stdout
    return sorted(name for name in listed.decode().split("\0") if name)


def default_params() -> dict[str, Any]:
    """The project's own values of the keys the test fixtures shrink: undo TINY_PARAMS."""
    tree = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    values = {}
    for key in TINY_PARAMS:
        node = tree
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def outs_md5(lock: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(stage, out["path"]): out["md5"]
            for stage, entry in lock["stages"].items() for out in entry.get("outs", [])}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("end-to-end") / "repo", mirror_root, default_params())
    assert sorted(project.repro()) == sorted(["download", "preprocess", "train", "evaluate", "predict-sample"])
    return project


def test_runs_with_the_committed_params(project: Project) -> None:
    assert (project.path / "params.yaml").read_bytes() != b""
    assert project.params() == yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def test_test_accuracy_regression_guard(project: Project) -> None:
    report = json.loads((project.path / "metrics" / "evaluate.json").read_text())
    assert report["test_images"] == 10000
    assert report["accuracy"] >= 0.95, f"test accuracy {report['accuracy']} fell below 0.95"


def test_first_five_predictions_are_the_tutorials(project: Project) -> None:
    rows = json.loads((project.path / "metrics" / "predictions.json").read_text())["predictions"]
    assert [r["predicted"] for r in rows[:5]] == [7, 2, 1, 0, 4]
    assert [r["label"] for r in rows[:5]] == [7, 2, 1, 0, 4]


def test_outputs_match_the_committed_dvc_lock(project: Project) -> None:
    expected = outs_md5(yaml.safe_load(committed("dvc.lock")))
    produced = outs_md5(yaml.safe_load((project.path / "dvc.lock").read_text()))
    assert expected, "the committed dvc.lock lists no outputs"
    changed = [
        f"{stage}: {path}: committed {md5}, produced {produced.get((stage, path), 'nothing')}"
        for (stage, path), md5 in sorted(expected.items())
        if produced.get((stage, path)) != md5
    ]
    assert not changed, f"outputs differ from the committed dvc.lock on this {describe_cpu()}:\n" + "\n".join(changed)


def test_metrics_files_match_the_committed_ones(project: Project) -> None:
    expected = committed_files("metrics")
    assert expected, "nothing is committed under metrics/"
    produced = sorted(p.relative_to(project.path).as_posix() for p in (project.path / "metrics").rglob("*")
                      if p.is_file() and p.name != ".gitignore")
    problems = [f"{name}: not produced" for name in expected if name not in produced]
    problems += [f"{name}: produced but not committed" for name in produced if name not in expected]
    problems += [f"{name}: bytes differ" for name in expected
                 if name in produced and (project.path / name).read_bytes() != committed(name)]
    assert not problems, f"metrics/ differs from the committed files on this {describe_cpu()}:\n" + "\n".join(problems)
