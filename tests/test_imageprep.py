"""imageprep: user pictures become the 28x28 images MNIST would have made of them.

Real MNIST test digits are written out as PNG and JPEG in both polarities, other sizes, colour and
with transparency; preparing the file must give back (nearly) the original array. No model needed:
test_predict_cli.py measures what these differences cost in accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.inference.imageprep import CENTRE, expand_paths, prepare_array, prepare_file, read_image
from mnist_pipeline.sources.idx import read_idx

N_IMAGES = 300


def _grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a)


def _inverted(a: np.ndarray) -> Image.Image:
    return Image.fromarray(255 - a)


def _padded(a: np.ndarray) -> Image.Image:
    """Dark ink off-centre on a white 40x60 (portrait) canvas."""
    canvas = np.full((60, 40), 255, np.uint8)
    canvas[25:53, 4:32] = 255 - a
    return Image.fromarray(canvas)


def _colour(a: np.ndarray) -> Image.Image:
    """Blue ink on cream paper, 84x84 RGB."""
    ink = a[..., None] / 255.0
    rgb = np.array([250, 240, 200]) * (1 - ink) + np.array([20, 30, 120]) * ink
    return Image.fromarray(rgb.astype(np.uint8)).resize((84, 84), Image.Resampling.BICUBIC)


def _transparent(a: np.ndarray) -> Image.Image:
    """Black ink on a transparent canvas, as drawing apps export it."""
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = a
    return Image.fromarray(rgba)


# name -> (file suffix, picture maker, save options): each a way a user's digit may arrive.
VARIANTS: dict[str, tuple[str, Callable[[np.ndarray], Image.Image], dict]] = {
    "light-on-dark 28x28 png": (".png", _grey, {}),
    "dark-on-light 28x28 png": (".png", _inverted, {}),
    "dark-on-light 28x28 jpeg": (".jpg", _inverted, {"quality": 90}),
    "light-on-dark 56x56 png": (".png", lambda a: _grey(a).resize((56, 56), Image.Resampling.BICUBIC), {}),
    "dark-on-light 100x100 png": (".png", lambda a: _inverted(a).resize((100, 100), Image.Resampling.LANCZOS), {}),
    "dark-on-light 40x60 padded png": (".png", _padded, {}),
    "colour 84x84 png": (".png", _colour, {}),
    "colour 84x84 jpeg": (".jpg", _colour, {"quality": 75}),
    "transparent 28x28 png": (".png", _transparent, {}),
}


def write_variants(images: np.ndarray, folder: Path) -> dict[str, list[Path]]:
    """Every image in every variant: `folder/<variant index>/<image index>.<suffix>`."""
    written: dict[str, list[Path]] = {}
    for v, (name, (suffix, make, options)) in enumerate(VARIANTS.items()):
        sub = folder / f"v{v}"
        sub.mkdir(parents=True)
        written[name] = []
        for i, image in enumerate(images):
            path = sub / f"{i:05d}{suffix}"
            make(image).save(path, **options)
            written[name].append(path)
    return written


def mnist_test(mirror_root: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(mirror_root / "mnist" / TEST_IMAGES, "images")[:count]
    labels = read_idx(mirror_root / "mnist" / TEST_LABELS, "labels")[:count]
    return images, labels


@pytest.fixture(scope="module")
def originals(mirror_root: Path) -> np.ndarray:
    return mnist_test(mirror_root, N_IMAGES)[0]


@pytest.fixture(scope="module")
def variant_files(originals: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_variants(originals, tmp_path_factory.mktemp("variants"))


def test_mnist_digits_come_back_unchanged(originals: np.ndarray) -> None:
    """MNIST digits are already prepared: preparing them again changes little (measured 0.14 of 255)."""
    prepared = np.stack([prepare_array(image) for image in originals])
    difference = np.abs(prepared.astype(int) - originals.astype(int))
    assert difference.mean() < 0.5, f"mean abs difference {difference.mean():.3f}"
    assert (difference.max(axis=(1, 2)) == 0).mean() > 0.6  # most come back bit for bit


def test_polarity_does_not_matter(originals: np.ndarray) -> None:
    for image in originals[:50]:
        np.testing.assert_array_equal(prepare_array(255 - image.astype(np.float64)), prepare_array(image))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_prepares_close_to_the_original(
    name: str, originals: np.ndarray, variant_files: dict[str, list[Path]]
) -> None:
    prepared = np.stack([prepare_file(path) for path in variant_files[name]])
    assert prepared.shape == (N_IMAGES, 28, 28) and prepared.dtype == np.uint8
    difference = np.abs(prepared.astype(int) - originals.astype(int)).mean()
    print(f"{name}: mean abs difference from the original {difference:.2f} / 255")
    # Measured on these 300: 0.08 (as-is) to 10.6 (56x56). For scale: the same digits shifted by one
    # pixel differ by 16.4, a different digit by 40, the inverted digit by 242.
    assert difference < 12, f"{name}: mean abs difference {difference:.2f}"


def test_aspect_ratio_kept_and_longer_side_is_20() -> None:
    tall = np.zeros((300, 100))
    tall[50:250, 40:60] = 255  # a "1": 200 x 20 ink
    wide = tall.T.copy()
    for picture, (rows, cols) in ((tall, (20, 2)), (wide, (2, 20))):
        prepared = prepare_array(picture)
        ink_rows = np.flatnonzero(prepared.any(axis=1))
        ink_cols = np.flatnonzero(prepared.any(axis=0))
        assert (len(ink_rows), len(ink_cols)) == (rows, cols)


def test_centred_by_centre_of_mass() -> None:
    picture = np.full((200, 300), 230.0)  # light paper
    picture[20:60, 200:280] = 10  # dark ink in a corner
    prepared = prepare_array(picture).astype(np.float64)
    mass = prepared.sum()
    row = (prepared.sum(axis=1) * np.arange(28)).sum() / mass
    col = (prepared.sum(axis=0) * np.arange(28)).sum() / mass
    assert abs(row - CENTRE) <= 0.5 and abs(col - CENTRE) <= 0.5, (row, col)
    assert prepared.max() == 255  # contrast is stretched as in MNIST: paper grey 230 is not ink 255


def test_sixteen_bit_png(originals: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(originals[0].astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(prepare_file(path), prepare_array(originals[0]))


def test_errors_name_the_file(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 200).save(blank)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.arange(10000, dtype=np.uint8).reshape(100, 100)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    gif = tmp_path / "anim.gif"
    Image.new("L", (28, 28), 0).save(gif)
    cases = {
        tmp_path / "missing.png": "file not found",
        blank: "blank image",
        text: "not an image",
        truncated: "unreadable image",
        gif: "blank image",  # a GIF is read now, as folder data sets read it: this one holds no ink
    }
    for path, expected in cases.items():
        with pytest.raises(PipelineError) as raised:
            prepare_file(path)
        message = str(raised.value)
        assert message.startswith(str(path)) and expected in message and "\n" not in message, message


def test_directories_expand_to_sorted_images_of_every_format_hidden_names_passed_over(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "c.jpeg", "readme.txt", "d.bmp", "e.TIFF", "e.tif", "f.gif", "g.webp",
                 ".hidden.png", "._a.JPG"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in expand_paths([str(tmp_path)])] == ["a.JPG", "b.png", "c.jpeg", "d.bmp", "e.TIFF", "e.tif",
                                                               "f.gif", "g.webp"]
    assert expand_paths(["x.png", str(tmp_path / "b.png")]) == [Path("x.png"), tmp_path / "b.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match="no image files"):
        expand_paths([str(empty)])


def test_read_image_transparent_light_ink(tmp_path: Path) -> None:
    """White ink on a transparent canvas lands on black, so it is not lost on a white background."""
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[8:20, 12:16, 3] = 255
    path = tmp_path / "white.png"
    Image.fromarray(rgba).save(path)
    grey = read_image(path)
    assert grey[10, 13] == 255 and grey[0, 0] == 0
