"""Experiments: `dvc exp run -S ...` in the workspace, and two queued runs through the real celery queue.

Queued experiments run in copies of the repo under .dvc/tmp/exps, in worker processes started
by `dvc queue start`; they inherit its environment, so the venv's `python` (on PATH) and
DATASET_MIRROR reach the stage commands. The test waits on the queue through DVC's own
blocking `dvc queue logs --follow`, polling `dvc queue status` only until a task has started.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, make_project

pytestmark = pytest.mark.slow

MAX_STATUS_POLLS = 300  # each poll is one `dvc queue status` process (about a second): a bound, not a timer
QUEUED = {"q-seed": "train.seed=1", "q-lr": "train.learning_rate=0.002"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("experiments") / "repo", mirror_root)
    project.repro()
    project.commit("baseline")
    yield project
    project.dvc("queue", "stop", check=False)  # workers also exit on their own once the queue is empty


def experiments(project: Project) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json` as {experiment name: {"rev": commit, "params": flat params, "metrics": {file: values}}}."""
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for rev in group["revs"]:
                data = rev["data"]
                params = data["params"]["params.yaml"]["data"]
                found[rev["name"]] = {
                    "rev": rev["rev"],
                    "params": {f"{s}.{k}": v for s, keys in params.items() for k, v in keys.items()},
                    "metrics": {f: m["data"] for f, m in data["metrics"].items()},
                }
    return found


def confusion_accuracy(confusion_csv: str) -> float:
    """Accuracy recomputed from confusion.csv, one (actual, predicted) row per test image."""
    rows = list(csv.DictReader(io.StringIO(confusion_csv)))
    return sum(row["actual"] == row["predicted"] for row in rows) / len(rows)


def queue_status(project: Project) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed} from the `dvc queue status` table."""
    status = {}
    for line in project.dvc("queue", "status").stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            status[words[1]] = words[-1]
    return status


def test_exp_run_with_set_param_is_listed_with_params_and_metrics(project: Project) -> None:
    result = project.dvc("exp", "run", "-n", "epochs2", "-S", "train.epochs=2")
    output = result.stdout + result.stderr
    assert "Running stage 'train'" in output and "Running stage 'preprocess'" not in output
    exp = experiments(project)["epochs2"]
    assert exp["params"]["train.epochs"] == 2
    # exp show reports this experiment's own evaluation: the accuracy its committed predictions give.
    confusion = project.git("show", f"{exp['rev']}:metrics/confusion.csv").stdout
    assert confusion == (project.path / "metrics" / "confusion.csv").read_text()  # and the workspace holds it
    assert exp["metrics"]["metrics/evaluate.json"]["accuracy"] == pytest.approx(confusion_accuracy(confusion), abs=1e-6)
    assert exp["metrics"]["metrics/train.json"]["epochs"] == 2


def test_queued_experiments_run_through_the_queue(project: Project) -> None:
    project.git("checkout", "HEAD", "--", ".")
    project.dvc("checkout", "--force")
    for name, setting in QUEUED.items():
        project.dvc("exp", "run", "--queue", "-n", name, "-S", setting)
    assert set(QUEUED) <= {n for n, s in queue_status(project).items() if s == "Queued"}
    project.dvc("queue", "start")
    for name in QUEUED:
        for _ in range(MAX_STATUS_POLLS):
            if queue_status(project).get(name) not in (None, "Queued"):
                break
        else:
            pytest.fail(f"{name} never left the queue: {queue_status(project)}")
        project.dvc("queue", "logs", name, "--follow")  # blocks until the task ends
    status = queue_status(project)
    assert all(status.get(name) == "Success" for name in QUEUED), status
    shown = experiments(project)
    for name, setting in QUEUED.items():
        key, value = setting.split("=")
        assert str(shown[name]["params"][key]) == value, shown[name]["params"]
        confusion = project.git("show", f"{shown[name]['rev']}:metrics/confusion.csv").stdout
        accuracy = shown[name]["metrics"]["metrics/evaluate.json"]["accuracy"]
        assert accuracy == pytest.approx(confusion_accuracy(confusion), abs=1e-6), name
