"""Params the chosen model type ignores: the defaults that define "changed", and the train stage's warning.

The warning is observed on a real `python -m stages.train` process on a few random images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT
from faultkit import stage_dir, write_prepared

from mnist_pipeline.core.config import flatten, with_overrides
from mnist_pipeline.train.registry import all_types, keys_read_only_by, leaf_keys, load_config
from mnist_pipeline.train.unused_params import ignored_changes

# Each model type's keys with the values it says params.yaml ships them with.
SHIPPED_VALUES = {key: value for kind in all_types().values() for key, value in kind.shipped().items()}

# Keys every model type reads.
SHARED_MODEL_KEYS = {"model.type", "model.activation"}


def test_every_model_key_is_shared_or_read_by_one_type_only() -> None:
    model_keys = {k for k in leaf_keys() if k.startswith("model.")}
    type_only = [key for kind in all_types() for key in keys_read_only_by(kind)]
    assert all(keys_read_only_by(kind) for kind in all_types()), "a model type that reads no key of its own"
    assert len(type_only) == len(set(type_only)), "a key the registry gives to two model types"
    assert set(type_only) | SHARED_MODEL_KEYS == model_keys
    assert set(SHIPPED_VALUES) == set(type_only)


def test_the_defaults_are_the_values_params_yaml_ships_with() -> None:
    shipped = flatten(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    for key, default in SHIPPED_VALUES.items():
        assert shipped[key] == default, key


def test_the_shipped_params_warn_about_nothing_under_either_type() -> None:
    cfg = load_config(PROJECT_ROOT / "params.yaml")
    for kind in all_types():
        assert ignored_changes(with_overrides(cfg, {"model.type": kind}).model) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model.type": "cnn", "model.hidden": [128, 128]},
         ["model.hidden = [128, 128] has no effect with model.type = cnn"]),
        ({"model.type": "cnn", "model.hidden": [128, 128], "model.dropout": 0.5},
         ["model.hidden = [128, 128] has no effect with model.type = cnn",
          "model.dropout = 0.5 has no effect with model.type = cnn"]),
        ({"model.type": "mlp", "model.cnn.batch_norm": False, "model.cnn.dropout": 0.3},
         ["model.cnn.dropout = 0.3 has no effect with model.type = mlp",
          "model.cnn.batch_norm = false has no effect with model.type = mlp"]),
        # A key the chosen type reads is never reported, whatever its value.
        ({"model.type": "mlp", "model.hidden": [512, 512], "model.dropout": 0.2}, []),
        ({"model.type": "cnn", "model.cnn.filters": [16]}, []),
    ],
)
def test_ignored_changes_name_each_ignored_key_that_differs(overrides: dict, expected: list[str]) -> None:
    cfg = with_overrides(load_config(PROJECT_ROOT / "params.yaml"), overrides)
    assert ignored_changes(cfg.model) == expected


@pytest.mark.slow
def test_train_stage_warns_once_about_an_mlp_key_left_in_a_cnn_run(tmp_path: Path) -> None:
    """The queue's trap: `model.hidden` from an earlier MLP experiment, now under model.type cnn."""
    project = stage_dir(tmp_path, params={"model.type": "cnn", "model.hidden": [128, 128]})
    write_prepared(tmp_path / "data" / "prepared", {"train": 40, "val": 0, "test": 20})
    result = project.run("train")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("train: warning")]
    assert warnings == ["train: warning: model.hidden = [128, 128] has no effect with model.type = cnn"]
    assert (tmp_path / "models" / "model.keras").is_file()  # a warning, not an error: it trained


@pytest.mark.slow
def test_train_stage_with_the_shipped_params_prints_no_warning(tmp_path: Path) -> None:
    project = stage_dir(tmp_path)
    write_prepared(tmp_path / "data" / "prepared", {"train": 40, "val": 0, "test": 20})
    result = project.run("train")
    assert result.returncode == 0, result.stderr
    assert "train: warning" not in result.stderr, result.stderr
