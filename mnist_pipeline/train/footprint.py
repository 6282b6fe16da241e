"""How much memory a model needs to train, estimated from params before anything is built.

A model that cannot fit (`model.hidden: [1000000, 1000000]`, a trillion weights) would otherwise be
built by TensorFlow and end in a 40-line `ResourceExhaustedError`, or the machine would swap for an
hour first. The estimate is a lower bound, so it never refuses a model that would fit: the weights,
their gradients and the optimizer's slots (4 bytes each), and the layer outputs of one batch that the
backward pass keeps. No TensorFlow: the arithmetic follows the builders in models.py.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline.core.config import ModelConfig, TrainConfig
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import PreparedSpec

FLOAT_BYTES = 4
# Per-weight state each optimizer keeps (Keras' defaults: SGD without momentum keeps none).
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "nadam": 2, "rmsprop": 1, "adagrad": 1, "sgd": 0}


@dataclass(frozen=True)
class Footprint:
    parameters: int
    activations: int  # values of one batch's layer outputs
    slots: int

    @property
    def nbytes(self) -> int:
        return FLOAT_BYTES * (self.parameters * (2 + self.slots) + self.activations)


def _mlp(model: ModelConfig, spec: PreparedSpec) -> tuple[int, int]:
    """(weights, outputs per image) of the tutorial's Dense stack."""
    widths = [spec.n_pixels, *model.hidden, spec.n_classes]
    weights = sum(a * b + b for a, b in itertools.pairwise(widths))
    return weights, sum(widths[1:]) * (2 if model.dropout > 0 else 1)


def _cnn(model: ModelConfig, spec: PreparedSpec) -> tuple[int, int]:
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


def estimate(model: ModelConfig, train: TrainConfig, spec: PreparedSpec) -> Footprint:
    weights, per_image = _cnn(model, spec) if model.type == "cnn" else _mlp(model, spec)
    return Footprint(weights, per_image * train.batch_size, OPTIMIZER_SLOTS.get(train.optimizer, 2))


def memory_limit() -> int:
    """This machine's memory, or the control group's limit when lower (a container's)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if nbytes < 1024 or unit == "EiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_fits(model: ModelConfig, train: TrainConfig, spec: PreparedSpec, available: int | None = None) -> None:
    """Refuse, in one line naming the params and the estimate, a model that cannot train in this memory."""
    need = estimate(model, train, spec)
    available = memory_limit() if available is None else available
    if need.nbytes <= available:
        return
    keys = (f"model.cnn.filters = {list(model.cnn.filters)}, model.cnn.dense = {model.cnn.dense}"
            if model.type == "cnn" else f"model.hidden = {list(model.hidden)}")
    raise PipelineError(
        f"params.yaml: {keys}, train.batch_size = {train.batch_size}, train.optimizer = {train.optimizer}: "
        f"training needs at least {_size(need.nbytes)} ({need.parameters:,} weights with their gradients and "
        f"{need.slots} optimizer slots, {_size(FLOAT_BYTES * need.activations)} of layer outputs per batch), "
        f"more than the {_size(available)} of memory here: expected a smaller model or batch")
