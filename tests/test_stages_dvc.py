"""All five stages through the real `dvc repro` in a temporary git repo, on tiny real data.

One pipeline run (once per test session) is shared by the checks of its outputs, each worker checking its
own copy; each check reads files the way a user or the next stage would.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_PARAMS, Project, copy_linked, make_project, once_per_session
from PIL import Image

from mnist_pipeline.core.datasets import DATASETS, raw_name
from mnist_pipeline.prepared import idx_spec
from mnist_pipeline.train.models import load_model

STAGES = ["download", "preprocess", "train", "evaluate", "predict-sample"]
TRAIN_N, TEST_N = TINY_PARAMS["preprocess.train_limit"], TINY_PARAMS["preprocess.test_limit"]
PNGS = ["metrics/confusion.png", "metrics/confident_mistakes.png", "metrics/predictions.png",
        "metrics/train/curves.png"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> tuple[Project, list[str]]:
    """The pipeline run once per test session (whichever worker asks first); each worker checks its own copy."""

    def build(folder: Path) -> None:
        ran = make_project(folder / "repo", mirror_root).repro()
        (folder / "ran.json").write_text(json.dumps(ran))

    folder = once_per_session(tmp_path_factory, "stages-dvc", build)
    project = Project(tmp_path_factory.mktemp("stages") / "repo", mirror_root)
    copy_linked(folder / "repo", project.path)
    return project, json.loads((folder / "ran.json").read_text())


@pytest.fixture(scope="module")
def project(built: tuple[Project, list[str]]) -> Project:
    return built[0]


def read_json(project: Project, path: str) -> Any:
    return json.loads((project.path / path).read_text())


@pytest.fixture(scope="module")
def test_probabilities(project: Project) -> np.ndarray:
    """The trained model's class probabilities for the test images, computed here with Keras itself."""
    from mnist_pipeline.train.tensorflow_runtime import keras

    model = keras.saving.load_model(project.path / "models" / "model.keras")
    return model.predict(np.load(project.path / "data" / "prepared" / "x_test.npy"), verbose=0)


def confusion_rows(project: Project) -> list[tuple[int, int]]:
    """(actual, predicted) per test image, from the evaluate stage's confusion.csv."""
    with open(project.path / "metrics" / "confusion.csv", newline="") as f:
        return [(int(row["actual"]), int(row["predicted"])) for row in csv.DictReader(f)]


def test_all_five_stages_run_in_order(built: tuple[Project, list[str]]) -> None:
    _, ran = built
    assert sorted(ran) == sorted(STAGES)
    assert ran[:3] == ["download", "preprocess", "train"]


def test_download_writes_the_verified_payloads(project: Project) -> None:
    folder = project.path / "data" / "raw" / "mnist"
    spec = DATASETS["mnist"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(raw_name(f.name) for f in spec.files)
    for file in spec.files:
        assert hashlib.sha256((folder / raw_name(file.name)).read_bytes()).hexdigest() == file.payload_sha256


@pytest.mark.parametrize(("split", "count"), [("train", TRAIN_N), ("val", 0), ("test", TEST_N)])
def test_prepared_arrays(project: Project, split: str, count: int) -> None:
    x = np.load(project.path / "data" / "prepared" / f"x_{split}.npy", allow_pickle=False)
    y = np.load(project.path / "data" / "prepared" / f"y_{split}.npy", allow_pickle=False)
    assert x.dtype == np.float32 and x.shape == (count, 784)
    assert y.dtype == np.uint8 and y.shape == (count,)
    if count:
        assert x.min() == np.float32(-0.5) and x.max() == np.float32(0.5)
        assert set(np.unique(y)) == set(range(10))


def test_model_files(project: Project) -> None:
    model = load_model(project.path / "models" / "model.keras", idx_spec(DATASETS["mnist"]))
    assert model.output_shape == (None, 10)
    assert (project.path / "models" / "model.weights.h5").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    x = np.load(project.path / "data" / "prepared" / "x_test.npy")[:5]
    predicted = model.predict(x, verbose=0).argmax(axis=1).tolist()
    assert predicted == [row["predicted"] for row in read_json(project, "metrics/predictions.json")["predictions"]]


def test_train_logs_one_point_per_epoch(project: Project) -> None:
    """dvclive's per-epoch rows, and the tracked summary (metrics/train.json): the last row and the epoch count."""
    summary = read_json(project, "metrics/train/metrics.json")["train"]  # dvclive's layout
    tracked = read_json(project, "metrics/train.json")
    assert tracked["epochs"] == TINY_PARAMS["train.epochs"]
    assert set(tracked) == {"epochs", "loss", "accuracy"}  # no validation split: no val_* numbers
    for metric in ("loss", "accuracy"):
        with open(project.path / f"metrics/train/plots/metrics/train/{metric}.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(rows) == TINY_PARAMS["train.epochs"]
        assert float(rows[-1][metric]) == pytest.approx(summary[metric], rel=1e-6)
        assert tracked[metric] == pytest.approx(float(rows[-1][metric]), abs=1e-6)


def per_class_rows(project: Project) -> dict[str, dict[str, float]]:
    """metrics/per_class.csv as {class name: {"precision", "recall", "f1"}}, in the file's order."""
    with open(project.path / "metrics" / "per_class.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["class", "precision", "recall", "f1"]
        return {row.pop("class"): {k: float(v) for k, v in row.items()} for row in reader}


def test_evaluate_json_matches_metrics_recomputed_here(project: Project, test_probabilities: np.ndarray) -> None:
    """evaluate.json's headline numbers and per_class.csv's scores, recomputed independently: the loss
    from Keras' own predictions, the errors and per-class scores by counting the rows of confusion.csv."""
    report = read_json(project, "metrics/evaluate.json")
    # Only the headline numbers: `dvc metrics show/diff` stay a few columns wide; the table is plot data.
    assert set(report) == {"loss", "accuracy", "macro_f1", "errors", "test_images"}
    assert report["test_images"] == TEST_N
    labels = np.load(project.path / "data" / "prepared" / "y_test.npy")
    picked = np.clip(test_probabilities[np.arange(len(labels)), labels].astype(np.float64), 1e-7, 1 - 1e-7)
    # Stored rounded to 4 decimals (metrics.STABLE_DECIMALS), from ONNX Runtime's probabilities, not Keras'.
    assert report["loss"] == pytest.approx(-np.mean(np.log(picked)), abs=6e-5)
    assert 0.3 < report["accuracy"] <= 1  # it learned: chance is 0.1, one epoch on 1,000 images gives about 0.6
    per_class = per_class_rows(project)
    assert list(per_class) == [str(d) for d in range(10)]
    rows = confusion_rows(project)
    assert report["errors"] == sum(actual != predicted for actual, predicted in rows)
    f1s = []
    for digit in range(10):
        hits = sum(actual == predicted == digit for actual, predicted in rows)
        predicted_as = sum(predicted == digit for _, predicted in rows)
        actually = sum(actual == digit for actual, _ in rows)
        precision = hits / predicted_as if predicted_as else 0.0
        recall = hits / actually if actually else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        scores = per_class[str(digit)]
        assert scores == pytest.approx({"precision": precision, "recall": recall, "f1": f1}, abs=1e-6), digit
        f1s.append(f1)
    assert report["macro_f1"] == pytest.approx(np.mean(f1s), abs=1e-5)


def test_confusion_csv_has_a_row_per_test_image(project: Project, test_probabilities: np.ndarray) -> None:
    with open(project.path / "metrics" / "confusion.csv", newline="") as f:
        assert next(csv.reader(f)) == ["actual", "predicted"]
    rows = confusion_rows(project)
    assert len(rows) == TEST_N
    labels = np.load(project.path / "data" / "prepared" / "y_test.npy")
    assert [actual for actual, _ in rows] == labels.tolist()
    assert [predicted for _, predicted in rows] == test_probabilities.argmax(axis=1).tolist()
    accuracy = np.mean([actual == predicted for actual, predicted in rows])
    assert accuracy == pytest.approx(read_json(project, "metrics/evaluate.json")["accuracy"], abs=1e-6)


def test_predictions_json_is_the_models_top_class_and_its_probability(
    project: Project, test_probabilities: np.ndarray
) -> None:
    rows = read_json(project, "metrics/predictions.json")["predictions"]
    assert len(rows) == 5
    for i, row in enumerate(rows):
        assert set(row) == {"index", "predicted", "label", "probability", "predicted_name", "label_name"}
        assert row["index"] == i
        assert row["predicted_name"] == str(row["predicted"]) and row["label_name"] == str(row["label"])
        assert row["predicted"] == int(test_probabilities[i].argmax())
        # Stored rounded to 4 decimals, from ONNX Runtime's probabilities (Keras' here differ in the last bits).
        assert row["probability"] == pytest.approx(float(test_probabilities[i].max()), abs=6e-5)
    assert [r["label"] for r in rows] == [7, 2, 1, 0, 4]


def test_per_image_csv_is_each_test_images_label_prediction_and_confidence(
    project: Project, test_probabilities: np.ndarray
) -> None:
    with open(project.path / "metrics" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.load(project.path / "data" / "prepared" / "y_test.npy")
    assert [row["image"] for row in rows] == [str(i) for i in range(TEST_N)]
    assert [row["label"] for row in rows] == [str(label) for label in labels.tolist()]
    assert [row["predicted"] for row in rows] == [str(p) for p in test_probabilities.argmax(axis=1).tolist()]
    # Two decimals: what other CPUs' last bits cannot change (but at a rounding boundary).
    assert all(len(row["confidence"].split(".")[1]) == 2 for row in rows)
    assert [float(row["confidence"]) for row in rows] == pytest.approx(test_probabilities.max(axis=1), abs=0.005 + 1e-6)


def test_accuracy_interval_is_the_wilson_interval_of_the_test_sets_count_right(project: Project) -> None:
    interval = read_json(project, "metrics/accuracy_interval.json")
    correct = round(read_json(project, "metrics/evaluate.json")["accuracy"] * TEST_N)
    assert (interval["correct"], interval["test_images"]) == (correct, TEST_N)
    # Wilson, from the textbook formula: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).
    z, n, p = 1.959964, TEST_N, correct / TEST_N
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert interval["interval_95"] == pytest.approx([(centre - half) / (1 + z * z / n),
                                                     (centre + half) / (1 + z * z / n)], abs=1e-5)
    prepared = project.path / "data" / "prepared"
    digest = hashlib.sha256((prepared / "x_test.npy").read_bytes() + (prepared / "y_test.npy").read_bytes())
    assert interval["test_set_sha256"] == digest.hexdigest()


def test_evaluate_warns_in_one_line_that_200_test_images_are_too_few(project: Project, tmp_path: Path) -> None:
    """Run again into another folder, so the project's outputs stay as dvc repro left them."""
    result = project.run("python", "-m", "stages.evaluate", "models/model.onnx", "data/prepared", str(tmp_path))
    correct = read_json(project, "metrics/accuracy_interval.json")["correct"]
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warning.startswith(f"evaluate: warning: {TEST_N} test images give accuracy {correct / TEST_N:.4f} +-")
    assert warning.endswith(" test images would bring it to +-1 point")
    assert (tmp_path / "per_image.csv").read_bytes() == (project.path / "metrics" / "per_image.csv").read_bytes()


@pytest.mark.parametrize("path", PNGS)
def test_pngs_are_valid(project: Project, path: str) -> None:
    with Image.open(project.path / path) as image:
        assert image.format == "PNG"
        assert image.width >= 200 and image.height >= 200
        image.verify()


def test_second_repro_runs_nothing(project: Project) -> None:
    assert project.repro() == []
    assert project.dvc("status", "--json").stdout.strip() == "{}"


def test_dvc_metrics_show(project: Project) -> None:
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    (workspace,) = shown.values()  # one revision: the workspace (its key is "" in dvc 3.67)
    files = workspace["data"]
    assert files["metrics/evaluate.json"]["data"] == read_json(project, "metrics/evaluate.json")
    assert files["metrics/train.json"]["data"] == read_json(project, "metrics/train.json")
    assert sorted(files) == ["metrics/evaluate.json", "metrics/train.json"]  # dvclive's step counter is not tracked


def test_dvc_plots_show(project: Project) -> None:
    shown = json.loads(project.dvc("plots", "show", "--json").stdout)
    # The per-epoch plots are dvclive's folder: val_size 0 (the default) simply has no eval files.
    assert not shown.get("errors"), shown.get("errors")
    plots = shown["data"]
    for name in ("metrics/confusion.csv", "metrics/per_class.csv", "metrics/train/plots/metrics/train/loss.tsv",
                 "metrics/train/plots/metrics/train/accuracy.tsv"):
        assert any(name in key for key in plots), sorted(plots)
    for path in PNGS:
        assert any(key.endswith(path) for key in plots), sorted(plots)


@pytest.mark.slow
def test_fashion_mnist_runs_from_its_mirror(tmp_path: Path, mirror_root: Path) -> None:
    project = make_project(tmp_path / "repo", mirror_root, {"data.dataset": "fashion_mnist"})
    assert sorted(project.repro()) == sorted(STAGES)
    spec = DATASETS["fashion_mnist"]
    folder = project.path / "data" / "raw" / "fashion_mnist"
    for file in spec.files:
        assert hashlib.sha256((folder / raw_name(file.name)).read_bytes()).hexdigest() == file.payload_sha256
    x = np.load(project.path / "data" / "prepared" / "x_train.npy")
    assert x.shape == (TRAIN_N, 784) and x.dtype == np.float32
    rows = read_json(project, "metrics/predictions.json")["predictions"]
    assert [r["label"] for r in rows] == [9, 2, 1, 1, 6]
    assert [r["label_name"] for r in rows] == ["Ankle boot", "Pullover", "Trouser", "Trouser", "Shirt"]
    assert all(r["predicted_name"] == spec.class_names[r["predicted"]] for r in rows)
    assert list(per_class_rows(project)) == list(spec.class_names)
    assert project.repro() == []
