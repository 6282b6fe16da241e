"""Turn a user's picture of a digit into the 28x28 uint8 image MNIST would have made of it.

MNIST's recipe (LeCun et al.): light ink on a dark background, the ink cropped and scaled with
anti-aliasing so its longer side is 20 pixels, then centred in a 28x28 frame by centre of mass.
A model trained on MNIST only knows digits that look like that, so a photo or scan must go
through the same steps before it is scaled as preprocess scales the data set.

A photo adds what MNIST's scans never had: sensor noise and uneven lighting, which the plain
recipe would take for ink. When the background is not flat, it is fitted and subtracted, the ink
is separated from it by Otsu's threshold, and only the digit's connected strokes are kept
(prepare_with_warnings), with a warning when that separation is unsure.

A scan adds blur, a marker's wide strokes and the edge of the sheet: a line along the picture's edge is
not ink (edge_lines), strokes wider than most of MNIST's are thinned (thin_strokes), and the digit is
sized by where its ink is half bright, so a soft edge falls outside the 20 pixels (halo_box).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, open_regular
from mnist_pipeline.sources.formats import FORMAT_NAMES, FORMATS, SUFFIXES, is_picture_name

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
# A background flatter than this (robust standard deviation, and range of the fitted shading, of 255)
# is prepared by MNIST's recipe alone, exactly as before. MNIST's digits written as PNG measure 0.5
# (the floor) and at most 0.5; as 28x28 JPEGs up to about 1.5 and 2.0, the ringing around the strokes
# (tests/test_photos.py). Noisier or shaded pictures (photos) get the background removed.
FLAT_NOISE = 1.5
FLAT_SHADING = 6.0
# Strokes wider than this fraction of the digit's longer side (stroke_width) are thinned to it: the 75th
# percentile of MNIST's first 10,000 training digits (median 0.122, 95th percentile 0.197;
# `python benchmarks/scan_digits.py --strokes`). Only digits over twice BOX in the picture are thinned.
MAX_STROKE = 0.148
STROKE_SIDE = 80
# A digit larger than this (longer side, pixels) is scaled down to it before its strokes are measured and
# thinned: plenty for the 20 pixels it ends up, and erosion stays cheap on a 12-megapixel scan.
WORK_SIDE = 8 * BOX
# How far (longer side, output pixels) an MNIST digit spans at half its brightest ink (halo_box): 19.3 to
# 19.5, the median over MNIST's first 3,000 training digits scaled up 3 and 4 times (bicubic), as a user's
# larger picture of one would be; the rest of BOX is MNIST's anti-aliased edge.
HALF_EXTENT = 19.4
# Photos are analysed at most this many pixels on their longer side (the digit ends up 20 pixels).
PHOTO_SIDE = 1024
# Ink pixels stand out from the fitted background by at least this many noise standard deviations.
INK_SIGMAS = 4.0
# The ink must stand out by this many noise standard deviations, and its largest blob hold MIN_BLOB
# pixels, or the photo counts as blank (noise alone makes specks of a few pixels, 4.5 deviations
# bright); below UNSURE_SIGMAS a warning says that paper texture may have been taken for ink.
BLANK_SIGMAS = 5.0
MIN_BLOB = 20
UNSURE_SIGMAS = 7.0
# A digit has fewer pixels standing out than this fraction of the photo; more means a shadow or a dark edge.
MAX_INK_FRACTION = 0.3
# A separate blob at least this fraction of the digit's size may be a second digit.
RIVAL_FRACTION = 0.25
# Handwritten digits are rarely this much wider than tall (0.4% of MNIST's training digits): ink that
# is may be a ruled line or an edge joined to the digit, or several digits touching.
MAX_WIDTH_RATIO = 1.5
# Pieces of a stroke broken by the threshold: kept when at least this fraction of the largest piece
# and within NEAR_FRACTION of the digit's size from it.
PIECE_FRACTION = 0.02
NEAR_FRACTION = 0.3
# Rows (or columns) at the picture's edge with ink across LINE_COVER of their length, together at most
# EDGE_LINE of the picture thick, are the edge of the sheet or of a scanner's lid, not the digit.
LINE_COVER = 0.9
EDGE_LINE = 0.08


def _greyscale(image: Image.Image, name: str) -> np.ndarray:
    """Luminance as float64 0-255; transparent areas become a background that contrasts with the ink."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit greyscale PNGs: Pillow's convert("L") would clip 0-65535 to 0-255 instead of rescaling.
        return np.asarray(image.convert("I"), dtype=np.float64) / 257.0
    if image.mode.startswith("I") or image.mode == "F":
        # No fixed range maps signed or 32-bit values to 0-255: refused rather than clipped.
        raise PipelineError(f"{name}: {image.mode} pixels (signed, 32-bit or floating-point): expected an 8- or "
                            "16-bit image")
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


def _open_regular(path: str | os.PathLike[str], name: str) -> IO[bytes]:
    """files.open_regular, its refusals worded for a picture."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise PipelineError(f"{name}: file not found") from None
    except NotRegularFile as e:
        if stat.S_ISDIR(e.mode):
            raise PipelineError(f"{name}: is a directory, expected an image file") from None
        raise PipelineError(f"{name}: not a regular file ({e.kind}): expected an image file") from None
    except OSError as e:
        raise PipelineError(f"{name}: cannot open: {(e.strerror or str(e)).lower()}") from None


def _jpeg_scale(image: Image.Image, max_pixels: int) -> int:
    """The smallest of JPEG's reduced decoding scales (1, 2, 4, 8) that fits max_pixels; 0 if none does."""
    for scale in (1, 2, 4, 8):
        if math.ceil(image.width / scale) * math.ceil(image.height / scale) <= max_pixels:
            return scale
    return 0


def read_image(
    path: str | os.PathLike[str] | io.BytesIO, name: str | None = None, max_pixels: int | None = None,
    shrink_jpeg: bool = False,
) -> np.ndarray:
    """A picture (formats.FORMATS, recognised by its bytes, whatever its name) as float64 greyscale (H, W),
    EXIF rotation applied; errors name the file.

    `max_pixels` is checked from the header, before any pixel is decoded: a small file can declare
    an image too large to hold in memory. With `shrink_jpeg`, a JPEG over the limit is decoded at
    1/2, 1/4 or 1/8 of its size instead (JPEG can do that without decoding the full image), which
    is plenty for a digit that ends up 20 pixels tall. A path must be a regular file.
    """
    name = str(path) if name is None else name
    # A caller's BytesIO stays open, as Pillow leaves it; a file opened here is closed here.
    source = contextlib.nullcontext(path) if isinstance(path, io.BytesIO) else _open_regular(path, name)
    try:
        with source as stream, Image.open(stream, formats=FORMATS) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                scale = _jpeg_scale(image, max_pixels) if shrink_jpeg and image.format == "JPEG" else 0
                if not scale:
                    raise PipelineError(f"{name}: {image.width}x{image.height} pixels: expected at most "
                                        f"{max_pixels:,} pixels")
                image.draft(image.mode, (image.width // scale, image.height // scale))
            image = ImageOps.exif_transpose(image)
            image.load()
            return _greyscale(image, name)
    except PipelineError:
        raise
    except FileNotFoundError:
        raise PipelineError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise PipelineError(f"{name}: is a directory, expected an image file") from None
    except UnidentifiedImageError:
        raise PipelineError(f"{name}: not an image (expected {FORMAT_NAMES})") from None
    except Image.DecompressionBombError as e:
        raise PipelineError(f"{name}: refused: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Truncated or corrupt data after a valid header.
        raise PipelineError(f"{name}: unreadable image ({e})") from None
    except Exception as e:  # a corrupt TIFF, GIF or WebP: Pillow's parsers raise many other types
        raise PipelineError(f"{name}: unreadable image ({type(e).__name__}: {e})") from None


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


def fit_to_box(digit: np.ndarray, name: str, box: float = BOX) -> np.ndarray:
    """Scale the cropped ink so its longer side is `box` (BOX, or more for a soft edge, see halo_box) and
    centre it in the FRAME x FRAME image."""
    # Resample in 32-bit float: anti-aliased (Lanczos) without rounding to 8 bits twice.
    side = min(round(box), FRAME - 2)
    resized = ImageOps.contain(Image.fromarray(digit.astype(np.float32)), (side, side),
                               Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 255.0)
    if small.sum() == 0:
        raise PipelineError(f"{name}: blank image: no ink left after scaling to {BOX} pixels")
    return np.rint(centre_in_frame(small)).astype(np.uint8)


def half_extent(profile: np.ndarray) -> float:
    """The length of `profile` at or above half its peak, its ends found between pixels by linear interpolation."""
    half = 0.5 * float(profile.max())
    above = np.flatnonzero(profile >= half)
    first, last = int(above[0]), int(above[-1])
    lead = (profile[first] - half) / (profile[first] - profile[first - 1]) if first > 0 else 0.0
    tail = (profile[last] - half) / (profile[last] - profile[last + 1]) if last < len(profile) - 1 else 0.0
    return last - first + 1 + float(lead) + float(tail) - 1.0


def halo_box(digit: np.ndarray) -> float:
    """The longer side the cropped digit gets, so that its pen edge (half the brightest ink) spans as much of
    the frame as an MNIST digit's does (HALF_EXTENT). A blurred scan's soft halo then lies outside those
    pixels, where MNIST's anti-aliasing would have put it, instead of shrinking the digit inside BOX. Only a
    digit more than twice BOX in the picture has the resolution to tell; a smaller one keeps BOX."""
    longer = max(digit.shape)
    if longer <= 2 * BOX:
        return float(BOX)
    extent = max(half_extent(digit.max(axis=1)), half_extent(digit.max(axis=0)))
    return max(float(BOX), HALF_EXTENT * longer / max(extent, 1.0))


def stroke_width(digit: np.ndarray) -> float:
    """The strokes' width as a fraction of the cropped digit's longer side: twice the area over the outline.

    Measured on a copy scaled to STROKE_SIDE pixels and cut at half the brightest ink, so that a digit
    gives about the same number at any resolution.
    """
    scaled = ImageOps.contain(Image.fromarray(digit.astype(np.float32)), (STROKE_SIDE, STROKE_SIDE),
                              Image.Resampling.LANCZOS)
    ink = np.asarray(scaled, dtype=np.float64)
    if not ink.size:  # a line thinner than a pixel at this scale: no width to take off
        return 0.0
    mask = ink > 0.5 * ink.max()
    inside = np.pad(mask, 1)
    inside = inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    outline = int((mask & ~inside).sum())
    return 2.0 * int(mask.sum()) / max(outline, 1) / max(scaled.size)


def _erode(ink: np.ndarray, steps: int) -> np.ndarray:
    """Grey-level erosion by `steps` pixels, alternating a 3x3 square and a cross (a near-round pen)."""
    height, width = ink.shape
    for step in range(steps):
        padded = np.pad(ink, 1)
        shifts = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if step % 2 == 0 else [])
        eroded = ink.copy()
        for dr, dc in shifts:
            np.minimum(eroded, padded[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width], out=eroded)
        ink = eroded
    return ink


def thin_strokes(digit: np.ndarray) -> np.ndarray:
    """The cropped digit with strokes wider than MAX_STROKE eroded down to it: a marker's strokes close a
    3's or a 6's loops, and read as another digit, where most of MNIST's writers' pens did not. A digit at
    most twice BOX in the picture (MNIST's own 28x28 among them) is left as it is: too coarse to erode."""
    if max(digit.shape) <= 2 * BOX:
        return digit
    steps = round((stroke_width(digit) - MAX_STROKE) / 2 * max(digit.shape))
    if steps <= 0:
        return digit
    thinned = _erode(digit, steps)
    return crop_to_ink(thinned) if (thinned > CROP_FRACTION * 255.0).any() else digit


def prepare_array(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Any greyscale picture (H, W) of one digit -> the (28, 28) uint8 image MNIST would have made."""
    return prepare_with_warnings(grey, name)[0]


def prepare_with_warnings(grey: np.ndarray, name: str = "image") -> tuple[np.ndarray, list[str]]:
    """prepare_array, plus at most one line of doubts about a photo (`<name>: <why it may be wrong>; ...`).

    A picture on a flat background (a drawing, a scan, MNIST itself) takes MNIST's recipe alone and
    comes out exactly as it always did; a noisy or shaded one (a photo) has its background removed first.
    """
    grey = np.asarray(grey, dtype=np.float64)
    if _plain_recipe_fits(grey, name):
        ink = to_ink(grey, name)
        ink, warnings = np.where(edge_lines(ink > CROP_FRACTION * 255.0), 0.0, ink), []
    else:
        ink, warnings = photo_ink(grey, name)
    digit = thin_strokes(_at_most(crop_to_ink(ink), WORK_SIDE))
    return fit_to_box(digit, name, halo_box(digit)), warnings


def _at_most(digit: np.ndarray, side: int) -> np.ndarray:
    """The cropped digit scaled down (Lanczos) to at most `side` pixels on its longer side, if larger."""
    height, width = digit.shape
    if max(height, width) <= side:
        return digit
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # a hairline stays a pixel thick
    small = Image.fromarray(digit.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, dtype=np.float64), 0.0, 255.0)


def _plain_recipe_fits(grey: np.ndarray, name: str) -> bool:
    """Whether the background is flat enough for MNIST's recipe alone: no shading, and no noise
    that would rise above its crop threshold away from the digit.

    Between FLAT_NOISE and twice that, the noise estimate alone is not decisive (a small JPEG's ringing
    around the strokes measures up to 2 where a photo's noise does), so the recipe's own ink mask is
    looked at: it fits when every blob of it is a piece of the digit, no speck of noise among them.
    """
    background = fit_background(grey)
    if background.shading >= FLAT_SHADING or background.noise >= 2 * FLAT_NOISE:
        return False
    if background.noise < FLAT_NOISE:
        return True
    try:
        ink = to_ink(grey, name)
    except PipelineError:  # faint ink in noise: the photo route may still find it
        return False
    mask = ink > CROP_FRACTION * 255.0
    labels, sizes = connected_components(mask & ~edge_lines(mask))
    if len(sizes) > 64:  # specks all over
        return False
    digit, _ = _gather_strokes(labels, sizes)
    return int(digit.sum()) == int(sizes.sum())


class Background(NamedTuple):
    """A smooth surface fitted to the paper, ignoring the ink, and the noise around it."""

    coefficients: np.ndarray  # of the terms u**a * v**b in POWERS, u and v from -1 to 1 across the picture
    noise: float  # robust standard deviation of the paper around the surface, of 255
    shading: float  # highest minus lowest value of the surface over the picture, of 255

    def surface(self, height: int, width: int) -> np.ndarray:
        v = np.linspace(-1.0, 1.0, height)[:, None]
        u = np.linspace(-1.0, 1.0, width)[None, :]
        return sum(c * u**a * v**b for c, (a, b) in zip(self.coefficients, POWERS, strict=True))


# A quadratic surface: a lamp's gradient and a vignette, not the strokes of a digit.
POWERS = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))


def fit_background(grey: np.ndarray, samples: int = 10_000) -> Background:
    """Least squares on a grid of about `samples` pixels, refitted without the outliers (the ink).

    The first guess is the most common level (the paper, even where a dark edge or the ink covers
    nearly half the picture); each refit keeps the pixels within a band around the surface that
    narrows from 64 levels (room for a lamp's shading) to 3 noise deviations. A clean digit's paper is
    one exact level, so its background comes out exactly flat.
    """
    height, width = grey.shape
    stride = max(1, math.ceil(math.sqrt(height * width / samples)))
    v, u = np.meshgrid(np.linspace(-1.0, 1.0, height)[::stride], np.linspace(-1.0, 1.0, width)[::stride],
                       indexing="ij")
    terms = np.stack([(u**a * v**b).ravel() for a, b in POWERS], axis=1)
    values = grey[::stride, ::stride].ravel()
    counts, edges = np.histogram(values, bins=64, range=(0.0, 256.0))
    common = int(np.argmax(np.convolve(counts, np.ones(3), mode="same")))
    near = values[(values >= edges[max(common - 1, 0)]) & (values < edges[min(common + 2, 64)])]
    coefficients = np.zeros(len(POWERS))
    coefficients[0] = np.median(near) if near.size else np.median(values)
    residual = values - coefficients[0]
    noise = max(1.4826 * float(np.median(np.abs(residual[np.abs(residual) < 64.0]))), 0.5)
    for band in (64.0, 32.0, 16.0, 8.0, 4.0, 0.0, 0.0, 0.0):
        paper = np.abs(residual) < max(band, 3.0 * noise)
        if paper.sum() < len(POWERS) * 4:
            break
        a = terms[paper]
        try:
            coefficients = np.linalg.solve(a.T @ a, a.T @ values[paper])
        except np.linalg.LinAlgError:  # too few distinct pixels (a thin strip of an image)
            break
        residual = values - terms @ coefficients
        noise = max(1.4826 * float(np.median(np.abs(residual[paper]))), 0.5)
    # The noise, measured again from the median of all residuals down: where most of the paper sits
    # exactly on the surface (a drawing, a scan), JPEG ringing around the strokes is not noise. Where
    # the ink and its blurred edges cover half the picture or more (wide strokes on a tight crop), that
    # median is ink, not paper: the refit's own estimate is the start then.
    start = 1.4826 * float(np.median(np.abs(residual)))
    noise = max(start if start <= 3.0 * noise else noise, 0.5)
    for _ in range(3):
        noise = max(1.4826 * float(np.median(np.abs(residual[np.abs(residual) < 3.0 * noise]))), 0.5)
    fitted = terms @ coefficients
    return Background(coefficients, noise, float(fitted.max() - fitted.min()))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the level that best splits `values` into two classes (most between-class variance)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * below / below[-1] - mass) ** 2 / (below * above)
    return float(edges[int(np.argmax(np.nan_to_num(between, nan=0.0, posinf=0.0))) + 1])


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a boolean image: labels (0 = background, 1.. by size) and pixel counts.

    Union-find over the runs of each row, so the Python loop is over runs, not pixels.
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)  # exclusive; row-major order pairs each end with its start
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(height + 1))
    for row in range(height - 1):
        i, i_end, j, j_end = first[row], first[row + 1], first[row + 1], first[row + 2]
        while i < i_end and j < j_end:
            if starts[i] <= ends[j] and starts[j] <= ends[i]:  # touching, diagonals included
                a, b = root(i), root(j)
                parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    _, component = np.unique([root(i) for i in range(len(rows))], return_inverse=True)
    lengths = ends - starts
    sizes = np.bincount(component, weights=lengths).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = np.zeros((height, width), dtype=np.int32)
    if len(rows):
        run_of_pixel = np.repeat(np.arange(len(rows)), lengths)
        columns = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
        labels[rows[run_of_pixel], columns] = rank[component][run_of_pixel] + 1
    return labels, sizes[order]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean image by `radius` pixels (a square), one shift at a time."""
    grown = mask.copy()
    for _ in range(radius):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= step[:, :-1].copy()
        step[:, :-1] |= step[:, 1:].copy()
        grown = step
    return grown


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """Bounding box (top, bottom, left, right; bottom and right exclusive) of labels 1..count, one row each."""
    rows, cols = np.nonzero(labels)
    which = labels[rows, cols] - 1
    boxes = np.empty((count, 4), dtype=np.int64)
    boxes[:, 0], boxes[:, 2] = labels.shape
    boxes[:, 1] = boxes[:, 3] = 0
    np.minimum.at(boxes[:, 0], which, rows)
    np.maximum.at(boxes[:, 1], which, rows + 1)
    np.minimum.at(boxes[:, 2], which, cols)
    np.maximum.at(boxes[:, 3], which, cols + 1)
    return boxes


def edge_lines(mask: np.ndarray) -> np.ndarray:
    """The rows and columns of `mask` that are a line along the picture's edge, not the digit: the edge of
    the sheet or of a scanner's lid, touching the digit or not.

    From each edge inwards, the rows with at least LINE_COVER of their pixels marked; they are a line when
    that run ends within EDGE_LINE of the picture (a digit's stroke along a tight crop is thicker) and
    something is left beside them. All False when nothing is.
    """
    lines = np.zeros_like(mask, dtype=bool)
    for turn in range(4):
        view = np.rot90(mask, turn)
        covered = view.mean(axis=1) >= LINE_COVER
        run = int(np.argmin(covered)) if not covered.all() else len(covered)
        if 0 < run <= EDGE_LINE * view.shape[0]:
            np.rot90(lines, turn)[:run] = True
    return lines if (mask & ~lines).any() else np.zeros_like(mask, dtype=bool)


def _gather_strokes(labels: np.ndarray, sizes: np.ndarray, smallest: float = PIECE_FRACTION) -> tuple[np.ndarray, int]:
    """The largest blob with the pieces near it (a 5's detached bar, a stroke the threshold broke),
    and how many blobs of at least RIVAL_FRACTION of its size lie apart from it (a second digit?).

    A piece counts when it has at least `smallest` of the largest blob's pixels, and is near when the
    gap to the digit's bounding box is at most NEAR_FRACTION of the box's longer side.
    """
    boxes = _boxes(labels, len(sizes))
    top, bottom, left, right = boxes[0]
    pieces = {label: boxes[label - 1] for label in range(2, len(sizes) + 1)
              if sizes[label - 1] >= smallest * sizes[0]}
    kept = [1]
    merged = True
    while merged:
        merged = False
        for label, (t, b, le, r) in list(pieces.items()):
            if max(t - bottom, top - b, le - right, left - r) <= NEAR_FRACTION * max(bottom - top, right - left):
                top, bottom, left, right = min(top, t), max(bottom, b), min(left, le), max(right, r)
                kept.append(label)
                del pieces[label]
                merged = True
    digit = np.isin(labels, kept)
    return digit, sum(1 for label in pieces if sizes[label - 1] >= RIVAL_FRACTION * sizes[0])


def photo_ink(grey: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    """The digit of a photo as light ink on zero, brightest ink at 255, and a line of doubts about it, if any.

    Subtract the fitted background; the ink is on the side (darker or lighter) with the heavier tail;
    Otsu's threshold, at least INK_SIGMAS noise deviations, splits ink from paper; the largest
    8-connected blob and the nearby pieces of its strokes are the digit, grown by half an output pixel
    to keep the strokes' soft edges; everything else is paper.
    """
    height, width = grey.shape
    factor = math.ceil(max(height, width) / PHOTO_SIDE)
    if factor > 1:  # box-averaged: the noise drops, the digit keeps far more pixels than it will need
        grey = np.asarray(Image.fromarray(grey.astype(np.float32), "F").reduce(factor), dtype=np.float64)
        height, width = grey.shape
    background = fit_background(grey)
    sigma = background.noise
    residual = grey - background.surface(height, width)
    darker = np.clip(-residual - 3 * sigma, 0.0, None).sum() >= np.clip(residual - 3 * sigma, 0.0, None).sum()
    ink = np.clip(-residual if darker else residual, 0.0, None)
    candidates = ink[ink > 2 * sigma]
    threshold = max(otsu_threshold(candidates) if candidates.size > 1 else 0.0, INK_SIGMAS * sigma)
    mask = ink > threshold
    labels, sizes = connected_components(mask & ~edge_lines(mask))
    blank = f"{name}: blank image: no ink stands out from the background (expected a digit)"
    if not len(sizes) or sizes[0] < MIN_BLOB:
        raise PipelineError(blank)
    digit, rivals = _gather_strokes(labels, sizes)
    level = float(np.percentile(ink[digit], 90))
    contrast = level / sigma
    if level < MIN_CONTRAST or contrast < BLANK_SIGMAS:
        raise PipelineError(blank)
    contrast_doubt = []
    if contrast < UNSURE_SIGMAS:
        contrast_doubt.append(f"low contrast: the ink stands out only {contrast:.1f} times the background's "
                              "noise, paper texture may have been taken for ink")
    # Something in the frame besides the digit. "Ink" here is everything that stands out, not only what
    # passed Otsu's threshold: a dark edge under the digit can take the lower class, leaving as ink only
    # the strokes drawn over it.
    framing = []
    covered = float((ink > INK_SIGMAS * sigma).mean())
    if covered > MAX_INK_FRACTION:
        framing.append(f"ink covers {covered:.0%} of the picture (a shadow or a dark edge?)")
    if rivals:
        framing.append(f"{rivals + 1} separate marks of similar size (more than one digit?), kept the largest")
    t, b, le, r = _box(digit)
    if (t == 0 and b == height) or (le == 0 and r == width):
        framing.append("the ink runs from edge to edge of the picture (a ruled line, a border or a table edge?)")
    elif r - le > MAX_WIDTH_RATIO * (b - t):
        framing.append(f"the ink is {(r - le) / (b - t):.1f} times wider than tall (a ruled line, an edge, "
                       "or digits side by side?)")
    doubts = contrast_doubt + framing + (["crop the photo around the digit"] if framing else [])
    warnings = [f"{name}: " + "; ".join(doubts)] if doubts else []
    radius = round(0.5 * max(b - t, r - le) / BOX)
    region = _dilate(digit, radius) if radius else digit
    return np.where(region, np.clip(ink * (255.0 / level), 0.0, 255.0), 0.0), warnings


def prepare_file(path: str | os.PathLike[str]) -> np.ndarray:
    """read_image + prepare_array: a file on disk as a (28, 28) uint8 MNIST-style image."""
    return prepare_array(read_image(path), str(path))


def directory_pictures(folder: Path) -> list[Path]:
    """The pictures a directory stands for: its entries whose names formats.is_picture_name accepts (a
    known suffix, not hidden), sorted by name, not searched below. Anything else so named is kept: a
    dangling link, a link loop or a FIFO is refused on its own line by the open that follows, not passed
    over in silence; a folder is passed over."""
    return sorted((folder / e.name for e in os.scandir(folder) if is_picture_name(e.name) and not _is_dir(e)),
                  key=lambda p: p.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A folder, through links; a link loop is no folder (its open says what it is)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, in the order given; a directory stands for directory_pictures. Naming a directory's
    pictures one by one, in that order, gives the same files: both are read by their bytes alone."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            images = directory_pictures(path)
            if not images:
                wanted = ", ".join(SUFFIXES[:-1]) + f" or {SUFFIXES[-1]}"
                raise PipelineError(f"{path}: no image files in this directory (expected names ending {wanted}; "
                                    "names starting with a dot are passed over)")
            found.extend(images)
        else:
            found.append(path)
    return found
