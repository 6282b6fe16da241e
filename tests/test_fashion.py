"""Fashion-MNIST through the whole pipeline, switched on by a preset with `dvc exp run`, on tiny real data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import Project

from mnist_pipeline.core.datasets import DATASETS

FASHION = DATASETS["fashion_mnist"].class_names


@pytest.mark.slow
def test_fashion_preset_runs_end_to_end_with_class_names(tiny_project: Project) -> None:
    preset = subprocess.run([sys.executable, "-m", "mnist_pipeline.presets", "fashion-mlp"],
                            capture_output=True, text=True, check=True).stdout.split()
    # The preset as a user runs it, shortened to one epoch on the tiny project's 1,000 images.
    tiny_project.dvc("exp", "run", *preset, "-S", "train.epochs=1")
    assert tiny_project.params()["data"]["dataset"] == "fashion_mnist"
    assert (tiny_project.path / "data/raw/fashion_mnist").is_dir()

    metrics = tiny_project.path / "metrics"
    predictions = json.loads((metrics / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 5
    for row in predictions:
        assert row["label_name"] == FASHION[row["label"]]
        assert row["predicted_name"] == FASHION[row["predicted"]]
    # Fashion-MNIST's first test images, as published: ankle boot, pullover, trouser, trouser, shirt.
    assert [row["label_name"] for row in predictions] == ["Ankle boot", "Pullover", "Trouser", "Trouser", "Shirt"]

    report = json.loads((metrics / "evaluate.json").read_text())
    per_class = (metrics / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1"
    assert [row.rsplit(",", 3)[0] for row in per_class[1:]] == list(FASHION)
    assert report["test_images"] == 200
    assert report["accuracy"] > 0.5  # one epoch on 1,000 images; chance is 0.1
    rows = (metrics / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted"
    assert {row.rsplit(",", 1)[0] for row in rows[1:]} <= set(FASHION)
    for png in ("predictions.png", "confusion.png", "confident_mistakes.png"):
        assert (metrics / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
