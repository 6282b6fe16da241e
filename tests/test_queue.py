"""Parallel experiments with DVC's own queue: `dvc exp run --queue`, `dvc queue start --jobs 2`, `dvc exp show`.

The queue runs each experiment in a copy of the repo under .dvc/tmp/exps, in worker processes
that inherit the environment of `dvc queue start` (the venv on PATH, DATASET_MIRROR). We wait
with DVC's commands: `dvc queue logs NAME --follow` blocks while a task runs; `dvc queue status`
tells when every task has ended.
"""

from __future__ import annotations

import json
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
    """Experiment name -> its data (params, metrics) from `dvc exp show --json`."""
    found = {}
    for commit in show:
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def test_queued_grid_runs_two_at_a_time_and_exp_show_compares_it(tmp_path: Path, mirror_root: Path) -> None:
    project = make_project(tmp_path / "repo", mirror_root)
    project.repro()
    project.commit("baseline")

    for name, rate in GRID.items():
        queued = project.dvc("exp", "run", "--queue", "--name", name, "-S", f"train.learning_rate={rate}")
        assert f"Queued experiment '{name}'" in queued.stdout
    assert set(queue_status(project).values()) == {"Queued"}

    try:
        started = project.dvc("queue", "start", "--jobs", "2")
        assert "Started '2' new experiments task queue workers" in started.stdout
        statuses = wait_for_queue(project, list(GRID))
    finally:
        project.dvc("queue", "stop", check=False)
    failed = [name for name in GRID if statuses[name] != "Success"]
    assert not failed, "\n".join(project.dvc("queue", "logs", name, check=False).stdout for name in failed)

    found = experiments(json.loads(project.dvc("exp", "show", "--json").stdout))
    assert set(GRID) <= set(found), f"exp show lists {sorted(found)}"
    accuracies = {}
    for name, rate in GRID.items():
        data = found[name]
        assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == rate
        accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
        assert 0.0 <= accuracy <= 1.0
        accuracies[name] = accuracy
    # Different learning rates train different models: the grid really ran its own params.
    assert len(set(accuracies.values())) > 1, accuracies
    # Queued runs happen in temporary copies: the workspace keeps the baseline's params.
    assert project.params()["train"]["learning_rate"] == 0.001
