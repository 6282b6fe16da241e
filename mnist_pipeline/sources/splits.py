"""Turn a data set's raw IDX arrays into the flattened float32 splits the tutorial feeds to Keras."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from mnist_pipeline.core import progress
from mnist_pipeline.core.config import PreprocessConfig
from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, DatasetSpec, raw_name
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import PreparedSpec, idx_spec, split_paths, split_writer
from mnist_pipeline.sources.idx import IdxItems, open_idx, read_idx


def scale_images(images: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """`images / scale - offset` as float32, each image flattened to one row.

    A 256-entry lookup table computed in float64 gives exactly the float32 values that the
    tutorial's float64 arithmetic gives after Keras casts it, without a float64 copy of the data.
    """
    return scale_table(scale, offset)[images.reshape(len(images), int(np.prod(images.shape[1:])))]


def scale_table(scale: float, offset: float) -> np.ndarray:
    """The float32 value of each byte 0-255, checked finite."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        table = (np.arange(256, dtype=np.float64) / scale - offset).astype(np.float32)
    if not np.isfinite(table).all():
        raise PipelineError(f"params.yaml: preprocess.scale = {scale:g}, preprocess.offset = {offset:g}: "
                            "x / scale - offset is not finite in float32 for some pixel value: expected a "
                            "scale that keeps the images finite (the tutorial's is 255)")
    return table


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


def prepared_spec(spec: DatasetSpec, cfg: PreprocessConfig) -> PreparedSpec:
    """What preprocess makes of an IDX data set: its own size, grayscale, its class names.

    IDX data sets are kept as they are: resizing or colouring them would only blur or repeat pixels.
    """
    if cfg.image_size != spec.image_shape[0] or cfg.color != "grayscale":
        raise PipelineError(f"params.yaml: preprocess.image_size = {cfg.image_size}, preprocess.color = {cfg.color}: "
                            f"{spec.name} is {spec.image_shape[0]}x{spec.image_shape[1]} grayscale: expected "
                            f"image_size {spec.image_shape[0]} and color grayscale (other values are for folder "
                            "data sets)")
    return dataclasses.replace(idx_spec(spec), pixel_range=pixel_range(cfg))


def pixel_range(cfg: PreprocessConfig) -> tuple[float, float]:
    """The lowest and highest value the scaling gives a byte: what every prepared pixel lies within."""
    table = scale_table(cfg.scale, cfg.offset)
    return float(table.min()), float(table.max())


def load_raw(raw_dir: str | Path, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """The four raw arrays of one data set as written by the download stage, checked against its spec."""
    return {name: item.read(0, len(item)) if isinstance(item, IdxItems) else item
            for name, item in open_raw(raw_dir, spec).items()}


def open_raw(raw_dir: str | Path, spec: DatasetSpec) -> dict[str, np.ndarray | IdxItems]:
    """`load_raw`, with each uncompressed images file opened to be read a chunk at a time, not loaded
    (labels are one byte an image: they are read whole). Same checks, same errors."""
    folder = Path(raw_dir) / spec.name
    arrays = {
        "train_images": open_idx(folder / raw_name(TRAIN_IMAGES), "images", spec.image_shape),
        "train_labels": read_idx(folder / raw_name(TRAIN_LABELS), "labels"),
        "test_images": open_idx(folder / raw_name(TEST_IMAGES), "images", spec.image_shape),
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


def held_out(train_labels: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation indices of the (limited) training set, `preprocess.val_size` checked."""
    if cfg.val_size >= len(train_labels):
        raise PipelineError(
            f"params.yaml: preprocess.val_size = {cfg.val_size}: expected fewer than the "
            f"{len(train_labels)} training images"
        )
    return stratified_split(train_labels, cfg.val_size, cfg.seed)


# Raw images read, scaled and written at a time: about this many bytes of float32 output per chunk.
CHUNK_BYTES = 32 << 20


def chunk_rows(spec: PreparedSpec) -> int:
    """Images per chunk of prepared output: CHUNK_BYTES of float32 whatever the image size and colour
    (at least one image), so memory is bounded by bytes, never by an image count."""
    return max(1, CHUNK_BYTES // (4 * spec.n_pixels))


def write_splits(
    raw: dict[str, np.ndarray | IdxItems], cfg: PreprocessConfig, prepared_dir: str | Path, spec: PreparedSpec,
    chunk_images: int | None = None,
) -> dict[str, tuple[int, Path]]:
    """Every split scaled (`scale_table`) and written (`split_writer`), a chunk of `chunk_images` raw images at a
    time (by default CHUNK_BYTES of output): in memory for one chunk whatever the data set's size. Limits
    (0 = all) take the first N images for quick runs; the validation split is held out of the (limited)
    training set (`held_out`), each split in the original order.

    Returns each split's image count and images file."""
    table = scale_table(cfg.scale, cfg.offset)
    chunk = chunk_images or chunk_rows(spec)
    n_train = min(len(raw["train_labels"]), cfg.train_limit or len(raw["train_labels"]))
    n_test = min(len(raw["test_labels"]), cfg.test_limit or len(raw["test_labels"]))
    train_labels, test_labels = raw["train_labels"][:n_train], raw["test_labels"][:n_test]
    train_idx, val_idx = held_out(train_labels, cfg)
    in_val = np.zeros(n_train, bool)
    in_val[val_idx] = True

    def scaled(images: np.ndarray | IdxItems, start: int, stop: int) -> np.ndarray:
        part = images.read(start, stop) if isinstance(images, IdxItems) else images[start:stop]
        return table[part.reshape(len(part), spec.n_pixels)]

    # Entered val before train, so train's files are renamed into place first: splits appear in order.
    with (split_writer(prepared_dir, "val", len(val_idx), spec) as val,
          split_writer(prepared_dir, "train", len(train_idx), spec) as train):
        for start in range(0, n_train, chunk):
            stop = min(n_train, start + chunk)
            images = scaled(raw["train_images"], start, stop)
            labels, held = train_labels[start:stop], in_val[start:stop]
            train.write(images[~held], labels[~held])
            val.write(images[held], labels[held])
    with split_writer(prepared_dir, "test", n_test, spec) as test:
        for start in range(0, n_test, chunk):
            stop = min(n_test, start + chunk)
            test.write(scaled(raw["test_images"], start, stop), test_labels[start:stop])
    return {split: (count, split_paths(prepared_dir, split)[0])
            for split, count in (("train", len(train_idx)), ("val", len(val_idx)), ("test", n_test))}


@dataclass(frozen=True)
class IdxSource:
    """A downloaded IDX data set (`<raw_dir>/<name>/`, the download stage's output): the source of mnist and
    fashion_mnist. Raw images are read, scaled and written a chunk at a time: any size of data set fits."""

    dataset: DatasetSpec
    writes_manifest: ClassVar[bool] = False

    def prepare(self, path: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
        spec = prepared_spec(self.dataset, cfg)
        written = write_splits(open_raw(path, self.dataset), cfg, prepared_dir, spec)
        for split, (count, images) in written.items():
            progress.say(f"preprocess: {split}: {count} images -> {images}")
        return spec
