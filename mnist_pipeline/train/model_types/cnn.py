"""`model.type: cnn`, a small convnet whose keys are the `model.cnn` section (see mlp.py for what a model type
module holds)."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from mnist_pipeline.core.config import (
    MAX_WIDTH,
    Section,
    choice,
    documented,
    int_list,
    integer,
    ints_within,
    number,
)

if TYPE_CHECKING:
    from mnist_pipeline.prepared import PreparedSpec

MAX_FILTERS = 4096  # filters of a convolution
FIRST_CONVS = ("trained", "whitened")  # model.cnn.first_conv: learned, or fixed to patch-whitening filters
SIZE_KEYS = ("cnn.filters", "cnn.dense")


def _flag(shipped: bool, doc: str) -> Any:
    return documented(Field(description="true or false"), shipped, doc)


class CnnConfig(Section):
    filters: list[int] = documented(int_list(1, MAX_FILTERS, 1, 4), [32, 64],
                                    "filters of each convolution block, one entry per block")
    kernel_size: int = documented(integer(1, 7), 3, "side of the square convolution kernels")
    dense: int = documented(integer(0, MAX_WIDTH), 128, "width of the Dense layer before softmax (0 for none)")
    dropout: float = documented(number(0.0, 1.0), 0.25, "dropout rate before the head's Dense layers")
    batch_norm: bool = _flag(True, "batch-normalise each convolution")
    batch_norm_first: bool = _flag(True, "batch-normalise the first block too (its maps are the largest)")
    augment_shift: float = documented(number(0.0, 0.5), 0.08, "random shift in training, as a fraction of the image")
    augment_rotation: float = documented(number(0.0, 0.5), 0.0, "random rotation in training, as a fraction of a turn")
    pool_first: bool = _flag(False, "max-pool before batch norm and activation (same shapes, less work)")
    strided_blocks: int = documented(integer(0, 4), 0, "how many first blocks halve the image with a stride-2 "
                                     "convolution instead of a max-pool")
    pool_blocks: list[int] = documented(int_list(1, 4, 0, 4), [], "blocks (1 = first) that max-pool; [] for every "
                                        "block that does not stride")
    first_conv: Literal[FIRST_CONVS] = documented(choice(FIRST_CONVS), "trained",  # type: ignore[valid-type]
                                                  "first convolution learned, or fixed to patch-whitening filters")

    @field_validator("filters")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        return ints_within(widths, 1, MAX_FILTERS)

    @field_validator("strided_blocks")
    @classmethod
    def _existing_strided_blocks(cls, strided: int, info: Any) -> int:
        """Strided blocks are the first N of `filters`: no more than there are."""
        n_blocks = len(info.data.get("filters") or [])
        if info.data.get("filters") is not None and strided > n_blocks:
            raise ValueError(f"expected an integer in [0, {n_blocks}] (model.cnn.filters has {n_blocks} blocks)")
        return strided

    @field_validator("pool_blocks")
    @classmethod
    def _existing_blocks(cls, blocks: list[int], info: Any) -> list[int]:
        """Block numbers count from 1, each once, and name a block that `filters` has."""
        n_blocks = len(info.data.get("filters") or [])
        if any(not 1 <= b <= n_blocks for b in blocks) or len(set(blocks)) < len(blocks):
            raise ValueError(f"expected distinct block numbers in [1, {n_blocks}] (model.cnn.filters has "
                             f"{n_blocks} blocks), or [] for every block that does not stride")
        return blocks


class Params(Section):
    cnn: CnnConfig


def build_cnn(cnn: CnnConfig, activation: str, image_shape: tuple[int, int, int], n_classes: int) -> Any:
    """A small convnet on the same flattened arrays: it reshapes them to (rows, cols, channels) itself.

    One block per entry of `filters`: a convolution (optionally batch-normalised) and a 2x2 max-pool, as in
    the Keras "Simple MNIST convnet"; then dropout, an optional dense layer, softmax. Small on purpose:
    it has to train in minutes on two CPU cores.
    `pool_first` pools right after the convolution, before batch norm and the activation: the same shapes
    and parameters, but normalisation and activation (memory-bound, a large share of a small net's
    time on a CPU) run on a quarter of the values. The first `strided_blocks` blocks halve the image with a
    stride-2 convolution in place of the max-pool: a quarter of the convolution's work, same output shapes.
    `pool_blocks` names the blocks (1 = the first) that max-pool, strided or not; empty, every block that does
    not stride pools. [1] with one strided block pools the first block's map, so the second convolution runs
    on 7 x 7 instead of 14 x 14 pixels: a quarter of its work, and the same map (7 x 7) reaches the head.
    `batch_norm_first` false leaves the first block unnormalised (its convolution gets a bias): its maps
    are the largest, so on a CPU that block's batch norm costs more than the others'.
    `first_conv` "whitened" makes the first convolution a fixed one (not trained, no bias, no batch norm),
    whose filters the train stage sets to patch-whitening filters of the training images (`whitening.py`):
    the gradient stops at the second convolution, so a step skips that convolution's input gradient.
    Augmentation layers are Keras' own: active in training only, identity at inference.
    """
    from mnist_pipeline.train.tensorflow_runtime import keras

    filters, kernel_size, dense, dropout = cnn.filters, cnn.kernel_size, cnn.dense, cnn.dropout
    batch_norm, batch_norm_first, first_conv = cnn.batch_norm, cnn.batch_norm_first, cnn.first_conv
    augment_shift, augment_rotation = cnn.augment_shift, cnn.augment_rotation
    pool_first, strided_blocks, pool_blocks = cnn.pool_first, cnn.strided_blocks, cnn.pool_blocks
    rows, cols, channels = image_shape
    layers: list[Any] = [
        keras.Input(shape=(rows * cols * channels,)),
        keras.layers.Reshape((rows, cols, channels)),
    ]
    if augment_shift > 0:
        layers.append(keras.layers.RandomTranslation(augment_shift, augment_shift, fill_mode="nearest"))
    if augment_rotation > 0:
        layers.append(keras.layers.RandomRotation(augment_rotation, fill_mode="nearest"))
    for i, width in enumerate(filters):
        stride = 2 if i < strided_blocks else 1
        fixed = i == 0 and first_conv == "whitened"
        normed = batch_norm and (i > 0 or batch_norm_first) and not fixed
        layers.append(keras.layers.Conv2D(width, kernel_size, strides=stride, padding="same",
                                          use_bias=not normed and not fixed, trainable=not fixed))
        # By default a strided convolution has halved the image already, so its block does not pool.
        pool = i + 1 in pool_blocks if pool_blocks else stride == 1
        if pool and pool_first:
            layers.append(keras.layers.MaxPooling2D(2))
        if normed:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation(activation))
        if pool and not pool_first:
            layers.append(keras.layers.MaxPooling2D(2))
    layers.append(keras.layers.Flatten())
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout))
    if dense:
        layers.append(keras.layers.Dense(dense, activation=activation))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    return keras.Sequential(layers, name="cnn")


def build(model: Any, spec: PreparedSpec) -> Any:
    return build_cnn(model.cnn, model.activation, spec.array_shape, spec.n_classes)


def weights_and_outputs(model: Any, spec: PreparedSpec) -> tuple[int, int]:
    """(weights, outputs per image) of build_cnn's blocks: convolution, batch norm, activation, pool."""
    cnn = model.cnn
    rows, cols, channels = spec.array_shape
    weights, outputs = 0, rows * cols * channels
    for i, width in enumerate(cnn.filters):
        stride = 2 if i < cnn.strided_blocks else 1
        rows, cols = math.ceil(rows / stride), math.ceil(cols / stride)
        fixed = i == 0 and cnn.first_conv == "whitened"
        normed = cnn.batch_norm and (i > 0 or cnn.batch_norm_first) and not fixed
        # The kernel, then a batch norm's 4 values per filter, or a bias (none for the fixed convolution).
        weights += cnn.kernel_size**2 * channels * width + (4 * width if normed else 0 if fixed else width)
        outputs += (3 if normed else 2) * rows * cols * width  # convolution, batch norm, activation
        if (i + 1 in cnn.pool_blocks) if cnn.pool_blocks else stride == 1:
            rows, cols = max(1, rows // 2), max(1, cols // 2)
            outputs += rows * cols * width
        channels = width
    flat = rows * cols * channels
    head = [flat, *([cnn.dense] if cnn.dense else []), spec.n_classes]
    weights += sum(a * b + b for a, b in itertools.pairwise(head))
    return weights, outputs + sum(head[1:])
