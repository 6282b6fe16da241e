"""A git + DVC repo whose one stage plants per-image results with flips of known count, for tools/compare.py
and the metrics gate: no training, so the flips, and so the exact p-values, are known in advance.

The stage, `evaluate`, writes what the real evaluate writes for comparisons, laid out the same way:
metrics/per_image.csv (100 images, labels i % 10, images 0-19 wrong in the base), metrics/accuracy_interval.json
(only the test-set hash, a param here) and metrics/evaluate.json (accuracy from the rows, loss a param; the
string "nan" writes NaN, "drop" leaves the metric out). Params plant the flips: the first `right_to_wrong`
images of 20-99 turn wrong, the first `wrong_to_right` of 0-19 turn right; `reverse` writes the rows backwards.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml
from conftest import Project

PLANT = textwrap.dedent('''\
    import json
    import yaml

    p = yaml.safe_load(open("params.yaml"))
    order = list(range(100))
    if p["reverse"]:
        order.reverse()
    correct = {i: i >= 20 for i in range(100)}
    for i in range(20, 20 + p["right_to_wrong"]):
        correct[i] = False
    for i in range(p["wrong_to_right"]):
        correct[i] = True
    rows = ["image,label,predicted,confidence"]
    for i in order:
        label = i % 10
        rows.append(f"{i},{label},{label if correct[i] else (label + 1) % 10},0.90")
    open("metrics/per_image.csv", "w").write("\\n".join(rows) + "\\n")
    json.dump({"test_set_sha256": p["test_set"]}, open("metrics/accuracy_interval.json", "w"))
    report = {"accuracy": sum(correct.values()) / 100, "loss": p["loss"]}
    for key, value in list(report.items()):
        if value == "nan":
            report[key] = float("nan")
        elif value == "drop":
            del report[key]
    json.dump(report, open("metrics/evaluate.json", "w"))
''')
DVC_YAML = {"stages": {"evaluate": {
    "cmd": "python plant.py",
    "deps": ["plant.py"],
    "params": ["right_to_wrong", "wrong_to_right", "reverse", "test_set", "loss"],
    "outs": [{"metrics/per_image.csv": {"cache": False}}, {"metrics/accuracy_interval.json": {"cache": False}}],
    "metrics": [{"metrics/evaluate.json": {"cache": False}}],
}}}
BASE = {"right_to_wrong": 0, "wrong_to_right": 0, "reverse": False, "test_set": "same", "loss": 0.5}


def plant(project: Project, **params: object) -> None:
    """Set the planted flips (the others at the base's values) and reproduce the stage in the workspace."""
    (project.path / "params.yaml").write_text(yaml.safe_dump({**BASE, **params}))
    project.dvc("repro", "-q")


def make_planted_repo(path: Path) -> Project:
    """The repo with the base (80 of 100 right) committed on `main`."""
    path.mkdir(parents=True)
    project = Project(path, None)
    project.git("init", "-q", "-b", "main")
    project.git("config", "user.email", "test@example.com")
    project.git("config", "user.name", "test")
    project.dvc("init", "-q")
    (path / "plant.py").write_text(PLANT)
    (path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (path / "metrics").mkdir()
    plant(project)
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "base")
    return project
