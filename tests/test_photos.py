"""Photos of digits: real MNIST test digits made into the pictures a phone takes of a digit on paper.

Each digit is scaled up 5-8 times (bicubic) and written as dark-grey ink (60-110 levels below the
paper) on grey paper (140-200 of 255), placed anywhere in a 400x300 frame, shaded by a +-25-level
gradient in a random direction, with Gaussian noise of standard deviation 6; every other one is
saved as a JPEG. MNIST's recipe alone takes the noise and the shading for ink, crops the whole frame
and shrinks the digit to a speck; imageprep fits and removes the background first.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env
from PIL import Image
from test_imageprep import VARIANTS, mnist_test
from test_predict_cli import trained  # noqa: F401 (the same small model, trained once for this module)

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.inference.imageprep import (
    FLAT_NOISE,
    FLAT_SHADING,
    connected_components,
    crop_to_ink,
    fit_background,
    fit_to_box,
    halo_box,
    prepare_array,
    prepare_with_warnings,
    read_image,
    thin_strokes,
    to_ink,
)
from mnist_pipeline.sources.splits import scale_images

N_PHOTOS = 200
FRAME = (400, 300)  # width, height
# Measured on these 200 photos with the model of test_predict_cli.trained (1 epoch, 0.960 on the
# original arrays): 0.940 through `mnist-predict --json`, 1 warned;
# MNIST's recipe alone, before photos were handled, scored 0.115 on them.
PHOTO_SLACK = 0.05


def photo(digit: np.ndarray, rng: np.random.Generator, noise: float = 6.0, shade: float = 25.0,
          contrast: tuple[float, float] = (60.0, 110.0), size: tuple[int, int] = FRAME) -> np.ndarray:
    """A (height, width) uint8 photo of an MNIST digit (light-on-black 28x28) as dark ink on grey paper."""
    width, height = size
    side = round(28 * rng.uniform(5.0, 8.0))
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float64) / 255.0
    rows, cols = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0.0, 2 * np.pi)
    ramp = np.cos(angle) * (cols - width / 2) + np.sin(angle) * (rows - height / 2)
    picture = rng.uniform(140.0, 200.0) + shade * ramp / np.abs(ramp).max()
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    picture[top : top + side, left : left + side] -= rng.uniform(*contrast) * np.clip(ink, 0.0, 1.0)
    picture += rng.normal(0.0, noise, picture.shape)
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def digits(mirror_root: Path) -> tuple[np.ndarray, np.ndarray]:
    return mnist_test(mirror_root, N_PHOTOS)


def first_of(digits: tuple[np.ndarray, np.ndarray], label: int) -> np.ndarray:
    images, labels = digits
    return images[int(np.flatnonzero(labels == label)[0])]


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("noise, shade", [(6.0, 0.0), (0.0, 25.0), (6.0, 25.0)], ids=["noise", "shading", "both"])
def test_photo_of_a_three_prepares_like_the_clean_digit(
    digits: tuple[np.ndarray, np.ndarray], noise: float, shade: float
) -> None:
    """A dark-grey 3 on grey paper: noise of sd 6, or a +-25 shading alone, made MNIST's recipe crop the
    whole frame; prepared now, it differs from the clean 3 by 13-16 of 255 on average (measured), where
    a one-pixel shift of the clean 3 already differs by 21."""
    three = first_of(digits, 3)
    picture = photo(three, np.random.default_rng(3), noise=noise, shade=shade)
    old_crop = crop_to_ink(to_ink(picture.astype(np.float64), "three"))
    assert old_crop.shape[0] > 0.9 * FRAME[1] or old_crop.shape[1] > 0.9 * FRAME[0], old_crop.shape
    prepared, warnings = prepare_with_warnings(picture, "three")
    clean = prepare_array(three)
    assert warnings == []
    shifted = mean_difference(clean, np.roll(clean, 1, axis=1))
    difference = mean_difference(prepared, clean)
    print(f"photo vs clean 3: {difference:.1f}; one-pixel shift: {shifted:.1f}")
    assert difference < shifted, (difference, shifted)


def test_flat_pictures_keep_the_plain_recipe_and_photos_do_not(
    digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Every clean variant comes out of prepare_array exactly as MNIST's recipe alone makes it (strokes
    wider than MNIST's 75th percentile thinned and a soft edge kept outside the box), with no warning; their
    backgrounds measure at most 0.5 noise as PNG (the floor), 1.26 as small JPEGs, and at most 1.98 shading
    (these 60 digits). Every photo's is far above (noise 5.9 or more, shading 40 or more)."""
    images, _ = digits
    measured = []
    for suffix, make, options in VARIANTS.values():
        for i, image in enumerate(images[:60]):
            data = io.BytesIO()
            make(image).save(data, format="PNG" if suffix == ".png" else "JPEG", **options)
            grey = read_image(io.BytesIO(data.getvalue()))
            digit = thin_strokes(crop_to_ink(to_ink(grey, "digit")))
            plain = fit_to_box(digit, "digit", halo_box(digit))
            prepared, warnings = prepare_with_warnings(grey, "digit")
            assert warnings == [] and np.array_equal(prepared, plain), (suffix, i)
            background = fit_background(grey)
            measured.append((background.noise, background.shading, suffix == ".png"))
    noise, shading, png = np.array(measured).T
    print(f"clean variants: noise at most {noise[png == 1].max():.2f} (PNG), {noise.max():.2f} (JPEG); "
          f"shading at most {shading.max():.2f}")
    assert noise[png == 1].max() == 0.5 and noise.max() < 2 * FLAT_NOISE and shading.max() < FLAT_SHADING
    rng = np.random.default_rng(0)
    for image in images[:20]:
        for kind, picture in (("noise", photo(image, rng, shade=0.0)), ("shading", photo(image, rng, noise=0.0))):
            background = fit_background(picture.astype(np.float64))
            if kind == "noise":
                assert background.noise > 3 * FLAT_NOISE, background
            else:
                assert background.shading > 6 * FLAT_SHADING, background


@pytest.mark.slow
def test_photos_classified_nearly_as_well_as_the_clean_digits(
    trained: tuple[Path, float], digits: tuple[np.ndarray, np.ndarray], tmp_path: Path  # noqa: F811
) -> None:
    from mnist_pipeline.inference.onnx_model import load_model

    model_path, _ = trained
    images, labels = digits
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images):
        picture = Image.fromarray(photo(image, rng))
        if i % 2:
            picture.save(folder / f"{i:04d}.jpg", quality=85)
        else:
            picture.save(folder / f"{i:04d}.png")
    result = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline.inference.predict", "--json", "--model", str(model_path), str(folder)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)["predictions"]
    assert [Path(r["file"]).stem for r in records] == [f"{i:04d}" for i in range(N_PHOTOS)]
    photo_accuracy = float(np.mean([r["predicted"] for r in records] == labels))
    model = load_model(model_path, 784, 10)  # the ONNX model mnist-predict ran, run on the clean arrays
    clean_accuracy = float(np.mean(model.probabilities(scale_images(images, 255.0, 0.5)).argmax(1) == labels))
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    print(f"\n{N_PHOTOS} digits: clean arrays {clean_accuracy:.3f}, photos {photo_accuracy:.3f}, "
          f"{len(warned)} warned")
    assert clean_accuracy > 0.85  # the model itself trained
    assert photo_accuracy >= clean_accuracy - PHOTO_SLACK, (photo_accuracy, clean_accuracy)
    assert len(warned) <= N_PHOTOS // 20, warned


def dark_band(picture: np.ndarray, fraction: float) -> np.ndarray:
    """A dark edge (a table, a sleeve) across the bottom `fraction` of the photo."""
    out = picture.astype(np.float64)
    out[int(out.shape[0] * (1 - fraction)) :] -= 90
    return np.clip(out, 0, 255)


def ruled(picture: np.ndarray, darkness: float) -> np.ndarray:
    """Ruled paper: a line 2 pixels thick every 30 rows, `darkness` levels below the paper."""
    out = picture.astype(np.float64)
    out[::30] -= darkness
    out[1::30] -= darkness
    return np.clip(out, 0, 255)


def two_digits(left: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two digits of the same size side by side on one 600x300 photo."""
    picture = np.full((300, 600), 170.0)
    for digit, column in ((left, 20), (right, 400)):
        ink = np.asarray(Image.fromarray(digit).resize((150, 150), Image.Resampling.BICUBIC), np.float64) / 255
        picture[60:210, column : column + 150] -= 80 * np.clip(ink, 0, 1)
    return np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255)


def test_unsure_photos_are_prepared_with_a_warning(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """One line of doubts per unsure photo; faint ruled lines (15 or 30 levels) are no doubt and no harm."""
    three, seven = first_of(digits, 3), first_of(digits, 7)
    rng = np.random.default_rng(5)
    dim = photo(three, rng, shade=0.0, contrast=(35.0, 35.0))
    cases = {
        "dim.png": (dim, "dim.png: low contrast: the ink stands out only 6.6 times the background's noise, "
                         "paper texture may have been taken for ink"),
        "two.png": (two_digits(seven, three, rng),
                    "two.png: 2 separate marks of similar size (more than one digit?), kept the largest; "
                    "crop the photo around the digit"),
        "edge.png": (dark_band(photo(three, rng, shade=0.0), 0.4),
                     "edge.png: ink covers 45% of the picture (a shadow or a dark edge?); the ink runs from edge "
                     "to edge of the picture (a ruled line, a border or a table edge?); crop the photo around "
                     "the digit"),
        "ruled.png": (ruled(photo(three, np.random.default_rng(1), shade=10.0), 50.0),
                      "ruled.png: the ink runs from edge to edge of the picture (a ruled line, a border or a "
                      "table edge?); crop the photo around the digit"),
    }
    for name, (picture, expected) in cases.items():
        prepared, warnings = prepare_with_warnings(picture, name)
        assert warnings == [expected], warnings
        assert prepared.shape == (28, 28) and prepared.max() > 128
    # The dim 3 is still the 3; on faintly ruled paper (lines lighter than the ink) too.
    assert mean_difference(prepare_array(dim), prepare_array(three)) < 25
    for darkness in (15.0, 30.0):
        prepared, warnings = prepare_with_warnings(ruled(photo(three, np.random.default_rng(1), shade=10.0), darkness))
        assert warnings == [] and mean_difference(prepared, prepare_array(three)) < 20


@pytest.mark.parametrize("kind", ["noise", "shading", "noise and shading"])
def test_paper_without_a_digit_is_blank(kind: str) -> None:
    """Noise alone makes specks a few pixels wide and 4.5 deviations bright: no digit, one line."""
    rng = np.random.default_rng(1)
    cols = np.arange(400)[None, :].repeat(300, axis=0)
    picture = np.full((300, 400), 160.0)
    if "shading" in kind:
        picture += 25 * (cols - 200) / 200
    if "noise" in kind:
        picture += rng.normal(0, 6, picture.shape)
    with pytest.raises(PipelineError) as raised:
        prepare_array(np.clip(picture, 0, 255), "paper.png")
    assert str(raised.value) == "paper.png: blank image: no ink stands out from the background (expected a digit)"


def flood_fill_components(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """The reference: breadth-first search over 8 neighbours, one pixel at a time."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, component = deque([start]), set()
        while queue:
            r, c = queue.popleft()
            component.add((int(r), int(c)))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    n = (r + dr, c + dc)
                    if 0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1] and mask[n] and not seen[n]:
                        seen[n] = True
                        queue.append(n)
        found.append(component)
    return found


@pytest.mark.parametrize("density", [0.05, 0.3, 0.55, 0.9])
def test_connected_components_match_a_flood_fill(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((40, 60)) < density
    mask[10, :] = True  # one long run joining many
    labels, sizes = connected_components(mask)
    expected = sorted(flood_fill_components(mask), key=len, reverse=True)
    assert sorted(sizes.tolist(), reverse=True) == sizes.tolist() == [len(c) for c in expected]
    got = [{(int(r), int(c)) for r, c in zip(*np.nonzero(labels == k + 1), strict=True)} for k in range(len(sizes))]
    assert sorted(map(sorted, got)) == sorted(map(sorted, expected))
    assert (labels > 0).sum() == mask.sum()


def test_empty_mask_has_no_components() -> None:
    labels, sizes = connected_components(np.zeros((5, 7), dtype=bool))
    assert sizes.size == 0 and not labels.any()


def test_large_jpeg_is_decoded_reduced_and_large_png_refused(
    digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """A 16-megapixel phone photo: as JPEG it decodes at half size (12 MP limit), and still prepares as the 3."""
    three = first_of(digits, 3)
    small = photo(three, np.random.default_rng(2), size=(1000, 1000))
    big = Image.fromarray(small).resize((4000, 4000), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    grey = read_image(tmp_path / "big.jpg", max_pixels=12_000_000, shrink_jpeg=True)
    assert grey.shape == (2000, 2000)
    assert mean_difference(prepare_array(grey), prepare_array(three)) < 25
    for name in ("big.jpg", "big.png"):
        path = tmp_path / name
        with pytest.raises(PipelineError) as raised:
            read_image(path, max_pixels=12_000_000, shrink_jpeg=name.endswith(".png"))
        assert str(raised.value) == f"{path}: 4000x4000 pixels: expected at most 12,000,000 pixels"
