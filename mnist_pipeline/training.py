"""Deterministic Keras training, several times faster than `model.fit`, logged per epoch with dvclive.

Why not `model.fit`: for the tutorial's small MLP nearly all of fit's time is per-step overhead
(its tf.data pipeline, Keras metric objects, Python between steps), about 1.3 ms a step on two
cores, while the arithmetic of a step takes microseconds. Here a whole epoch is one call of a
`tf.function`: a graph loop that gathers each shuffled batch from the data set held as one tensor
and runs the step fit runs (forward with training=True, the compiled loss with the model's own
regularisation losses, the optimizer's `apply`, so learning-rate schedules, dropout and batch
normalisation behave as in fit), keeping the epoch's loss and accuracy as loop values instead of
metric variables. Same model, optimizer, batch size, epochs and number of gradient steps; only the
overhead goes. Per-epoch logs still go through dvclive's own Keras callback, which we drive.
docs/performance.md has the measurements and what else was tried (XLA, steps_per_execution).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mnist_pipeline import progress
from mnist_pipeline.distribute import check_batch_size, make_strategy
from mnist_pipeline.models import build_model, make_optimizer

if TYPE_CHECKING:
    from mnist_pipeline.config import ModelConfig, TrainConfig
    from mnist_pipeline.datasets import DatasetSpec

# Updates of the live bar per epoch on a terminal; CI logs get one line per epoch and one call per epoch.
BAR_UPDATES = 20

EpochFn = Callable[[np.ndarray, np.ndarray], tuple[float, float]]


def set_cpu_threads(threads: int) -> None:
    """TensorFlow's thread pools; 0 keeps its default (one thread per core).

    Small ops run faster inline than handed to a pool. The setting only takes effect before
    TensorFlow's first op in a process; later (a second training in one process) it is left alone.
    """
    if threads <= 0 or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        progress.say(f"train: train.cpu_threads = {threads} not applied: TensorFlow already started in this process")


class BackgroundDVCLiveCallback(DVCLiveCallback):
    """dvclive's Keras callback, its `Live` built on a helper thread while the first epoch trains.

    Building a `Live` opens the DVC repo (imports and git reads: about 0.5 s of CPU), pure Python
    that needs no training result; the epoch loop runs in TensorFlow without the GIL, so the two
    overlap on a second core. The first `live` access (end of epoch 1) waits for it if needed.
    """

    def __init__(self, live_dir: Path) -> None:
        keras.callbacks.Callback.__init__(self)
        self.save_weights_only = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvclive-init")
        self._pending: Future[Live] = self._pool.submit(
            Live, dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None
        )
        self._pool.shutdown(wait=False)

    @property
    def live(self) -> Live:  # type: ignore[override]
        return self._pending.result()

    @live.setter
    def live(self, value: Live) -> None:  # DVCLiveCallback's API; only ever the pending one here
        raise AttributeError("BackgroundDVCLiveCallback builds its own Live")


def make_deterministic(seed: int) -> None:
    """Same seed, same data, same bytes: seeds Python, numpy and TF, and pins TF's op choices.

    Clearing the session first restarts Keras' layer-name counters, which the weights file records:
    otherwise a model trained after another one in the same process (a test, a notebook) differs."""
    keras.utils.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 one-hot targets (Keras' to_categorical gives float64: twice the memory, cast again later)."""
    return np.eye(n_classes, dtype=np.float32)[labels]


def batch_plan(n: int, batch_size: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's order (shuffled by `rng`, or in order without one): full batches as rows of an
    int32 (steps, batch) array, plus the partial last batch."""
    order = (rng.permutation(n) if rng is not None else np.arange(n)).astype(np.int32)
    full = n // batch_size * batch_size
    return order[:full].reshape(-1, batch_size), order[full:]


def _accuracy_sum(y: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Correct predictions in the batch, as Keras' "accuracy" counts them for one-hot targets."""
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(y_pred, -1), tf.argmax(y, -1)), tf.float32))


def make_epoch_fn(model: keras.Model, x: tf.Tensor, y: tf.Tensor, batch_size: int, train: bool) -> EpochFn:
    """A compiled function running the batches it is given (one epoch or a slice of one).

    Returns the sums of loss x batch size and of correct predictions, so any split of an epoch
    into calls gives the same weights and the same epoch means.
    """

    def step(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if not train:
            y_pred = model(xb, training=False)
            loss = model.compute_loss(x=xb, y=yb, y_pred=y_pred, training=False)
            return loss, _accuracy_sum(yb, y_pred)
        with tf.GradientTape() as tape:
            y_pred = model(xb, training=True)
            loss = model.compute_loss(x=xb, y=yb, y_pred=y_pred, training=True)
            scaled = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply(gradients, model.trainable_variables)
        return loss, _accuracy_sum(yb, y_pred)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def run_batch(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One batch of any size: the partial last batch, traced only when the data has one."""
        loss, correct = step(tf.gather(x, idx), tf.gather(y, idx))
        return loss * tf.cast(tf.shape(idx)[0], tf.float32), correct

    @tf.function(input_signature=[tf.TensorSpec([None, batch_size], tf.int32)])
    def run_full(batches: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Full batches in a graph loop: a static batch shape, no Python between steps."""
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for i in tf.range(tf.shape(batches)[0]):
            idx = batches[i]
            loss, batch_correct = step(tf.gather(x, idx), tf.gather(y, idx))
            loss_sum += loss * batch_size
            correct += batch_correct
        return loss_sum, correct

    def run(batches: np.ndarray, tail: np.ndarray) -> tuple[float, float]:
        loss_sum, correct = run_full(batches) if len(batches) else (0.0, 0.0)
        if len(tail):
            tail_loss, tail_correct = run_batch(tail)
            loss_sum, correct = loss_sum + tail_loss, correct + tail_correct
        return float(loss_sum), float(correct)

    return run


def _run_epoch(run: EpochFn, batches: np.ndarray, tail: np.ndarray, n: int, label: str) -> dict[str, float]:
    """One epoch in one call (CI), or in BAR_UPDATES calls with a live bar (terminal): same results."""
    no_tail = np.zeros(0, np.int32)
    if not progress.interactive():
        loss_sum, correct = run(batches, tail)
        return {"loss": loss_sum / n, "accuracy": correct / n}
    steps = len(batches) + (len(tail) > 0)
    chunk = max(1, math.ceil(len(batches) / BAR_UPDATES))
    loss_sum = correct = 0.0
    with progress.bar(steps, label, unit="step") as bar:
        for start in range(0, max(len(batches), 1), chunk):
            part = batches[start : start + chunk]
            last = start + chunk >= len(batches)
            part_loss, part_correct = run(part, tail if last else no_tail)
            loss_sum, correct = loss_sum + part_loss, correct + part_correct
            bar.update(len(part) + (last and len(tail) > 0))
    return {"loss": loss_sum / n, "accuracy": correct / n}


def _compiled_loop(
    model: keras.Model,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    n_classes: int,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: keras.callbacks.CallbackList,
) -> dict[str, list[float]]:
    """The single-device path: each epoch one `tf.function` call, logs through the callbacks."""
    x_train, y_train, x_val, y_val = data
    x, y = tf.convert_to_tensor(x_train), tf.convert_to_tensor(one_hot(y_train, n_classes))
    # Build the loss and the optimizer's slots outside the graph loop (variables cannot be created inside it);
    # a training=False call changes no state and draws no random numbers.
    model.compute_loss(x=x[:1], y=y[:1], y_pred=model(x[:1], training=False), training=False)
    model.optimizer.build(model.trainable_variables)
    train_epoch = make_epoch_fn(model, x, y, batch_size, train=True)
    if len(y_val):
        xv, yv = tf.convert_to_tensor(x_val), tf.convert_to_tensor(one_hot(y_val, n_classes))
        val_epoch = make_epoch_fn(model, xv, yv, batch_size, train=False)
        val_batches, val_tail = batch_plan(len(y_val), batch_size, None)  # fit's batches: in order

    history: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed)
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(epochs):
        started = time.perf_counter()
        callbacks.on_epoch_begin(epoch)
        batches, tail = batch_plan(len(y_train), batch_size, rng)
        logs = _run_epoch(train_epoch, batches, tail, len(y_train), f"epoch {epoch + 1}/{epochs}")
        if len(y_val):
            val_logs = _run_epoch(val_epoch, val_batches, val_tail, len(y_val), "validation")
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, logs)
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        progress.say(f"epoch {epoch + 1}/{epochs} - {time.perf_counter() - started:.1f}s - {shown}")
        if model.stop_training:
            break
    callbacks.on_train_end()
    return history


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spec: DatasetSpec,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    live_dir: Path | None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build, compile and train the model; returns it with the per-epoch history (as fit's History).

    `live_dir` None logs nothing: a worker of a multi-worker cluster that is not the chief.
    With `train.strategy` other than `default`, Keras' own `fit` runs under the strategy (the
    compiled loop above is single-device); `train.batch_size` is then the global batch.
    """
    set_cpu_threads(train_cfg.cpu_threads)
    epochs, batch_size = train_cfg.epochs, train_cfg.batch_size
    # Before any model: multi_worker sets up its collectives when created.
    strategy = make_strategy(train_cfg.strategy)
    make_deterministic(train_cfg.seed)
    total_steps = epochs * math.ceil(len(y_train) / batch_size)
    with strategy.scope():
        model = build_model(model_cfg, spec)
        model.compile(
            optimizer=make_optimizer(train_cfg.optimizer, train_cfg.learning_rate, train_cfg.lr_schedule, total_steps),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
    loggers: list[keras.callbacks.Callback] = []
    if live_dir is not None:
        loggers.append(BackgroundDVCLiveCallback(live_dir))
    if train_cfg.strategy == "default":
        callbacks = keras.callbacks.CallbackList(loggers, model=model)
        data = (x_train, y_train, x_val, y_val)
        history = _compiled_loop(model, data, spec.n_classes, epochs, batch_size, train_cfg.seed, callbacks)
        return model, history
    check_batch_size(batch_size, strategy)
    # Says how many replicas train in step: each worker of a cluster prints it, so a log shows the cluster formed.
    progress.say(f"train: strategy {train_cfg.strategy}, {strategy.num_replicas_in_sync} replicas in sync")
    fitted = model.fit(
        x_train,
        one_hot(y_train, spec.n_classes),
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x_val, one_hot(y_val, spec.n_classes)) if len(y_val) else None,
        callbacks=loggers,
        verbose=1 if progress.interactive() else 2,
    )
    return model, {key: [float(v) for v in values] for key, values in fitted.history.items()}
