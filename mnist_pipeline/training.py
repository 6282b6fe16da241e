"""Deterministic Keras training with per-epoch logs where `dvc plots` finds them (dvclive)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mnist_pipeline import progress
from mnist_pipeline.models import N_CLASSES, build_model, make_optimizer

if TYPE_CHECKING:
    from mnist_pipeline.params import Params


def make_deterministic(seed: int) -> None:
    """Same seed, same data, same bytes: seeds Python, numpy and TF, and pins TF's op choices.

    Clearing the session first restarts Keras' layer-name counters, which the weights file records:
    otherwise a model trained after another one in the same process (a test, a notebook) differs."""
    keras.utils.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train_model(
    params: Params,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    live_dir: Path,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build, compile and fit the model; returns it with the per-epoch history."""
    make_deterministic(params["train.seed"])
    model = build_model(params)
    model.compile(
        optimizer=make_optimizer(params["train.optimizer"], params["train.learning_rate"]),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = (x_val, keras.utils.to_categorical(y_val, N_CLASSES)) if len(y_val) else None
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    history = model.fit(
        x_train,
        keras.utils.to_categorical(y_train, N_CLASSES),
        epochs=params["train.epochs"],
        batch_size=params["train.batch_size"],
        validation_data=validation,
        callbacks=[DVCLiveCallback(live=live)],
        # A live bar per epoch for a person; one line per epoch in CI logs.
        verbose=1 if progress.interactive() else 2,
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}
