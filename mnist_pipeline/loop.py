"""The compiled training loop: the steps of Keras' `model.fit`, without fit's per-step overhead.

For the tutorial's small MLP nearly all of fit's time is per-step overhead (its tf.data pipeline,
Keras metric objects, Python between steps), about 1.3 ms a step on two cores, while the
arithmetic of a step takes microseconds. Here a whole epoch is one call of a `tf.function`: a graph
loop that gathers each batch from the data set held as one tensor and runs the step fit runs
(forward with training=True, the compiled loss with the model's own regularisation losses, the
optimizer's `apply`, so learning-rate schedules, dropout and batch normalisation behave as in fit),
keeping the epoch's loss and accuracy as loop values instead of metric variables. Same batches,
same steps, same weights as fit (tests/test_loop.py); only the overhead goes.

This module knows nothing of params, data sets or dvclive: it takes a compiled model, arrays and
Keras callbacks, as `fit` does. docs/performance.md has the measurements and what else was tried.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from mnist_pipeline import progress

# Updates of the live bar per epoch on a terminal; CI logs get one line per epoch and one call per epoch.
BAR_UPDATES = 20

EpochFn = Callable[[np.ndarray, np.ndarray], tuple[float, float]]


class Diverged(ArithmeticError):
    """The loss stopped being a finite number: training stops at that step rather than save a NaN model."""

    def __init__(self, loss: float, step: int) -> None:
        super().__init__(f"loss {loss} at step {step}")
        self.loss, self.step = loss, step
        self.epoch, self.steps = 0, 0  # filled in by fit_compiled


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
    def run_full(batches: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Full batches in a graph loop: a static batch shape, no Python between steps.

        Stops after the first step whose loss is not finite, and says how many steps ran.
        """
        loss_sum, correct, steps = tf.constant(0.0), tf.constant(0.0), tf.constant(0)
        for i in tf.range(tf.shape(batches)[0]):
            idx = batches[i]
            loss, batch_correct = step(tf.gather(x, idx), tf.gather(y, idx))
            loss_sum += loss * batch_size
            correct += batch_correct
            steps += 1
            if not tf.math.is_finite(loss):
                break
        return loss_sum, correct, steps

    def run(batches: np.ndarray, tail: np.ndarray) -> tuple[float, float]:
        loss_sum, correct, steps = run_full(batches) if len(batches) else (0.0, 0.0, 0)
        if not math.isfinite(float(loss_sum)):
            raise Diverged(float(loss_sum), int(steps))
        if len(tail):
            tail_loss, tail_correct = run_batch(tail)
            loss_sum, correct = loss_sum + tail_loss, correct + tail_correct
            if not math.isfinite(float(tail_loss)):
                raise Diverged(float(tail_loss), len(batches) + 1)
        return float(loss_sum), float(correct)

    return run


def run_epoch(run: EpochFn, batches: np.ndarray, tail: np.ndarray, n: int, label: str) -> dict[str, float]:
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
            try:
                part_loss, part_correct = run(part, tail if last else no_tail)
            except Diverged as e:
                raise Diverged(e.loss, start + e.step) from None
            loss_sum, correct = loss_sum + part_loss, correct + part_correct
            bar.update(len(part) + (last and len(tail) > 0))
    return {"loss": loss_sum / n, "accuracy": correct / n}


def fit_compiled(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    epochs: int,
    seed: int | np.random.Generator | None,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
) -> dict[str, list[float]]:
    """`model.fit(x, y, batch_size, epochs, validation_data, callbacks)` as compiled epochs; fit's History dict.

    The model must be compiled with a loss on one-hot targets `y` (accuracy counts argmax matches).
    Each epoch's batch order is a permutation drawn from `numpy.random.default_rng(seed)`; `seed`
    None keeps the data's order (fit's `shuffle=False`). A Generator as `seed` is drawn from itself, so
    the caller can save its state between epochs. `initial_epoch` is fit's: the epochs before it were
    trained earlier (a resumed run, whose caller restored the model, optimizer and Generator); the
    History holds only the epochs run here. Validation runs in order with the same
    batch size, as fit's does. Callbacks get `on_train_begin`, `on_epoch_begin/end` with fit's log
    keys, and `on_train_end`; `model.stop_training` is honoured.
    """
    tx, ty = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    # Build the loss and the optimizer's slots outside the graph loop (variables cannot be created inside it);
    # a training=False call changes no state and draws no random numbers.
    model.compute_loss(x=tx[:1], y=ty[:1], y_pred=model(tx[:1], training=False), training=False)
    model.optimizer.build(model.trainable_variables)
    train_epoch = make_epoch_fn(model, tx, ty, batch_size, train=True)
    validate: Callable[[], dict[str, float]] | None = None
    if validation_data is not None and len(validation_data[1]):
        xv, yv = (tf.convert_to_tensor(a) for a in validation_data)
        n_val = len(validation_data[1])
        val_epoch = make_epoch_fn(model, xv, yv, batch_size, train=False)
        val_batches, val_tail = batch_plan(n_val, batch_size, None)  # fit's validation batches: in order

        def validate_epoch() -> dict[str, float]:
            return run_epoch(val_epoch, val_batches, val_tail, n_val, "validation")

        validate = validate_epoch

    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    history: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed) if seed is not None else None
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        batches, tail = batch_plan(len(y), batch_size, rng)
        try:
            logs = run_epoch(train_epoch, batches, tail, len(y), f"epoch {epoch + 1}/{epochs}")
        except Diverged as e:
            e.epoch, e.steps = epoch + 1, len(batches) + (len(tail) > 0)
            raise
        if validate is not None:
            logs.update({f"val_{k}": v for k, v in validate().items()})
        callback_list.on_epoch_end(epoch, logs)
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        progress.say(f"epoch {epoch + 1}/{epochs} - {time.perf_counter() - started:.1f}s - {shown}")
        if model.stop_training:
            break
    callback_list.on_train_end()
    return history
