"""Params the chosen `model.type` never reads, and a warning when one of them was changed.

`dvc exp run` and the queue start from the workspace's params.yaml, so a key set for an earlier
experiment (`model.hidden` for an MLP) rides along into the next one (a CNN), where it does
nothing. The keys that only one model type reads, and the values params.yaml ships them with, are
that type's (registry.py); the train stage warns about each key the chosen type ignores whose value
is not its shipped value. The fields themselves stay required in params.yaml: the shipped values only
say what "unchanged" means.
"""

from __future__ import annotations

import json
from typing import Any

from mnist_pipeline.core.config import flatten
from mnist_pipeline.train.registry import all_types


def ignored_changes(model: Any) -> list[str]:
    """One line per key that `model.type` does not read and that differs from its shipped value."""
    values = flatten(model.model_dump(), "model.")
    lines = []
    for name, kind in all_types().items():
        if name == model.type:
            continue
        for key, shipped in kind.shipped().items():
            if values[key] != shipped:
                lines.append(f"{key} = {json.dumps(values[key])} has no effect with model.type = {model.type}")
    return lines
