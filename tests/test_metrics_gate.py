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
from plantkit import make_planted_repo, plant

GATE = PROJECT_ROOT / "tools" / "metrics_gate.py"
TOLERANCES = "metrics_tolerances.yaml"


def run_gate(project: Project, *args: str) -> tuple[int, list[str], list[str]]:
    """The gate against `main`, unless `args` name another --base (argparse takes the last)."""
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
    assert len(out) == len(yaml.safe_load((PROJECT_ROOT / TOLERANCES).read_text())["metrics/evaluate.json"]) + 1
    # The same per-image results: nothing flipped.
    assert out[-1] == ("metrics/per_image.csv: accuracy paired with main: 0 right -> wrong, 0 wrong -> right: ok, "
                       "no detectable change (p=1) at level 0.05")


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
    "paired test level out of range": (
        "metrics/evaluate.json:\n  accuracy: {worse: lower, tolerance: 0.002}\nbeyond_noise: {level: 5}\n",
        "error: t.yaml: beyond_noise: expected {level: <p-value between 0 and 1, e.g. 0.05>}, found {'level': 5}",
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


# --- beyond noise, NaN, lost metrics and both directions, in a repo of planted results (tests/plantkit.py) ----

PLANTED_TOLERANCES = {"metrics/evaluate.json": {"accuracy": {"worse": "lower", "tolerance": 0.5},
                                                "loss": {"worse": "higher", "tolerance": 0.1}},
                      "beyond_noise": {"level": 0.05}}


@pytest.fixture(scope="module")
def planted_base(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = make_planted_repo(tmp_path_factory.mktemp("gate-planted") / "repo")
    (project.path / TOLERANCES).write_text(yaml.safe_dump(PLANTED_TOLERANCES, sort_keys=False))
    project.commit("tolerances")
    return project


@pytest.fixture
def planted(planted_base: Project, tmp_path: Path) -> Project:
    """A copy of the planted repo, its workspace free to change."""
    return planted_base.copy(tmp_path / "repo")


@pytest.mark.slow
def test_accuracy_worse_beyond_noise_fails_within_its_absolute_tolerance(planted: Project) -> None:
    plant(planted, right_to_wrong=9, wrong_to_right=1)  # 0.80 -> 0.72: inside the tolerance 0.5
    status, out, err = run_gate(planted)
    assert status == 1
    assert "metrics/evaluate.json: accuracy 0.8 -> 0.72: ok (tolerance 0.5, lower is worse)" in out
    # p = 2 x (C(10,0) + C(10,1)) / 2^10 = 0.021
    assert err == ["metrics/per_image.csv: accuracy paired with main: worse beyond noise: 0.8000 -> 0.7200, "
                   "9 right -> wrong, 1 wrong -> right, exact McNemar p=0.021, below the level 0.05"]


@pytest.mark.slow
def test_accuracy_change_within_noise_passes(planted: Project) -> None:
    plant(planted, right_to_wrong=4, wrong_to_right=2)  # p = 2 x (1 + 6 + 15) / 2^6 = 0.69
    status, out, err = run_gate(planted)
    assert (status, err) == (0, [])
    assert out[-1] == ("metrics/per_image.csv: accuracy paired with main: 4 right -> wrong, 2 wrong -> right: ok, "
                       "no detectable change (p=0.69) at level 0.05")


@pytest.mark.slow
def test_accuracy_better_beyond_noise_passes(planted: Project) -> None:
    plant(planted, right_to_wrong=1, wrong_to_right=9)
    status, out, err = run_gate(planted)
    assert (status, err) == (0, [])
    assert out[-1].endswith(": ok, better beyond noise (p=0.021) at level 0.05")


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "fails"), [(0.7, True), (0.3, False), (0.6, False)])
def test_loss_higher_is_worse_and_fails_only_beyond_its_tolerance(planted: Project, loss: float, fails: bool) -> None:
    plant(planted, loss=loss)
    status, out, err = run_gate(planted)
    if fails:
        assert status == 1
        assert err == [f"metrics/evaluate.json: loss got worse: 0.5 -> {loss:g} (higher is worse), "
                       f"by {loss - 0.5:.6g}, more than its tolerance 0.1"]
    else:
        assert (status, err) == (0, [])
        assert f"metrics/evaluate.json: loss 0.5 -> {loss:g}: ok (tolerance 0.1, higher is worse)" in out


@pytest.mark.slow
def test_accuracy_lower_is_worse_and_higher_is_not(planted: Project) -> None:
    narrow = {**PLANTED_TOLERANCES, "metrics/evaluate.json": {"accuracy": {"worse": "lower", "tolerance": 0.01}}}
    (planted.path / "narrow.yaml").write_text(yaml.safe_dump(narrow))
    plant(planted, right_to_wrong=2)  # 0.80 -> 0.78
    status, _, err = run_gate(planted, "--tolerances", "narrow.yaml")
    assert status == 1
    assert err[0] == ("metrics/evaluate.json: accuracy got worse: 0.8 -> 0.78 (lower is worse), by 0.02, "
                      "more than its tolerance 0.01")
    plant(planted, wrong_to_right=2)  # 0.80 -> 0.82
    status, out, err = run_gate(planted, "--tolerances", "narrow.yaml")
    assert (status, err) == (0, [])
    assert "metrics/evaluate.json: accuracy 0.8 -> 0.82: ok (tolerance 0.01, lower is worse)" in out


@pytest.mark.slow
def test_nan_metric_fails(planted: Project) -> None:
    plant(planted, loss="nan")
    status, _, err = run_gate(planted)
    assert status == 1
    assert err == ["metrics/evaluate.json: loss 0.5 -> nan: not a number, which no tolerance can judge"]


@pytest.mark.slow
def test_metric_the_workspace_lost_fails(planted: Project) -> None:
    plant(planted, loss="drop")
    status, _, err = run_gate(planted)
    assert status == 1
    assert err == ["metrics/evaluate.json: loss 0.5 -> missing: the workspace lost a metric the base has"]


@pytest.mark.slow
def test_base_without_per_image_results_is_not_paired_but_still_gated(planted: Project) -> None:
    planted.git("checkout", "-q", "-b", "old")
    planted.git("rm", "-q", "metrics/per_image.csv")
    planted.git("commit", "-q", "-m", "before per-image results were tracked")
    planted.git("checkout", "-q", "main")
    status, out, err = run_gate(planted, "--base", "old")
    assert (status, err) == (0, [])
    assert out[-1] == ("metrics/per_image.csv: accuracy paired with old: not compared (the base has no "
                       "metrics/per_image.csv or metrics/accuracy_interval.json)")
    assert "metrics/evaluate.json: accuracy 0.8 -> 0.8: ok (tolerance 0.5, lower is worse)" in out
