"""Scan-like pictures of real MNIST test digits, with their labels: what a flatbed scan of a written digit looks like.

Each 28x28 digit is scaled up to 64-128 pixels (bicubic), blurred (Gaussian, radius 0.5-2.5), its strokes
made thin (MinFilter 3), kept, or thick (MaxFilter 3, 5 or 7, the wide strokes of a marker), its contrast
raised so the strokes' cores saturate as a clean scan's do, and written white on black or black on white.
Some get a margin (blank paper on some sides, up to 60 pixels) or a thin border (a 1-3 pixel grey line at
one edge, where the scanner's lid or the sheet's edge shows). A third are saved as JPEG (quality 50-95),
the rest as PNG. One seed fixes every choice: the same index always gives the same bytes.

Hold-out: imageprep's thresholds were tuned only on TUNING (test-set indices 0-1999); HELD_OUT (5000-5999)
is only measured (tests/test_scans.py, benchmarks/scan_digits.py), never looked at while tuning: its
numbers alone, not its pictures, were read after each round of tuning.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.sources.idx import read_idx

TUNING = range(0, 2000)
HELD_OUT = range(5000, 6000)
SEED = 20261206


@dataclass(frozen=True)
class Scan:
    """One scan's file bytes and how it was made (for messages)."""

    index: int
    data: bytes
    suffix: str
    recipe: str


def mnist_test_slice(mirror_root: Path, indices: range) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test images and labels at `indices`, read with the project's IDX reader."""
    images = read_idx(mirror_root / "mnist" / TEST_IMAGES, "images")[indices.start : indices.stop]
    labels = read_idx(mirror_root / "mnist" / TEST_LABELS, "labels")[indices.start : indices.stop]
    return images, labels


def scan(digit: np.ndarray, index: int) -> Scan:
    """The scan of one light-on-black 28x28 digit; its choices come from SEED and `index` alone."""
    rng = np.random.default_rng([SEED, index])
    side = int(rng.integers(64, 129))
    picture = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    stroke = str(rng.choice(["thin", "plain", "thick 3", "thick 5", "thick 7"]))
    if stroke == "thin":
        picture = picture.filter(ImageFilter.MinFilter(3))
    elif stroke.startswith("thick"):
        picture = picture.filter(ImageFilter.MaxFilter(int(stroke.split()[1])))
    gain = float(rng.uniform(1.0, 2.0))  # a scanner's levels: the strokes' cores saturate
    ink = np.clip(np.asarray(picture, np.float64) * gain, 0.0, 255.0) / 255.0
    paper, pen = (0.0, float(rng.uniform(200, 255))) if rng.random() < 0.5 else (float(rng.uniform(225, 255)),
                                                                                  float(rng.uniform(0, 60)))
    pixels = paper + (pen - paper) * ink
    polarity = "white on black" if pen > paper else "black on white"
    frame = str(rng.choice(["none", "none", "margin", "border"]))
    if frame == "margin":
        top, bottom, left, right = (int(m) for m in rng.integers(0, 61, size=4))
        pixels = np.pad(pixels, ((top, bottom), (left, right)), constant_values=paper)
    elif frame == "border":
        width = int(rng.integers(1, 4))
        level = paper + (pen - paper) * float(rng.uniform(0.2, 0.5))
        edge = int(rng.integers(0, 4))
        pixels = np.rot90(pixels, edge).copy()
        pixels[:width] = level
        pixels = np.rot90(pixels, -edge).copy()
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    data = io.BytesIO()
    if rng.random() < 1 / 3:
        quality = int(rng.integers(50, 96))
        image.save(data, format="JPEG", quality=quality)
        suffix, kind = ".jpg", f"JPEG q{quality}"
    else:
        image.save(data, format="PNG")
        suffix, kind = ".png", "PNG"
    recipe = f"{side}px {stroke} strokes, {polarity}, {frame}, {kind}"
    return Scan(index, data.getvalue(), suffix, recipe)


def scans(mirror_root: Path, indices: range) -> tuple[list[Scan], np.ndarray, np.ndarray]:
    """Every digit at `indices` as a scan, with the original 28x28 images and the labels."""
    images, labels = mnist_test_slice(mirror_root, indices)
    return [scan(image, index) for index, image in zip(indices, images, strict=True)], images, labels


@dataclass(frozen=True)
class Measured:
    """What preparing the scans of one slice gave, against the same digits' 28x28 originals, classified by
    one model per training seed: an accuracy gap is a mean over seeds, not one seed's draw."""

    count: int
    refused: list[str]
    warned: list[str]
    scans_right: list[int]  # per seed: prepared scans classified correctly (a refused one counts as wrong)
    originals_right: list[int]  # per seed: the same digits' 28x28 originals classified correctly

    @property
    def gaps(self) -> list[int]:
        """Per seed, how many more originals than scans were classified correctly."""
        return [o - s for s, o in zip(self.scans_right, self.originals_right, strict=True)]

    @property
    def mean_gap_points(self) -> float:
        return 100 * sum(self.gaps) / len(self.gaps) / self.count

    @property
    def scan_accuracy(self) -> float:
        return sum(self.scans_right) / len(self.scans_right) / self.count

    @property
    def original_accuracy(self) -> float:
        return sum(self.originals_right) / len(self.originals_right) / self.count


SEEDS = range(5)


def train_model(mirror_root: Path, seed: int = 0, epochs: int = 3) -> Any:
    """The tutorial's MLP (784-64-64-10) on MNIST's 60,000 training images, with this seed."""
    from mnist_pipeline.sources.splits import scale_images
    from mnist_pipeline.train.model_types.mlp import build_mlp
    from mnist_pipeline.train.tensorflow_runtime import keras

    x_train = scale_images(read_idx(mirror_root / "mnist" / TRAIN_IMAGES, "images"), 255.0, 0.5)
    y_train = read_idx(mirror_root / "mnist" / TRAIN_LABELS, "labels")
    keras.utils.set_random_seed(seed)
    model = build_mlp([64, 64], "relu", 0.0, 784, 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def measure(mirror_root: Path, indices: range, models: list[Any]) -> Measured:
    """Prepare every scan of `indices` as mnist-predict does; classify the prepared scans and the originals
    with each model."""
    from mnist_pipeline.core.errors import PipelineError
    from mnist_pipeline.inference.imageprep import prepare_with_warnings, read_image
    from mnist_pipeline.sources.splits import scale_images

    items, images, labels = scans(mirror_root, indices)
    prepared, refused, warned = [], [], []
    for item, original in zip(items, images, strict=True):
        name = f"{item.index:05d}{item.suffix} ({item.recipe})"
        try:
            image, warnings = prepare_with_warnings(read_image(io.BytesIO(item.data), name), name)
        except PipelineError as e:
            refused.append(str(e))
            image, warnings = np.zeros_like(original), []  # counted as a wrong answer below
        prepared.append(image)
        warned.extend(warnings)

    def right(model: Any, x: np.ndarray) -> int:
        return int(np.sum(model.predict(scale_images(x, 255.0, 0.5), verbose=0).argmax(1) == labels))

    stacked = np.stack(prepared)
    return Measured(len(items), refused, warned, [right(m, stacked) for m in models],
                    [right(m, images) for m in models])
