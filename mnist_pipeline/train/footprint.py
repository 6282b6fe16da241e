"""How much memory a model needs to train, estimated from params before anything is built.

A model that cannot fit (`model.hidden: [1000000, 1000000]`, a trillion weights) would otherwise be
built by TensorFlow and end in a 40-line `ResourceExhaustedError`, or the machine would swap for an
hour first. The estimate is a lower bound, so it never refuses a model that would fit: the weights,
their gradients and the optimizer's slots (4 bytes each), and the layer outputs of one batch that the
backward pass keeps. No TensorFlow: each model type's module does the arithmetic of its own builder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline.core.config import ModelConfig, TrainConfig
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import PreparedSpec
from mnist_pipeline.train.registry import model_type

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


def estimate(model: ModelConfig, train: TrainConfig, spec: PreparedSpec) -> Footprint:
    weights, per_image = model_type(model).weights_and_outputs(model, spec)
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
    sizes = model_type(model).size_values(model)
    keys = f"{sizes}, " if sizes else ""
    raise PipelineError(
        f"params.yaml: {keys}train.batch_size = {train.batch_size}, train.optimizer = {train.optimizer}: "
        f"training needs at least {_size(need.nbytes)} ({need.parameters:,} weights with their gradients and "
        f"{need.slots} optimizer slots, {_size(FLOAT_BYTES * need.activations)} of layer outputs per batch), "
        f"more than the {_size(available)} of memory here: expected a smaller model or batch")
