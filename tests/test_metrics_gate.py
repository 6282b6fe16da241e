"""tools/metrics_gate.py: a metric worse than the base commit by more than its tolerance fails, naming it.

The slow tests run the real pipeline in a temporary DVC project (tests/conftest.py make_project: the
first 1,000 training and 200 test images of real MNIST, 1 epoch), commit it as `main`, make the model
worse on purpose (a learning rate a thousand times too small) and run the gate as CI does. The quick
ones check the tolerance file's faults, which are found before git or DVC is asked anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, Project, make_project

GATE = PROJECT_ROOT / "tools" / "metrics_gate.py"
TOLERANCES = "metrics_tolerances.yaml"


def run_gate(project: Project, *args: str) -> tuple[int, list[str], list[str]]:
    result = project.run("python", str(GATE), "--base", "main", *args, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    """The pipeline reproduced and committed as `main`, with the project's tolerance file."""
    project = make_project(tmp_path_factory.mktemp("gate") / "base", mirror_root)
    shutil.copy2(PROJECT_ROOT / TOLERANCES, project.path / TOLERANCES)
    project.repro()
    project.commit("main")
    return project


@pytest.mark.slow
def test_unchanged_metrics_pass(committed: Project) -> None:
    status, out, err = run_gate(committed)
    assert status == 0 and err == []
    assert out[0].startswith("metrics/evaluate.json: accuracy ") and out[0].endswith(
        ": ok (tolerance 0.002, lower is worse)")
    assert len(out) == len(yaml.safe_load((PROJECT_ROOT / TOLERANCES).read_text())["metrics/evaluate.json"])


@pytest.mark.slow
def test_worse_model_fails_naming_the_metric_and_passes_within_a_wider_tolerance(
        committed: Project, tmp_path: Path) -> None:
    shutil.copytree(committed.path, tmp_path / "p", symlinks=True)
    project = Project(tmp_path / "p", None)
    project.env = committed.env
    project.set_params({"train.learning_rate": 1e-6})
    assert project.repro() == ["train", "evaluate", "predict-sample"]
    old = json.loads(project.run("git", "show", "main:metrics/evaluate.json").stdout)["accuracy"]
    new = json.loads((project.path / "metrics" / "evaluate.json").read_text())["accuracy"]
    assert old - new > 0.1  # far worse: barely trained

    status, out, err = run_gate(project)
    assert status == 1
    accuracy = [line for line in err if line.startswith("metrics/evaluate.json: accuracy ")]
    assert accuracy == [f"metrics/evaluate.json: accuracy got worse: {old:.6g} -> {new:.6g} (lower is worse), "
                        f"by {old - new:.6g}, more than its tolerance 0.002"]
    assert not any(line.startswith("metrics/evaluate.json: accuracy") for line in out)

    # The same change under tolerances wider than it passes: each metric is judged against its own.
    wide = {"metrics/evaluate.json": {"accuracy": {"worse": "lower", "tolerance": 0.9},
                                      "macro_f1": {"worse": "lower", "tolerance": 0.9},
                                      "loss": {"worse": "higher", "tolerance": 100}}}
    (project.path / "wide.yaml").write_text(yaml.safe_dump(wide))
    status, out, err = run_gate(project, "--tolerances", "wide.yaml")
    assert status == 0 and err == []
    assert f"metrics/evaluate.json: accuracy {old:.6g} -> {new:.6g}: ok (tolerance 0.9, lower is worse)" in out


@pytest.mark.slow
def test_gated_metric_missing_from_the_workspace_is_one_line(committed: Project, tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("metrics/evaluate.json:\n  top5: {worse: lower, tolerance: 0.01}\n")
    status, out, err = run_gate(committed, "--tolerances", str(tmp_path / "t.yaml"))
    assert status == 2 and out == []
    assert err == [f"error: {tmp_path / 't.yaml'}: metrics/evaluate.json: top5: no such number in the workspace's "
                   f"metrics (run dvc repro first, or update {tmp_path / 't.yaml'})"]


BAD_FILES = {
    "not a metrics file": (
        "metrics/eval.json:\n  accuracy: {worse: lower, tolerance: 0.002}\n",
        "error: t.yaml: 'metrics/eval.json' is not a metrics file of dvc.yaml "
        "(its metrics: metrics/train.json, metrics/evaluate.json)",
    ),
    "unknown direction": (
        "metrics/evaluate.json:\n  accuracy: {worse: down, tolerance: 0.002}\n",
        "error: t.yaml: metrics/evaluate.json: accuracy: worse = 'down': expected one of lower, higher",
    ),
    "negative tolerance": (
        "metrics/evaluate.json:\n  loss: {worse: higher, tolerance: -1}\n",
        "error: t.yaml: metrics/evaluate.json: loss: tolerance = -1: expected a number >= 0",
    ),
    "bare number": (
        "metrics/evaluate.json:\n  accuracy: 0.002\n",
        "error: t.yaml: metrics/evaluate.json: accuracy: expected {worse: lower|higher, tolerance: <number >= 0>}, "
        "found 0.002",
    ),
    "empty file": ("", "error: t.yaml: expected a mapping of metrics files to their gated metrics, "
                       "e.g. 'metrics/evaluate.json: {accuracy: {worse: lower, tolerance: 0.002}}'"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_tolerance_file_is_one_line(tmp_path: Path, case: str) -> None:
    """Checked against the metrics files dvc.yaml declares, before git or DVC runs."""
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    text, message = BAD_FILES[case]
    (tmp_path / "t.yaml").write_text(text)
    status, out, err = run_gate(Project(tmp_path, None), "--tolerances", "t.yaml")
    assert (status, out, err) == (2, [], [message])


def test_projects_tolerances_name_declared_metrics() -> None:
    """The committed file fits the committed dvc.yaml (read the way the gate reads both)."""
    from tools.metrics_gate import declared_metrics_files, load_gates

    gates = load_gates(PROJECT_ROOT / TOLERANCES, declared_metrics_files(PROJECT_ROOT / "dvc.yaml"))
    assert {(g.file, g.metric) for g in gates} >= {("metrics/evaluate.json", "accuracy")}
