"""The prepared splits: the one module that writes and reads `data/prepared/{x,y}_<split>.npy`.

Preprocess saves each split here; train, evaluate and predict-sample load them here, checked against
the data set's spec (image size, class count), so no other module knows file names, dtypes or shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mnist_pipeline.datasets import DatasetSpec
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import load_npy, save_npy

SPLITS = ("train", "val", "test")
IMAGES_DTYPE = np.float32
LABELS_DTYPE = np.uint8


def split_paths(prepared_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Where a split's images and labels live; dvc.yaml names the same files as deps."""
    folder = Path(prepared_dir)
    return folder / f"x_{split}.npy", folder / f"y_{split}.npy"


def save_split(prepared_dir: str | os.PathLike[str], split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write one split atomically: float32 images (N, pixels) and uint8 labels (N,)."""
    x_path, y_path = split_paths(prepared_dir, split)
    if not np.isfinite(images).all():
        raise PipelineError(f"{x_path}: refusing to write {split} images with values that are not finite "
                            "(NaN or infinity): check preprocess.scale and preprocess.offset")
    save_npy(x_path, images.astype(IMAGES_DTYPE, copy=False))
    save_npy(y_path, labels.astype(LABELS_DTYPE, copy=False))
    return x_path


def load_split(
    prepared_dir: str | os.PathLike[str], split: str, spec: DatasetSpec, min_images: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, pixels) float32 and labels (N,) uint8 of one split, checked against the data set's spec.

    Pixels must be finite and labels name one of the spec's classes: a NaN that got into the arrays
    would otherwise train, evaluate and exit 0 with a meaningless result.
    """
    x_path, y_path = split_paths(prepared_dir, split)
    x = load_npy(x_path, IMAGES_DTYPE, 2, (spec.n_pixels,))
    y = load_npy(y_path, LABELS_DTYPE, 1)
    if len(x) != len(y):
        raise PipelineError(f"{y_path}: {len(y)} labels for {len(x)} images in {x_path}")
    if len(y) < min_images:
        raise PipelineError(f"{x_path}: {len(y)} images: expected at least {min_images} in the {split} split")
    if len(y) and int(y.max()) >= spec.n_classes:
        raise PipelineError(f"{y_path}: labels must be 0-{spec.n_classes - 1}, found {int(y.max())}")
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise PipelineError(f"{x_path}: {bad} pixel values are not finite (NaN or infinity): expected finite "
                            "numbers (rerun preprocess: dvc repro -f -s preprocess)")
    return x, y
