"""`model.cnn.first_conv: whitened`: a first convolution fixed to patch-whitening filters of the training images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.core.config import Config, with_overrides
from mnist_pipeline.core.datasets import DATASETS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import idx_spec
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import scale_images
from mnist_pipeline.train.registry import load_config
from mnist_pipeline.train.tensorflow_runtime import keras
from mnist_pipeline.train.training import train_model
from mnist_pipeline.train.whitening import patch_whitening_filters

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MNIST = idx_spec(DATASETS["mnist"])
N_TRAIN = 512


def params(**overrides: Any) -> Config:
    whitened = {"model.type": "cnn", "model.cnn.filters": [16, 32], "model.cnn.pool_first": True,
                "model.cnn.strided_blocks": 1, "model.cnn.first_conv": "whitened", "train.epochs": 3,
                "train.batch_size": 64, "train.checkpoint": False}
    return with_overrides(load_config(PROJECT_ROOT / "params.yaml"), {**whitened, **overrides})


@pytest.fixture(scope="module")
def mnist(mirror_root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = mirror_root / "mnist"
    images = scale_images(read_idx(folder / TRAIN_IMAGES, "images")[:N_TRAIN], 255.0, 0.5)
    return images, read_idx(folder / TRAIN_LABELS, "labels")[:N_TRAIN]


def responses(images: np.ndarray, filters: np.ndarray, stride: int) -> np.ndarray:
    """What Keras' own "same" convolution with `stride` makes of the images, one row per output pixel."""
    maps = images.reshape(-1, 28, 28, 1)
    out = keras.ops.conv(maps, filters, strides=stride, padding="same")
    return np.asarray(out).reshape(-1, filters.shape[-1])


@pytest.mark.parametrize("stride", [1, 2])
def test_whitening_filters_give_uncorrelated_unit_responses_in_sign_pairs(
    mnist: tuple[np.ndarray, np.ndarray], stride: int
) -> None:
    images, _ = mnist
    kernel = patch_whitening_filters(images, (28, 28, 1), 3, stride, 16)
    filters = kernel.reshape(9, 16)
    np.testing.assert_array_equal(filters[:, 8:], -filters[:, :8])
    positive = responses(images, kernel[..., :8], stride)
    moments = positive.T @ positive / len(positive)
    # Unit second moments, up to the small constant added to each eigenvalue, and nothing shared between them.
    assert np.all((moments.diagonal() > 0.7) & (moments.diagonal() <= 1.0 + 1e-4)), moments.diagonal()
    assert np.abs(moments - np.diag(moments.diagonal())).max() < 1e-3


@pytest.mark.parametrize("width", [15, 20])
def test_whitened_widths_that_cannot_pair_the_patch_directions_are_refused_in_one_line(
    mnist: tuple[np.ndarray, np.ndarray], width: int
) -> None:
    with pytest.raises(PipelineError) as caught:
        patch_whitening_filters(mnist[0], (28, 28, 1), 3, 2, width)
    message = str(caught.value)
    assert "model.cnn.filters[0]" in message and "at most 18" in message and "\n" not in message


def test_trained_model_keeps_the_whitening_filters_and_learns_the_rest(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    cfg = params()
    model, history = train_model(cfg.model, cfg.train, MNIST, images, labels, images[:0], labels[:0], None)
    first, second = (layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(first.get_weights()[0], patch_whitening_filters(images, (28, 28, 1), 3, 2, 16))
    assert len(first.get_weights()) == 1 and first.bias is None
    assert not first.trainable and second.trainable
    assert all(v is not first.kernel for v in model.trainable_variables)
    assert history["loss"][-1] < 0.5 * np.log(10), history["loss"]  # chance is ln 10
