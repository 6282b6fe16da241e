"""Patch-whitening filters for a CNN's first convolution, computed from the training images.

A first convolution fixed to these filters is not trained: the gradient then stops at the second
convolution, and a step skips that convolution's input gradient, the largest op of the cnn-fast
network's step (docs/experiments.md, "A frozen first block"). Each filter projects an image patch on one
of the leading eigenvectors of the patches' second moments, scaled to unit variance, and comes with its
negative, so the activation after it keeps both halves of every direction.
"""

from __future__ import annotations

import math

import numpy as np

from mnist_pipeline.core.errors import PipelineError

# Images whose patches estimate the second moments: plenty for a 3x3 patch's 9 (or 27) dimensions.
SAMPLE_IMAGES = 10_000
# Added to each eigenvalue before the 1/sqrt scaling, so near-flat directions are not blown up.
EPS = 1e-3


def check_whitening_width(n_filters: int, kernel_size: int, channels: int) -> None:
    """The filters come in sign pairs, at most two per dimension of a patch."""
    dims = kernel_size * kernel_size * channels
    if n_filters % 2 or n_filters > 2 * dims:
        raise PipelineError(
            f"model.cnn.filters[0] = {n_filters} with model.cnn.first_conv = whitened: expected an even number "
            f"of at most {2 * dims} (two per dimension of a {kernel_size}x{kernel_size}x{channels} patch)"
        )


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """The rows (or columns) a "same" convolution pads before and after, as TensorFlow pads them."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def patch_whitening_filters(
    images: np.ndarray, image_shape: tuple[int, int, int], kernel_size: int, stride: int, n_filters: int
) -> np.ndarray:
    """(kernel, kernel, channels, n_filters) float32 filters from flattened `images`, the patches taken where a
    "same" convolution with `stride` takes them (zero padding included)."""
    rows, cols, channels = image_shape
    check_whitening_width(n_filters, kernel_size, channels)
    maps = np.asarray(images[:SAMPLE_IMAGES], np.float32).reshape(-1, rows, cols, channels)
    pad = (0, 0), same_padding(rows, kernel_size, stride), same_padding(cols, kernel_size, stride), (0, 0)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(maps, pad), (kernel_size, kernel_size), axis=(1, 2))
    # (N, out_rows, out_cols, channels, k, k) -> one row per patch, laid out as a Conv2D kernel is (k, k, c).
    patches = windows[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel_size**2 * channels)
    moments = patches.T.astype(np.float64) @ patches / len(patches)
    values, vectors = np.linalg.eigh(moments)
    n_directions = n_filters // 2
    values, vectors = values[::-1][:n_directions], vectors[:, ::-1][:, :n_directions]
    filters = vectors / np.sqrt(values + EPS)
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(kernel_size, kernel_size, channels, n_filters).astype(np.float32)
