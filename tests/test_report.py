"""The PR report script on two real commits of a tiny pipeline: main (1 epoch) and a branch (2 epochs)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project


def table_row(report: str, *cells: str) -> list[str]:
    """The cells of the one markdown table row that holds all of `cells`."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in report.splitlines()
        if line.startswith("|") and all(f" {c} " in line for c in cells)
    ]
    assert len(rows) == 1, f"expected one row with {cells}:\n{report}"
    return rows[0]


@pytest.mark.slow
def test_report_on_two_commits(tiny_project: Project) -> None:
    project = tiny_project
    project.repro()
    project.commit("main: 1 epoch")
    project.git("checkout", "-q", "-b", "more-epochs")
    project.set_params({"train.epochs": 2})
    assert project.repro() == ["train", "evaluate", "predict-sample"]
    project.commit("2 epochs")

    result = project.run("python", str(PROJECT_ROOT / "tools" / "report.py"), "--base", "main", "--out", "pr/report.md")
    out = project.path / "pr" / "report.md"
    assert result.stdout.strip() == "report: wrote pr/report.md"
    report = out.read_text()
    print(report)

    before = json.loads(project.run("git", "show", "main:metrics/evaluate.json").stdout)["accuracy"]
    after = json.loads((project.path / "metrics/evaluate.json").read_text())["accuracy"]
    assert before != after  # a second epoch on 1,000 images moves test accuracy
    cells = table_row(report, "metrics/evaluate.json", "accuracy")
    assert float(cells[2]) == pytest.approx(before, abs=1e-4) and float(cells[3]) == pytest.approx(after, abs=1e-4)

    # The tracked metrics are the headline numbers: a short table, epochs counted as params.yaml counts them.
    assert table_row(report, "metrics/train.json", "epochs")[2:4] == ["1", "2"]
    metric_rows = [line for line in report.split("## Params")[0].splitlines() if line.startswith("| metrics/")]
    assert 3 <= len(metric_rows) <= 9 and "per_class" not in report and "step" not in report, metric_rows
    assert table_row(report, "params.yaml", "train.epochs")[2:4] == ["1", "2"]

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    targets = {(out.parent / link).resolve() for link in links}
    assert all(t.is_file() for t in targets), links
    for name in ("confusion.png", "confident_mistakes.png", "predictions.png", "train/curves.png"):
        assert (project.path / "metrics" / name).resolve() in targets, name
    # Pictures the branch changed are shown beside main's version, extracted from git.
    base_confusion = out.parent / "report-assets/main/metrics/confusion.png"
    assert base_confusion.resolve() in targets
    committed = subprocess.run(["git", "show", "main:metrics/confusion.png"], cwd=project.path,
                               capture_output=True, check=True).stdout
    assert base_confusion.read_bytes() == committed != (project.path / "metrics/confusion.png").read_bytes()


def test_unknown_base_is_one_line(tmp_path: Path) -> None:
    project = Project(tmp_path, None)
    project.git("init", "-q", "-b", "main")
    result = project.run("python", str(PROJECT_ROOT / "tools" / "report.py"), "--base", "nope", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --base nope: not a commit in this git repository (in CI, check out with full history: fetch-depth: 0)"
    )
    assert not (tmp_path / "report.md").exists()
