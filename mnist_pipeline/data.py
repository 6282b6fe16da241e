"""Turn a data set's raw IDX arrays into the flattened float32 splits the tutorial feeds to Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_pipeline.config import PreprocessConfig
from mnist_pipeline.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, DatasetSpec, raw_name
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.idx import read_idx


def scale_images(images: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """`images / scale - offset` as float32, each image flattened to one row.

    A 256-entry lookup table computed in float64 gives exactly the float32 values that the
    tutorial's float64 arithmetic gives after Keras casts it, without a float64 copy of the data.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        table = (np.arange(256, dtype=np.float64) / scale - offset).astype(np.float32)
    if not np.isfinite(table).all():
        raise PipelineError(f"params.yaml: preprocess.scale = {scale:g}, preprocess.offset = {offset:g}: "
                            "x / scale - offset is not finite in float32 for some pixel value: expected a "
                            "scale that keeps the images finite (the tutorial's is 255)")
    return table[images.reshape(len(images), int(np.prod(images.shape[1:])))]


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, each class held out in proportion (largest remainder).

    Both index arrays are sorted, so val_size 0 keeps the original training order exactly.
    """
    if val_size == 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * val_size / len(labels)
    quota = np.floor(exact).astype(int)
    leftover = val_size - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1
    val = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    )
    val.sort()
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val


def load_raw(raw_dir: str | Path, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """The four raw arrays of one data set as written by the download stage, checked against its spec."""
    folder = Path(raw_dir) / spec.name
    arrays = {
        "train_images": read_idx(folder / raw_name(TRAIN_IMAGES), "images", spec.image_shape),
        "train_labels": read_idx(folder / raw_name(TRAIN_LABELS), "labels"),
        "test_images": read_idx(folder / raw_name(TEST_IMAGES), "images", spec.image_shape),
        "test_labels": read_idx(folder / raw_name(TEST_LABELS), "labels"),
    }
    for split, labels_file in (("train", TRAIN_LABELS), ("test", TEST_LABELS)):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise PipelineError(f"{folder}: {split} set has {n_img} images but {n_lab} labels")
        labels = arrays[f"{split}_labels"]
        if len(labels) and int(labels.max()) >= spec.n_classes:
            raise PipelineError(f"{raw_name(labels_file)}: expected labels 0-{spec.n_classes - 1}, "
                                f"found {int(labels.max())}")
    return arrays


def prepare(raw: dict[str, np.ndarray], cfg: PreprocessConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images, labels) per split; limits (0 = all) take the first N images for quick runs."""
    train_images, train_labels = raw["train_images"], raw["train_labels"]
    test_images, test_labels = raw["test_images"], raw["test_labels"]
    if cfg.train_limit:
        train_images, train_labels = train_images[: cfg.train_limit], train_labels[: cfg.train_limit]
    if cfg.test_limit:
        test_images, test_labels = test_images[: cfg.test_limit], test_labels[: cfg.test_limit]
    if cfg.val_size >= len(train_labels):
        raise PipelineError(
            f"params.yaml: preprocess.val_size = {cfg.val_size}: expected fewer than the "
            f"{len(train_labels)} training images"
        )
    train_idx, val_idx = stratified_split(train_labels, cfg.val_size, cfg.seed)
    scale, offset = cfg.scale, cfg.offset
    return {
        "train": (scale_images(train_images[train_idx], scale, offset), train_labels[train_idx]),
        "val": (scale_images(train_images[val_idx], scale, offset), train_labels[val_idx]),
        "test": (scale_images(test_images, scale, offset), test_labels),
    }
