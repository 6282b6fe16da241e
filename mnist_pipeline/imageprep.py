"""Turn a user's picture of a digit into the 28x28 uint8 image MNIST would have made of it.

MNIST's recipe (LeCun et al.): light ink on a dark background, the ink cropped and scaled with
anti-aliasing so its longer side is 20 pixels, then centred in a 28x28 frame by centre of mass.
A model trained on MNIST only knows digits that look like that, so a photo or scan must go
through the same steps before it is scaled as preprocess scales the data set.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_pipeline.errors import PipelineError

FORMATS = ("PNG", "JPEG")
SUFFIXES = (".png", ".jpg", ".jpeg")
FRAME = 28
BOX = 20
# MNIST's mean centre of mass in pixel coordinates, measured on the 10,000 test images
# (row 13.99, column 14.01, standard deviation 0.29): not the geometric 13.5.
CENTRE = 14.0
# Ink must stand out from the background by this much (of 255), or the image counts as blank.
MIN_CONTRAST = 24.0
# Pixels fainter than this fraction of the brightest ink do not widen the crop: JPEG ringing
# and paper texture would otherwise make the bounding box the whole picture.
CROP_FRACTION = 0.1


def _greyscale(image: Image.Image) -> np.ndarray:
    """Luminance as float64 0-255; transparent areas become a background that contrasts with the ink."""
    if image.mode.startswith("I"):
        # 16-bit greyscale PNGs: Pillow's convert("L") would clip 0-65535 to 0-255 instead of rescaling.
        return np.asarray(image.convert("I"), dtype=np.float64) / 257.0
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return np.asarray(image.convert("L"), dtype=np.float64)
    pair = np.asarray(image.convert("LA"), dtype=np.float64)
    grey, alpha = pair[..., 0], pair[..., 1] / 255.0
    if alpha.min() == 1.0:
        return grey
    # A digit drawn on a transparent canvas: composite it onto white if the ink is dark, black if light.
    ink = float((grey * alpha).sum() / max(alpha.sum(), 1e-9))
    background = 255.0 if ink < 128 else 0.0
    return grey * alpha + background * (1.0 - alpha)


def read_image(
    path: str | os.PathLike[str] | io.BytesIO, name: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """A PNG or JPEG file as float64 greyscale (H, W), EXIF rotation applied; errors name the file.

    `max_pixels` is checked from the header, before any pixel is decoded: a small file can declare
    an image too large to hold in memory.
    """
    name = str(path) if name is None else name
    try:
        with Image.open(path, formats=FORMATS) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise PipelineError(f"{name}: {image.width}x{image.height} pixels: expected at most "
                                    f"{max_pixels:,} pixels")
            image = ImageOps.exif_transpose(image)
            image.load()
            return _greyscale(image)
    except FileNotFoundError:
        raise PipelineError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{name}: is a directory, expected a PNG or JPEG file") from None
    except UnidentifiedImageError:
        raise PipelineError(f"{name}: not a PNG or JPEG image") from None
    except Image.DecompressionBombError as e:
        raise PipelineError(f"{name}: refused: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Truncated or corrupt data after a valid header.
        raise PipelineError(f"{name}: unreadable image ({e})") from None


def to_ink(grey: np.ndarray, name: str) -> np.ndarray:
    """Light ink on a zero background, brightest ink at 255: inverted when the border is light."""
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    if np.median(border) > 127.5:
        grey = 255.0 - grey
        border = 255.0 - border
    ink = np.clip(grey - np.median(border), 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise PipelineError(f"{name}: blank image: no ink stands out from the background (expected a digit)")
    return ink * (255.0 / peak)


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the pixels brighter than CROP_FRACTION of the brightest."""
    rows = np.flatnonzero((ink > CROP_FRACTION * 255.0).any(axis=1))
    cols = np.flatnonzero((ink > CROP_FRACTION * 255.0).any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def centre_in_frame(digit: np.ndarray) -> np.ndarray:
    """Paste `digit` (at most BOX x BOX) into a FRAME x FRAME zero image with its centre of mass at CENTRE."""
    height, width = digit.shape
    mass = digit.sum()
    com_row = (digit.sum(axis=1) * np.arange(height)).sum() / mass
    com_col = (digit.sum(axis=0) * np.arange(width)).sum() / mass
    top = int(np.clip(round(CENTRE - com_row), 0, FRAME - height))
    left = int(np.clip(round(CENTRE - com_col), 0, FRAME - width))
    frame = np.zeros((FRAME, FRAME), dtype=digit.dtype)
    frame[top : top + height, left : left + width] = digit
    return frame


def prepare_array(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Any greyscale picture (H, W) of one digit -> the (28, 28) uint8 image MNIST would have made."""
    digit = crop_to_ink(to_ink(np.asarray(grey, dtype=np.float64), name))
    # Resample in 32-bit float: anti-aliased (Lanczos) without rounding to 8 bits twice.
    resized = ImageOps.contain(Image.fromarray(digit.astype(np.float32)), (BOX, BOX),
                               Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 255.0)
    if small.sum() == 0:
        raise PipelineError(f"{name}: blank image: no ink left after scaling to {BOX} pixels")
    return np.rint(centre_in_frame(small)).astype(np.uint8)


def prepare_file(path: str | os.PathLike[str]) -> np.ndarray:
    """read_image + prepare_array: a file on disk as a (28, 28) uint8 MNIST-style image."""
    return prepare_array(read_image(path), str(path))


def prepare_bytes(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """read_image + prepare_array for a picture held in memory (an upload): what prepare_file does for a file."""
    return prepare_array(read_image(io.BytesIO(data), name, max_pixels), name)


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given; a directory stands for its PNG and JPEG files, sorted by name."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not images:
                raise PipelineError(f"{path}: no PNG or JPEG files in this directory (expected *.png, *.jpg)")
            found.extend(images)
        else:
            found.append(path)
    return found
