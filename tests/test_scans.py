"""Scans of real digits (tests/scankit.py): never refused, rarely warned, classified as well as the originals.

The held-out slice (MNIST test digits 5000-5999) was not looked at while imageprep was tuned on 0-1999.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scankit
from PIL import Image, ImageFilter

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.inference.imageprep import (
    MAX_STROKE,
    crop_to_ink,
    fit_background,
    fit_to_box,
    prepare_array,
    prepare_with_warnings,
    read_image,
    stroke_width,
    thin_strokes,
    to_ink,
)

# The most of the held-out scans that may draw a warning, and how far their accuracy may fall below the originals'.
MAX_WARNED = 0.05
MAX_ACCURACY_DROP = 0.02


@pytest.fixture(scope="module")
def tuning_digits(mirror_root: Path) -> tuple[np.ndarray, np.ndarray]:
    return scankit.mnist_test_slice(mirror_root, range(0, 20))


def marker_scan(digit: np.ndarray, side: int = 64, pen: int = 7) -> np.ndarray:
    """White marker on black, tightly framed: the strokes (and their blurred edges) cover about half the picture."""
    picture = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    picture = picture.filter(ImageFilter.GaussianBlur(1.5)).filter(ImageFilter.MaxFilter(pen))
    return np.clip(np.asarray(picture, np.float64) * 2.0, 0.0, 255.0)


def test_wide_strokes_covering_half_a_tight_scan_are_not_blank(tuning_digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Where the strokes and their soft edges cover half the picture, the median distance from the paper level
    is ink, not paper noise: taken for noise, it made the ink stand out by under 5 'deviations' (blank)."""
    images, _ = tuning_digits
    for i, digit in enumerate(images):
        picture = marker_scan(digit)
        covered = float((picture > 25).mean())
        background = fit_background(picture)
        prepared, warnings = prepare_with_warnings(picture, f"marker{i}.png")
        assert background.noise < 1.5, (i, covered, background)
        assert prepared.shape == (28, 28) and prepared.max() == 255, i
        assert warnings == [], warnings
    assert max(float((marker_scan(d) > 25).mean()) for d in images) > 0.45  # the case that was refused


def test_scanner_edge_line_is_not_part_of_the_digit(tuning_digits: tuple[np.ndarray, np.ndarray]) -> None:
    """A grey line along one edge, touching the digit's soft edge or not, is dropped: the digit comes out as it
    does without it, instead of shrunk into a crop that reaches the edge."""
    images, _ = tuning_digits
    for i, digit in enumerate(images[:10]):
        paper = 255.0 - np.asarray(Image.fromarray(digit).resize((84, 84), Image.Resampling.BICUBIC), np.float64)
        clean = prepare_array(paper)
        for edge in range(4):
            lined = np.rot90(paper, edge).copy()
            lined[:2] = 150.0
            prepared, warnings = prepare_with_warnings(np.rot90(lined, -edge), "lined.png")
            assert warnings == [] and np.array_equal(prepared, clean), (i, edge)


def test_marker_strokes_are_thinned_closer_to_the_original_and_mnist_strokes_kept(
    tuning_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Each marker digit (strokes about twice MNIST's) comes out closer to its prepared original with its strokes
    thinned than without (measured on these 20: 32 of 255 on average without, 22 with); an MNIST digit at its own
    size is left as it is, whatever its strokes."""
    images, _ = tuning_digits
    without, thinned = [], []
    for digit in images:
        crop = crop_to_ink(to_ink(marker_scan(digit), "marker"))
        original = prepare_array(digit).astype(int)
        assert stroke_width(crop) > MAX_STROKE
        without.append(np.abs(fit_to_box(crop, "marker").astype(int) - original).mean())
        thinned.append(np.abs(fit_to_box(thin_strokes(crop), "marker").astype(int) - original).mean())
        mnist = crop_to_ink(to_ink(digit.astype(np.float64), "digit"))
        assert thin_strokes(mnist) is mnist
    assert all(t < w for t, w in zip(thinned, without, strict=True)), (thinned, without)
    assert np.mean(thinned) < 0.8 * np.mean(without)


def test_scans_are_the_same_bytes_every_time(tuning_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = tuning_digits
    first = [scankit.scan(d, i) for i, d in enumerate(images)]
    assert first == [scankit.scan(d, i) for i, d in enumerate(images)]
    assert {s.suffix for s in first} == {".png", ".jpg"}
    for s in first:
        assert read_image(io.BytesIO(s.data)).shape[0] >= 64, s.recipe


@pytest.fixture(scope="module")
def models(mirror_root: Path) -> list[Any]:
    """The tutorial MLP trained with each of scankit.SEEDS: the accuracy gap is their mean, not one draw."""
    return [scankit.train_model(mirror_root, seed) for seed in scankit.SEEDS]


@pytest.mark.slow
def test_held_out_scans_are_never_refused_rarely_warned_and_classified_as_well_as_the_originals(
    mirror_root: Path, models: list[Any]
) -> None:
    measured = scankit.measure(mirror_root, scankit.HELD_OUT, models)
    print(f"\n{measured.count} held-out scans: {len(measured.refused)} refused, {len(measured.warned)} warned; "
          f"accuracy {measured.scan_accuracy:.4f} (originals {measured.original_accuracy:.4f}), gap per seed "
          f"{measured.gaps} images, mean {measured.mean_gap_points:.2f} points")
    assert measured.original_accuracy > 0.93  # the models themselves trained
    assert measured.refused == []
    assert len(measured.warned) <= MAX_WARNED * measured.count, measured.warned
    # The mean over the seeds, as an accuracy target is met. Measured: gaps 20, 20, 20, 15, 19 images of 1,000
    # (mean 1.88 points); one seed alone sits at the limit, and runs differ by an image or two.
    assert measured.mean_gap_points <= 100 * MAX_ACCURACY_DROP, measured


@pytest.mark.parametrize("shape", [(500, 500), (300, 800)])
def test_a_hairline_along_the_edge_is_one_line_of_error_not_a_crash(shape: tuple[int, int]) -> None:
    """A white page with one dark row at the top: the row is all there is, too thin to measure or to scale."""
    picture = np.full(shape, 255.0)
    picture[0] = 0.0
    with pytest.raises(PipelineError) as raised:
        prepare_array(picture, "page.png")
    assert str(raised.value) == "page.png: blank image: no ink left after scaling to 20 pixels"
