"""`model.type: mlp`, the tutorial's network: Dense layers of `model.hidden` widths, then softmax.

A model type module holds what the registry (mnist_pipeline.train.registry) reads: `Params`, the keys of the
`model` section only this type reads, each with its shipped value and a one-line meaning; `SIZE_KEYS`, those
that set its size (named when it cannot fit in memory); `build`, and `weights_and_outputs` for the memory
estimate. TensorFlow is imported inside `build` only: the schema is read without it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from mnist_pipeline.core.config import MAX_WIDTH, Section, documented, int_list, ints_within, number

if TYPE_CHECKING:
    from mnist_pipeline.prepared import PreparedSpec

SIZE_KEYS = ("hidden",)


class Params(Section):
    hidden: list[int] = documented(int_list(1, MAX_WIDTH, 0), [64, 64],
                                   "widths of the hidden Dense layers, input side first ([] is softmax regression)")
    dropout: float = documented(number(0.0, 1.0), 0.0, "dropout rate after each hidden layer (0 for none)")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        return ints_within(widths, 1, MAX_WIDTH)


def build_mlp(hidden: list[int], activation: str, dropout: float, n_pixels: int, n_classes: int) -> Any:
    """The tutorial's Sequential MLP; defaults give Dense 64 relu, Dense 64 relu, Dense 10 softmax."""
    from mnist_pipeline.train.tensorflow_runtime import keras

    layers: list[Any] = [keras.Input(shape=(n_pixels,))]
    for width in hidden:
        layers.append(keras.layers.Dense(width, activation=activation))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_classes, activation="softmax"))
    return keras.Sequential(layers, name="mlp")


def build(model: Any, spec: PreparedSpec) -> Any:
    return build_mlp(model.hidden, model.activation, model.dropout, spec.n_pixels, spec.n_classes)


def weights_and_outputs(model: Any, spec: PreparedSpec) -> tuple[int, int]:
    """(weights, outputs per image) of the Dense stack."""
    widths = [spec.n_pixels, *model.hidden, spec.n_classes]
    weights = sum(a * b + b for a, b in itertools.pairwise(widths))
    return weights, sum(widths[1:]) * (2 if model.dropout > 0 else 1)
