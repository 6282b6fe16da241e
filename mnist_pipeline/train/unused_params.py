"""Params the chosen `model.type` never reads, and a warning when one of them was changed.

`dvc exp run` and the queue start from the workspace's params.yaml, so a key set for an earlier
experiment (`model.hidden` for an MLP) rides along into the next one (a CNN), where it does
nothing. The keys that only one model type reads (the model registry's) have their shipped values here;
the train stage warns about each key the chosen type ignores whose value is not that shipped value. The
fields themselves stay required in params.yaml: these values only say what "unchanged" means.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mnist_pipeline.core.config import MODEL_REGISTRY, keys_read_only_by

if TYPE_CHECKING:
    from mnist_pipeline.core.config import ModelConfig

# The values params.yaml ships with of the keys one model type only reads (which keys those are, the model
# registry says: config.MODEL_REGISTRY; tests/test_unused_params.py holds the three in step).
SHIPPED_VALUES: dict[str, Any] = {
    "model.hidden": [64, 64],
    "model.dropout": 0.0,
    "model.cnn.filters": [32, 64],
    "model.cnn.kernel_size": 3,
    "model.cnn.dense": 128,
    "model.cnn.dropout": 0.25,
    "model.cnn.batch_norm": True,
    "model.cnn.batch_norm_first": True,
    "model.cnn.augment_shift": 0.08,
    "model.cnn.augment_rotation": 0.0,
    "model.cnn.pool_first": False,
    "model.cnn.strided_blocks": 0,
    "model.cnn.pool_blocks": [],
    "model.cnn.first_conv": "trained",
}


def _value(model: dict[str, Any], key: str) -> Any:
    for part in key.split(".")[1:]:
        model = model[part]
    return model


def ignored_changes(model: ModelConfig) -> list[str]:
    """One line per key that `model.type` does not read and that differs from its shipped value."""
    values = model.model_dump()
    lines = []
    for kind in MODEL_REGISTRY:
        if kind == model.type:
            continue
        for key in keys_read_only_by(kind):
            value = _value(values, key)
            if value != SHIPPED_VALUES[key]:
                lines.append(f"{key} = {json.dumps(value)} has no effect with model.type = {model.type}")
    return lines
