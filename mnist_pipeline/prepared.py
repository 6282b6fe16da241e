"""The prepared splits: the one module that writes and reads `data/prepared/{x,y}_<split>.npy`
and the description of what they hold, `data/prepared.json`.

Preprocess saves each split here and describes the images (size, colour channels, class names) in a
`PreparedSpec`; train, evaluate and predict-sample load both here, so the models and every picture take
their shapes and class names from the data, and no other module knows file names, dtypes or shapes.
Splits are written chunk by chunk (`split_writer`) and can be read memory-mapped (`load_split(mmap=True)`),
so a data set never has to fit in memory twice, or at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from mnist_pipeline.core.datasets import DatasetSpec
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, atomic_path, load_npy, open_regular, save_json

SPLITS = ("train", "val", "test")
IMAGES_DTYPE = np.float32
MAX_CLASSES = 1000
# Bytes of images checked at a time when a split is streamed: bounded memory whatever the split's size.
CHECK_BYTES = 32 << 20


@dataclass(frozen=True)
class PreparedSpec:
    """What the prepared arrays hold: `image_shape` (rows, cols) with `channels` colour channels per pixel,
    flattened to `n_pixels` values per row, and labels 0..n_classes-1 named by `class_names`."""

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int]
    channels: int = 1
    # The lowest and highest value preprocess's scaling can give a pixel (x / scale - offset for x in 0-255):
    # a value outside, finite or not, is no pixel preprocess wrote. None: not known (no check).
    pixel_range: tuple[float, float] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_pixels(self) -> int:
        """Length of one flattened image, as the prepared arrays hold it (rows, then columns, then channels)."""
        return self.image_shape[0] * self.image_shape[1] * self.channels

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """One image as a convolution sees it: (rows, cols, channels)."""
        return (*self.image_shape, self.channels)

    @property
    def labels_dtype(self) -> np.dtype:
        """uint8 up to 256 classes (MNIST's own label bytes), uint16 beyond."""
        return np.dtype(np.uint8 if self.n_classes <= 256 else np.uint16)


def idx_spec(dataset: DatasetSpec) -> PreparedSpec:
    """An IDX data set as preprocess prepares it: its own image size, grayscale, its class names."""
    return PreparedSpec(dataset.name, dataset.class_names, dataset.image_shape, channels=1)


def spec_path(prepared_dir: str | os.PathLike[str]) -> Path:
    """`data/prepared` -> `data/prepared.json`: beside the arrays, a second output of preprocess."""
    folder = Path(prepared_dir)
    return folder.with_name(folder.name + ".json")


def split_paths(prepared_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Where a split's images and labels live; dvc.yaml names the same files as deps."""
    folder = Path(prepared_dir)
    return folder / f"x_{split}.npy", folder / f"y_{split}.npy"


def split_sha256(prepared_dir: str | os.PathLike[str], split: str) -> str:
    """sha256 over a split's image file, then its label file: two results pair up only on the same arrays."""
    digest = hashlib.sha256()
    for path in split_paths(prepared_dir, split):
        with open_regular(path) as f:
            hashlib.file_digest(f, lambda: digest)
    return digest.hexdigest()


def save_spec(prepared_dir: str | os.PathLike[str], spec: PreparedSpec) -> Path:
    path = spec_path(prepared_dir)
    save_json(path, {"name": spec.name, "class_names": list(spec.class_names),
                     "image_shape": list(spec.image_shape), "channels": spec.channels,
                     "pixel_range": list(spec.pixel_range) if spec.pixel_range else None})
    return path


def _refuse(path: Path, expected: str) -> PipelineError:
    return PipelineError(f"{path}: expected {expected} (rerun preprocess: dvc repro -f -s preprocess)")


def load_spec(prepared_dir: str | os.PathLike[str]) -> PreparedSpec:
    """The description preprocess wrote, checked field by field."""
    path = spec_path(prepared_dir)
    try:
        with open_regular(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except NotRegularFile:
        raise _refuse(path, "a regular JSON file") from None
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run the stage that writes it: dvc repro preprocess)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _refuse(path, f"JSON describing the prepared data ({e})") from None
    if not isinstance(data, dict) or set(data) != {"name", "class_names", "image_shape", "channels", "pixel_range"}:
        raise _refuse(path, "an object with exactly name, class_names, image_shape, channels and pixel_range")
    names, shape, channels = data["class_names"], data["image_shape"], data["channels"]
    if (not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES
            or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
        raise _refuse(path, f"class_names: a list of 2 to {MAX_CLASSES} distinct non-empty strings")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise _refuse(path, "image_shape: [rows, cols], two positive integers")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise _refuse(path, "channels: 1 (grayscale) or 3 (RGB)")
    span = data["pixel_range"]
    if span is not None and not (isinstance(span, list) and len(span) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in span)
            and span[0] <= span[1]):
        raise _refuse(path, "pixel_range: [lowest, highest], two finite numbers, or null")
    pixel_range = (float(span[0]), float(span[1])) if span is not None else None
    return PreparedSpec(str(data["name"]), tuple(names), (shape[0], shape[1]), channels, pixel_range)


class SplitWriter:
    """Appends chunks of one split to its two .npy files, whose headers were written for `n_images` rows."""

    def __init__(self, x_file: IO[bytes], y_file: IO[bytes], x_path: Path, n_images: int, spec: PreparedSpec):
        self._x, self._y, self._x_path = x_file, y_file, x_path
        self._spec, self.expected, self.written = spec, n_images, 0

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.ascontiguousarray(images, dtype=IMAGES_DTYPE)
        if images.ndim != 2 or images.shape[1] != self._spec.n_pixels or len(images) != len(labels):
            raise ValueError(f"a chunk of shape {images.shape} with {len(labels)} labels for {self._x_path}")
        if not np.isfinite(images).all():
            raise PipelineError(f"{self._x_path}: refusing to write images with values that are not finite "
                                "(NaN or infinity): check preprocess.scale and preprocess.offset")
        if len(labels) and int(np.max(labels)) >= self._spec.n_classes:
            raise ValueError(f"label {int(np.max(labels))} for {self._spec.n_classes} classes")
        if self.written + len(images) > self.expected:
            raise ValueError(f"more than the {self.expected} images announced for {self._x_path}")
        self._x.write(images.tobytes())
        self._y.write(np.ascontiguousarray(labels, dtype=self._spec.labels_dtype).tobytes())
        self.written += len(images)


def _write_header(f: IO[bytes], shape: tuple[int, ...], dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)


@contextlib.contextmanager
def split_writer(
    prepared_dir: str | os.PathLike[str], split: str, n_images: int, spec: PreparedSpec
) -> Iterator[SplitWriter]:
    """Stream one split into place: float32 images (N, n_pixels) and integer labels (N,), chunk by chunk.

    Both files appear only when the block ends with exactly `n_images` rows written (each renamed into
    place), so a failure or a kill part-way leaves the previous files. Memory stays at one chunk.
    """
    x_path, y_path = split_paths(prepared_dir, split)
    try:
        # Entered y before x, so left x before y: the images are renamed into place first, then the labels.
        with (atomic_path(y_path) as y_tmp, atomic_path(x_path) as x_tmp,
              open(x_tmp, "wb") as x_file, open(y_tmp, "wb") as y_file):
            _write_header(x_file, (n_images, spec.n_pixels), np.dtype(IMAGES_DTYPE))
            _write_header(y_file, (n_images,), spec.labels_dtype)
            writer = SplitWriter(x_file, y_file, x_path, n_images, spec)
            yield writer
            if writer.written != n_images:
                raise ValueError(f"{writer.written} of the {n_images} images announced for {x_path} were written")
    except OSError as e:  # a full disk, a read-only folder, a file where the folder should be
        raise PipelineError(f"{x_path}: cannot write ({e.strerror or e}); the previous file, if any, "
                            "is unchanged") from None


def save_split(
    prepared_dir: str | os.PathLike[str], split: str, images: np.ndarray, labels: np.ndarray, spec: PreparedSpec
) -> Path:
    """Write one split held in memory (the whole split as one chunk)."""
    with split_writer(prepared_dir, split, len(labels), spec) as writer:
        writer.write(images, labels)
    return split_paths(prepared_dir, split)[0]


def over_budget(budget_mb: int, prepared_dir: str | os.PathLike[str]) -> bool:
    """The one decision of `train.memory_budget_mb`, taken by the train stage before it reads any image: whether
    the training and validation images together take more. Then they stay on disk, memory-mapped, and
    training streams them (`train_model(streamed=True)`)."""
    return nbytes(prepared_dir, "train", "val") > budget_mb << 20


def nbytes(prepared_dir: str | os.PathLike[str], *splits: str) -> int:
    """Bytes the splits' images take as arrays (their .npy headers' shape and dtype), without reading them."""
    total = 0
    for split in splits:
        try:
            with open_regular(split_paths(prepared_dir, split)[0]) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
        except (OSError, ValueError, NotRegularFile):  # missing or not an array: loading it says so, in its own words
            continue
        total += math.prod(shape) * dtype.itemsize
    return total


def load_split(
    prepared_dir: str | os.PathLike[str], split: str, spec: PreparedSpec, min_images: int = 1, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, n_pixels) float32 and labels (N,) of one split, checked against the spec.

    Pixels must be finite and labels name one of the spec's classes: a NaN that got into the arrays
    would otherwise train, evaluate and exit 0 with a meaningless result. With `mmap` the images stay
    on disk (read-only, memory-mapped) and the checks stream over them a chunk at a time.
    """
    x_path, y_path = split_paths(prepared_dir, split)
    x = load_npy(x_path, IMAGES_DTYPE, 2, (spec.n_pixels,), mmap=mmap)
    y = load_npy(y_path, spec.labels_dtype, 1)
    if len(x) != len(y):
        raise PipelineError(f"{y_path}: {len(y)} labels for {len(x)} images in {x_path}")
    if len(y) < min_images:
        raise PipelineError(f"{x_path}: {len(y)} images: expected at least {min_images} in the {split} split")
    if len(y) and int(y.max()) >= spec.n_classes:
        raise PipelineError(f"{y_path}: labels must be 0-{spec.n_classes - 1}, found {int(y.max())}")
    step = check_rows(x)
    low, high = (np.float32(v) for v in spec.pixel_range) if spec.pixel_range else (None, None)
    bad = outside = 0
    extreme = np.float32(0)
    for i in range(0, len(x), step):  # one pass: finite, and within the range the scaling gives
        rows = read_rows(x, i, i + step)
        bad += int(np.count_nonzero(~np.isfinite(rows)))
        if low is not None and not bad and (rows.min() < low or rows.max() > high):
            wrong = rows[(rows < low) | (rows > high)]
            outside += wrong.size
            extreme = max(extreme, wrong[np.argmax(np.abs(wrong))], key=abs)
    if bad:
        raise PipelineError(f"{x_path}: {bad} pixel values are not finite (NaN or infinity): expected finite "
                            "numbers (rerun preprocess: dvc repro -f -s preprocess)")
    if outside:
        raise PipelineError(f"{x_path}: {outside} pixel values outside [{low:g}, {high:g}] (one is {extreme:g}), "
                            "the range preprocess's scaling gives: expected values preprocess wrote (rerun "
                            "preprocess: dvc repro -f -s preprocess)")
    return x, y



def check_rows(images: np.ndarray) -> int:
    """Rows per chunk when a split is checked or copied chunk by chunk: about CHECK_BYTES whatever the image size."""
    row_bytes = max(1, images.dtype.itemsize * int(np.prod(images.shape[1:])))
    return max(1, CHECK_BYTES // row_bytes)


def read_rows(images: np.ndarray, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Images [start, stop) of a split, copied into memory (into `out` when given).

    From a split loaded with `mmap=True` the rows are read from the file with a positioned read, not
    through the map: pages read through a map stay in the process's resident memory while it is
    mapped, so one pass over a big split would count as loading it whole. Read this way they pass
    through the page cache only, and a pass over any size of split needs one chunk of memory.
    """
    stop = max(0, min(stop, len(images)))
    start = max(0, min(start, stop))
    shape = (stop - start, *images.shape[1:])
    if out is None:
        out = np.empty(shape, images.dtype)
    elif out.shape != shape or out.dtype != images.dtype or not out.flags.c_contiguous:
        raise ValueError(f"read_rows: out is {out.dtype} {out.shape}, rows {start}-{stop} are {images.dtype} {shape}")
    mapped = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.flags.c_contiguous
    if not mapped or images.filename is None or stop == start:  # in memory, a view of a map, or no rows
        out[...] = images[start:stop]
        return out
    row_bytes = images.dtype.itemsize * int(np.prod(images.shape[1:]))
    buffer = memoryview(out).cast("B")
    with open(images.filename, "rb") as f:
        f.seek(images.offset + start * row_bytes)
        got = f.readinto(buffer)
    if got != len(buffer):
        raise PipelineError(f"{images.filename}: ended after {got} of the {len(buffer)} bytes of rows {start}-{stop}: "
                            "the file changed while it was being read (rerun the stage)")
    return out
