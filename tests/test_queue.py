"""Parallel experiments with DVC's own queue: `dvc exp run --queue`, `dvc queue start --jobs 2`, `dvc exp show`.

The queue runs each experiment in a copy of the repo under .dvc/tmp/exps, in worker processes
that inherit the environment of `dvc queue start` (the venv on PATH, DATASET_MIRROR). We wait
with DVC's commands: `dvc queue logs NAME --follow` blocks while a task runs; `dvc queue status`
tells when every task has ended.

That two experiments really ran at the same time is seen from outside: `dvc queue start` gets a
PATH whose first `python` is a small shell wrapper around the venv's, which appends one line with
the wall clock (ns), the working directory and the arguments when a stage process starts and one
when it ends. Each queued experiment runs in its own directory, so the lines give each
experiment's span, first stage start to last stage end.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, make_project

pytestmark = pytest.mark.slow

GRID = {"lr-0.01": 0.01, "lr-0.0003": 0.0003}
ENDED = ("Success", "Failed")
# Each round is one `dvc queue status` (about a second) or one followed task: a bound, not a clock.
MAX_ROUNDS = 600


def queue_status(project: Project) -> dict[str, str]:
    """Experiment name -> Queued | Running | Success | Failed, from `dvc queue status`'s table."""
    lines = project.dvc("queue", "status").stdout.splitlines()
    statuses = {}
    for line in lines[1:]:
        parts = line.split()
        if not parts or line.startswith("Worker status"):
            continue
        statuses[parts[1]] = parts[-1]
    return statuses


def wait_for_queue(project: Project, names: list[str]) -> dict[str, str]:
    """Block on each running task's log until every named task has ended."""
    for _ in range(MAX_ROUNDS):
        statuses = queue_status(project)
        if all(statuses.get(name) in ENDED for name in names):
            return statuses
        running = [name for name in names if statuses.get(name) == "Running"]
        if running:
            project.dvc("queue", "logs", running[0], "--follow", check=False)
    pytest.fail(f"queue still busy after {MAX_ROUNDS} rounds: {queue_status(project)}")


def experiments(show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Experiment name -> its data (rev, params, metrics) from `dvc exp show --json`."""
    found = {}
    for commit in show:
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


STAGE_CLOCK = """#!/bin/sh
# The venv's python, with a line in the log when the process starts and one when it ends.
echo "start $(date +%s%N) $(pwd -P) $*" >> '{log}'
'{python}' "$@"
status=$?
echo "end $(date +%s%N) $(pwd -P) $*" >> '{log}'
exit $status
"""


def install_stage_clock(folder: Path, python: Path) -> Path:
    """Write the wrapper as `folder/python`; returns the log it appends to."""
    folder.mkdir()
    log = folder / "stages.log"
    wrapper = folder / "python"
    wrapper.write_text(STAGE_CLOCK.format(log=log, python=python))
    wrapper.chmod(0o755)
    return log


def stage_spans(log: Path) -> dict[str, tuple[int, int, list[str]]]:
    """Run directory -> (first stage start ns, last stage end ns, stages run), from the wrapper's lines."""
    events: dict[str, list[tuple[str, int, str]]] = {}
    for line in log.read_text().splitlines():
        event, ns, cwd, *args = line.split(" ")
        if len(args) >= 2 and args[0] == "-m" and args[1].startswith("stages."):
            events.setdefault(cwd, []).append((event, int(ns), args[1].removeprefix("stages.")))
    spans = {}
    for cwd, found in events.items():
        starts = [ns for event, ns, _ in found if event == "start"]
        ends = [ns for event, ns, _ in found if event == "end"]
        assert len(starts) == len(ends), f"{cwd}: a stage process started but never ended:\n{found}"
        spans[cwd] = (min(starts), max(ends), [stage for event, _, stage in found if event == "start"])
    return spans


def confusion_accuracy(project: Project, rev: str) -> float:
    """Accuracy recomputed from the experiment's own committed confusion.csv (one row per test image)."""
    text = project.git("show", f"{rev}:metrics/confusion.csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    return sum(row["actual"] == row["predicted"] for row in rows) / len(rows)


def test_queued_grid_runs_two_at_a_time_and_exp_show_compares_it(tmp_path: Path, mirror_root: Path) -> None:
    project = make_project(tmp_path / "repo", mirror_root)
    project.repro()
    project.commit("baseline")

    for name, rate in GRID.items():
        queued = project.dvc("exp", "run", "--queue", "--name", name, "-S", f"train.learning_rate={rate}")
        assert f"Queued experiment '{name}'" in queued.stdout
    assert set(queue_status(project).values()) == {"Queued"}

    log = install_stage_clock(tmp_path / "clock", Path(sys.executable))
    clocked = {**project.env, "PATH": f"{log.parent}{os.pathsep}{project.env['PATH']}"}
    try:
        started = project.dvc("queue", "start", "--jobs", "2", env=clocked)
        assert "Started '2' new experiments task queue workers" in started.stdout
        statuses = wait_for_queue(project, list(GRID))
    finally:
        project.dvc("queue", "stop", check=False)
    failed = [name for name in GRID if statuses[name] != "Success"]
    assert not failed, "\n".join(project.dvc("queue", "logs", name, check=False).stdout for name in failed)

    # Two run directories, each running the stages after preprocess, and their spans overlap.
    spans = stage_spans(log)
    assert len(spans) == 2, f"expected the stages of 2 experiments in 2 run directories, got {spans}"
    for cwd, (_, _, stages) in spans.items():
        assert sorted(stages) == ["evaluate", "predict_sample", "train"], f"{cwd} ran {stages}"
    (start_a, end_a, _), (start_b, end_b, _) = spans.values()
    overlap_s = (min(end_a, end_b) - max(start_a, start_b)) / 1e9
    assert overlap_s > 0, f"the experiments ran one after the other ({-overlap_s:.1f} s apart): {spans}"

    found = experiments(json.loads(project.dvc("exp", "show", "--json").stdout))
    assert set(GRID) <= set(found), f"exp show lists {sorted(found)}"
    accuracies = {}
    for name, rate in GRID.items():
        data = found[name]
        assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == rate
        accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
        # exp show's number is the one this experiment's own predictions give.
        assert accuracy == pytest.approx(confusion_accuracy(project, data["rev"]), abs=1e-6), name
        accuracies[name] = accuracy
    # Different learning rates train different models: the grid really ran its own params.
    assert len(set(accuracies.values())) > 1, accuracies
    # Queued runs happen in temporary copies: the workspace keeps the baseline's params.
    assert project.params()["train"]["learning_rate"] == 0.001
