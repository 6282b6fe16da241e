"""A folder of the user's own images through the real pipeline: `dvc add`, params, `dvc repro`, in temp git repos.

The folders are built here from real MNIST test digits, written as PNG and JPEG files of mixed sizes
(and, for colour, drawn in colours on coloured grounds), the way a user's pictures come: not 28x28,
not one format. Class names are words with spaces and accents, as folder names often are.
"""

from __future__ import annotations

import csv
import gzip
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Project, make_project, ran_stages
from PIL import Image

from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS
from mnist_pipeline.sources.idx import parse_idx

# Spaces in every name, and letters beyond ASCII: they must come through to every table as written.
DIGIT_NAMES = ("0 zéro", "1 un", "2 deux", "3 trois", "4 quatre", "5 cinq", "6 six", "7 sept", "8 huit",
               "9 neuf 九")
SIZES = (28, 40, 56)
FORMATS = (("PNG", ".png"), ("JPEG", ".jpg"))
FOLDER_PARAMS: dict[str, Any] = {
    "data.dataset": "folder",
    "data.folder": "data/images",
    "preprocess.train_limit": 0,
    "preprocess.test_limit": 0,
}
REST = ("preprocess", "train", "evaluate", "predict-sample")


def mnist_test_digits(mirror: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    def read(name: str, kind: str) -> np.ndarray:
        return parse_idx(gzip.decompress((mirror / "mnist" / name).read_bytes()), name, kind)

    return read(TEST_IMAGES, "images")[:count], read(TEST_LABELS, "labels")[:count]


def save(image: Image.Image, folder: Path, stem: str, index: int) -> None:
    """Every other file a JPEG, sizes cycling through SIZES: a folder as mixed as a user's."""
    pil_format, ext = FORMATS[index % len(FORMATS)]
    size = SIZES[index % len(SIZES)]
    folder.mkdir(parents=True, exist_ok=True)
    if size != image.width:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    image.save(folder / f"{stem}{ext}", format=pil_format)


def build_digit_folder(root: Path, mirror: Path, count: int) -> None:
    images, labels = mnist_test_digits(mirror, count)
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        save(Image.fromarray(pixels), root / DIGIT_NAMES[label], f"digit-{index:04d}", index)


def build_colour_folder(root: Path, mirror: Path, classes: dict[int, str], per_class: int) -> None:
    """Digits in a random light colour on a random dark ground: the class is the shape, not the colour."""
    images, labels = mnist_test_digits(mirror, 2000)
    rng = np.random.default_rng(0)
    for digit, name in classes.items():
        for index, pixels in enumerate(images[labels == digit][:per_class]):
            ink = rng.integers(150, 256, 3)
            ground = rng.integers(0, 100, 3)
            alpha = pixels[..., None] / 255.0
            rgb = np.rint(ground * (1 - alpha) + ink * alpha).astype(np.uint8)
            save(Image.fromarray(rgb), root / name, f"{digit}-{index:03d}", index)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def lock_entry(project: Project, stage: str) -> Any:
    import yaml

    return yaml.safe_load((project.path / "dvc.lock").read_text())["stages"][stage]


def model_layers(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(class name, config) of every layer in the `.keras` file's own config, without loading TensorFlow."""
    with zipfile.ZipFile(path) as archive:
        model = json.loads(archive.read("config.json"))
    return [(layer["class_name"], layer["config"]) for layer in model["config"]["layers"]]


@pytest.mark.slow
def test_mixed_png_and_jpeg_digits_run_end_to_end_and_one_changed_image_reruns_all_but_download(
    tmp_path: Path, mirror_root: Path,
) -> None:
    project = make_project(tmp_path / "repo", mirror_root, {**FOLDER_PARAMS, "train.epochs": 3})
    images = project.path / "data/images"
    build_digit_folder(images, mirror_root, 500)
    project.dvc("add", "data/images")
    project.commit("images")

    assert set(project.repro()) == {"download", *REST}
    metrics = project.path / "metrics"
    report = json.loads((metrics / "evaluate.json").read_text())
    manifest = read_csv(project.path / "data/prepared/manifest.csv")
    test_rows = [row for row in manifest if row["split"] == "test"]
    assert len(manifest) == 500
    assert report["test_images"] == len(test_rows) > 50
    assert report["accuracy"] > 0.6, report  # three epochs on ~400 digits; chance is 0.1
    assert [row["class"] for row in read_csv(metrics / "per_class.csv")] == list(DIGIT_NAMES)
    confusion = read_csv(metrics / "confusion.csv")
    assert len(confusion) == len(test_rows)
    assert {row["actual"] for row in confusion} == {row["class"] for row in test_rows}
    assert {row["predicted"] for row in confusion} <= set(DIGIT_NAMES)
    assert "9 neuf 九" in {row["actual"] for row in confusion}
    predictions = json.loads((metrics / "predictions.json").read_text())["predictions"]
    assert {row["label_name"] for row in predictions} <= set(DIGIT_NAMES)
    project.commit("repro")

    # One training image changes (another picture of the same digit): preprocess and all after it rerun.
    download_lock = lock_entry(project, "download")
    changed = next(row["path"] for row in manifest if row["split"] == "train" and row["path"].endswith(".png"))
    with Image.open(images / changed) as image:
        Image.fromarray(255 - np.asarray(image)).save(images / changed)
    project.dvc("add", "data/images")
    ran = project.repro()
    assert sorted(ran) == sorted(REST)
    assert lock_entry(project, "download") == download_lock


@pytest.mark.slow
def test_rgb_folder_trains_the_mlp_and_the_cnn_on_colour_images(tmp_path: Path, mirror_root: Path) -> None:
    classes = {0: "zero", 1: "one", 7: "seven"}
    project = make_project(tmp_path / "repo", mirror_root, {
        **FOLDER_PARAMS,
        "preprocess.color": "rgb",
        "preprocess.image_size": 32,
        "train.epochs": 3,
    })
    build_colour_folder(project.path / "data/images", mirror_root, classes, 100)
    project.dvc("add", "data/images")
    project.commit("images")

    assert set(project.repro()) == {"download", *REST}
    spec = json.loads((project.path / "data/prepared.json").read_text())
    assert spec["class_names"] == sorted(classes.values())
    layers = model_layers(project.path / "models/model.keras")
    assert layers[0][1]["batch_shape"] == [None, 32 * 32 * 3]
    assert layers[-1][0] == "Dense" and layers[-1][1]["units"] == 3
    mlp = json.loads((project.path / "metrics/evaluate.json").read_text())
    assert mlp["accuracy"] > 0.6, mlp  # chance is a third
    project.commit("mlp")

    project.set_params({
        "model.type": "cnn",
        "model.cnn.filters": [8, 16],
        "model.cnn.dense": 32,
        "model.cnn.batch_norm": False,
        "model.cnn.augment_shift": 0.0,
    })
    assert sorted(project.repro()) == ["evaluate", "predict-sample", "train"]
    layers = model_layers(project.path / "models/model.keras")
    assert ("Reshape", [32, 32, 3]) in [(name, config.get("target_shape")) for name, config in layers]
    assert [config["filters"] for name, config in layers if name == "Conv2D"] == [8, 16]
    assert layers[-1][0] == "Dense" and layers[-1][1]["units"] == 3
    cnn = json.loads((project.path / "metrics/evaluate.json").read_text())
    assert cnn["test_images"] == mlp["test_images"]
    assert cnn["accuracy"] > 0.6, cnn
    assert {row["actual"] for row in read_csv(project.path / "metrics/confusion.csv")} == set(classes.values())
    with Image.open(project.path / "metrics/predictions.png") as grid:
        assert grid.format == "PNG"


@pytest.mark.slow
def test_a_folder_run_leaves_a_note_in_data_raw_and_dvc_never_warns_it_is_empty(
    tmp_path: Path, mirror_root: Path,
) -> None:
    from mnist_pipeline.sources.download import FOLDER_NOTE, FOLDER_NOTE_TEXT

    project = make_project(tmp_path / "repo", mirror_root, FOLDER_PARAMS)
    build_digit_folder(project.path / "data/images", mirror_root, 60)
    project.dvc("add", "data/images")
    project.commit("images")
    first = project.dvc("repro")
    again = project.dvc("repro")
    status = project.dvc("status")
    for result in (first, again, status):
        assert "is empty" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert {"download", *REST} <= set(ran_stages(first.stdout + first.stderr))
    assert ran_stages(again.stdout + again.stderr) == []
    assert [p.name for p in (project.path / "data/raw").iterdir()] == [FOLDER_NOTE]
    assert (project.path / "data/raw" / FOLDER_NOTE).read_text(encoding="utf-8") == FOLDER_NOTE_TEXT
