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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.core import progress
from mnist_pipeline.core.files import TENSOR_ALIGNMENT
from mnist_pipeline.train.tensorflow_runtime import keras, tf

# Updates of the live bar per epoch on a terminal; CI logs get one line per epoch and one call per epoch.
BAR_UPDATES = 20

# Images and targets (one-hot in memory, integer labels streamed): a tensor, or an array a call copies in.
Data = tf.Tensor | np.ndarray
# Rows `idx` of the data as the step takes them: (images, one-hot targets), in the graph.
Gather = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
# run(x, y, full batches, partial batch) -> (sum of loss x batch size, correct predictions).
BatchFn = Callable[[Data, Data, np.ndarray, np.ndarray], tuple[float, float]]
# What one call of a BatchFn takes: a piece of an epoch.
Part = tuple[Data, Data, np.ndarray, np.ndarray]


class Diverged(ArithmeticError):
    """The loss stopped being a finite number: training stops at that step rather than save a NaN model."""

    def __init__(self, loss: float, step: int) -> None:
        super().__init__(f"loss {loss} at step {step}")
        self.loss, self.step = loss, step
        self.epoch, self.steps = 0, 0  # filled in by fit_compiled


def as_tensor(array: np.ndarray) -> tf.Tensor:
    """The array as a tensor, sharing its memory where TensorFlow can (C order, aligned as `files.load_npy`
    returns arrays), else copied. The training set is read by the graph loop, never written."""
    if array.size and array.flags.c_contiguous and array.flags.writeable and array.ctypes.data % TENSOR_ALIGNMENT == 0:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.convert_to_tensor(array)


def batch_plan(n: int, batch_size: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's order (shuffled by `rng`, or in order without one): full batches as rows of an
    int32 (steps, batch) array, plus the partial last batch."""
    order = (rng.permutation(n) if rng is not None else np.arange(n)).astype(np.int32)
    full = n // batch_size * batch_size
    return order[:full].reshape(-1, batch_size), order[full:]


def _accuracy_sum(y: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Correct predictions in the batch, as Keras' "accuracy" counts them for one-hot targets."""
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(y_pred, -1), tf.argmax(y, -1)), tf.float32))


def _make_step(model: keras.Model, train: bool) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """The step fit takes on one batch (training) or its evaluation step: the batch's mean loss and correct count."""

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

    return step


def make_batch_fn(
    model: keras.Model, x_spec: tf.TensorSpec, y_spec: tf.TensorSpec, gather: Gather, batch_size: int, train: bool
) -> BatchFn:
    """The one compiled step loop: `run(x, y, batches, tail)` runs the full batches, then the partial one, of
    the rows `gather(x, y, idx)` picks (images and one-hot targets) from the data it is given.

    Data in memory and streamed windows differ only in `x`, `y` and `gather`. Returns the sums of loss x
    batch size and of correct predictions, so any split of an epoch into calls gives the same weights and
    the same epoch means.
    """
    step = _make_step(model, train)

    @tf.function(input_signature=[x_spec, y_spec, tf.TensorSpec([None], tf.int32)])
    def run_batch(x: tf.Tensor, y: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One batch of any size: the partial last batch, traced only when the data has one."""
        loss, correct = step(*gather(x, y, idx))
        return loss * tf.cast(tf.shape(idx)[0], tf.float32), correct

    @tf.function(input_signature=[x_spec, y_spec, tf.TensorSpec([None, batch_size], tf.int32)])
    def run_full(x: tf.Tensor, y: tf.Tensor, batches: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Full batches in a graph loop: a static batch shape, no Python between steps.

        Stops after the first step whose loss is not finite, and says how many steps ran.
        """
        loss_sum, correct, steps = tf.constant(0.0), tf.constant(0.0), tf.constant(0)
        for i in tf.range(tf.shape(batches)[0]):
            loss, batch_correct = step(*gather(x, y, batches[i]))
            loss_sum += loss * batch_size
            correct += batch_correct
            steps += 1
            if not tf.math.is_finite(loss):
                break
        return loss_sum, correct, steps

    def run(x: Data, y: Data, batches: np.ndarray, tail: np.ndarray) -> tuple[float, float]:
        if not len(batches) and not len(tail):  # a window whose rows all carry over to the next one
            return 0.0, 0.0
        tx, ty = tf.convert_to_tensor(x), tf.convert_to_tensor(y)  # a tensor already (in memory) is not copied
        loss_sum, correct, steps = run_full(tx, ty, batches) if len(batches) else (0.0, 0.0, 0)
        if not math.isfinite(float(loss_sum)):
            raise Diverged(float(loss_sum), int(steps))
        if len(tail):
            tail_loss, tail_correct = run_batch(tx, ty, tail)
            loss_sum, correct = loss_sum + tail_loss, correct + tail_correct
            if not math.isfinite(float(tail_loss)):
                raise Diverged(float(tail_loss), len(batches) + 1)
        return float(loss_sum), float(correct)

    return run


def make_epoch_fn(model: keras.Model, x: tf.Tensor, y: tf.Tensor, batch_size: int, train: bool) -> BatchFn:
    """`make_batch_fn` for a data set held in memory: images and one-hot targets as tensors, gathered by row."""

    def gather(x: tf.Tensor, y: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(x, idx), tf.gather(y, idx)

    return make_batch_fn(model, _spec_of(x), _spec_of(y), gather, batch_size, train)


def _spec_of(data: tf.Tensor) -> tf.TensorSpec:
    """Any number of rows shaped as `data`'s."""
    return tf.TensorSpec([None, *data.shape[1:]], data.dtype)


def run_parts(run: BatchFn, parts: Iterable[Part], steps: int, n: int, label: str) -> dict[str, float]:
    """The one epoch loop: each part's batches through `run`, the sums added up, a Diverged step counted from
    the epoch's start, the bar moved (`steps` in all). An epoch in memory is one part per bar update; a
    streamed one a part per window. Returns the epoch's mean loss and accuracy over its `n` images."""
    loss_sum = correct = 0.0
    done = 0
    with progress.bar(steps, label, unit="step") as bar:
        for x, y, batches, tail in parts:
            try:
                part_loss, part_correct = run(x, y, batches, tail)
            except Diverged as e:
                raise Diverged(e.loss, done + e.step) from None
            del x, y  # a streamed window's images go before the next window's are taken
            loss_sum, correct = loss_sum + part_loss, correct + part_correct
            ran = len(batches) + (len(tail) > 0)
            done += ran
            bar.update(ran)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def run_epoch(
    run: BatchFn, x: tf.Tensor, y: tf.Tensor, batches: np.ndarray, tail: np.ndarray, n: int, label: str
) -> dict[str, float]:
    """One epoch in memory: in one call (CI), or in BAR_UPDATES calls with a live bar (terminal): same results."""
    no_tail = np.zeros(0, np.int32)
    chunk = max(1, math.ceil(len(batches) / BAR_UPDATES) if progress.interactive() else len(batches))
    parts = ((x, y, batches[start : start + chunk], tail if start + chunk >= len(batches) else no_tail)
             for start in range(0, max(len(batches), 1), chunk))
    return run_parts(run, parts, len(batches) + (len(tail) > 0), n, label)


def _build_state(model: keras.Model, x: Data, y: Data) -> None:
    """The loss and the optimizer's slots, built on one row outside the graph loop (variables cannot be created
    inside it); a training=False call changes no state and draws no random numbers."""
    model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
    model.optimizer.build(model.trainable_variables)


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
    tx, ty = as_tensor(x), as_tensor(y)
    _build_state(model, tx[:1], ty[:1])
    train_epoch = make_epoch_fn(model, tx, ty, batch_size, train=True)
    validate: Callable[[], dict[str, float]] | None = None
    if validation_data is not None and len(validation_data[1]):
        xv, yv = (as_tensor(a) for a in validation_data)
        n_val = len(validation_data[1])
        val_epoch = make_epoch_fn(model, xv, yv, batch_size, train=False)
        val_batches, val_tail = batch_plan(n_val, batch_size, None)  # fit's validation batches: in order

        def validate_epoch() -> dict[str, float]:
            return run_epoch(val_epoch, xv, yv, val_batches, val_tail, n_val, "validation")

        validate = validate_epoch

    rng = np.random.default_rng(seed) if seed is not None else None

    def train_one(epoch: int) -> dict[str, float]:
        batches, tail = batch_plan(len(y), batch_size, rng)
        try:
            return run_epoch(train_epoch, tx, ty, batches, tail, len(y), f"epoch {epoch + 1}/{epochs}")
        except Diverged as e:
            e.epoch, e.steps = epoch + 1, len(batches) + (len(tail) > 0)
            raise

    return _run_epochs(model, train_one, validate, epochs, callbacks, initial_epoch)


def _run_epochs(
    model: keras.Model,
    train_one: Callable[[int], dict[str, float]],
    validate: Callable[[], dict[str, float]] | None,
    epochs: int,
    callbacks: Sequence[keras.callbacks.Callback],
    initial_epoch: int,
) -> dict[str, list[float]]:
    """fit's outer loop around one epoch's training: callbacks with fit's log keys, a line per epoch, the History."""
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        logs = train_one(epoch)
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


# ---------------------------------------------------------------------------------------------
# Streaming: a training set read from disk a window at a time, for data past the memory budget.

# Rows read together from disk: a block is the unit of the shuffled order's reads (one positioned read each,
# neighbouring blocks merged), small enough that a window mixes many parts of the file.
BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class Rows:
    """A data set whose images stay on disk: `read(start, stop, out)` fills `out` with images [start, stop)
    (rows as the arrays hold them, `row_bytes` each); the integer labels, one per row, are in memory."""

    read: Callable[[int, int, np.ndarray], object]
    labels: np.ndarray
    row_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize

    def load(self, runs: Sequence[tuple[int, int]], front: int = 0) -> np.ndarray:
        """The images of the row ranges `runs`, one after the other, after `front` rows left empty."""
        total = front + sum(stop - start for start, stop in runs)
        out = np.empty((total, *self.row_shape), self.dtype)
        at = front
        for start, stop in runs:
            self.read(start, stop, out[at : at + stop - start])
            at += stop - start
        return out


def window_plan(
    n: int, block_rows: int, window_rows: int, rng: np.random.Generator | None
) -> list[list[tuple[int, int]]]:
    """One epoch's windows: each a list of row ranges in file order, about `window_rows` rows in all.

    The rows are cut into blocks of `block_rows`; a permutation of the blocks drawn from `rng` (none:
    in order) is cut into windows, each read as ranges of neighbouring blocks. Training then shuffles
    each window's rows (drawn after this plan, window by window, from the same Generator), so every
    image comes once per epoch, batches mix images from across the file, and reads stay long."""
    n_blocks = -(-n // block_rows)
    order = rng.permutation(n_blocks) if rng is not None else np.arange(n_blocks)
    per_window = max(1, window_rows // block_rows)
    windows = []
    for first in range(0, n_blocks, per_window):
        runs: list[tuple[int, int]] = []
        for block in np.sort(order[first : first + per_window]).tolist():
            start, stop = block * block_rows, min(n, (block + 1) * block_rows)
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], stop)
            else:
                runs.append((start, stop))
        windows.append(runs)
    return windows


def make_window_fn(model: keras.Model, rows: Rows, n_classes: int, batch_size: int, train: bool) -> BatchFn:
    """`make_batch_fn` for data given a window at a time: `run(x, labels, batches, tail)` with a window's images
    and integer labels. Targets are made one-hot in the graph: no one-hot copy of the data set."""

    def gather(x: tf.Tensor, labels: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(x, idx), tf.one_hot(tf.gather(labels, idx), n_classes, dtype=tf.float32)

    x_spec = tf.TensorSpec([None, *rows.row_shape], tf.as_dtype(rows.dtype))
    return make_batch_fn(model, x_spec, tf.TensorSpec([None], tf.int32), gather, batch_size, train)


class _Prefetch:
    """Reads the next window on a helper thread while the current one trains (file reads and TensorFlow's
    graph both run without the GIL): at most two windows of images are in memory, plus TensorFlow's copy."""

    def __init__(self, rows: Rows, windows: Sequence[tuple[Sequence[tuple[int, int]], int]]) -> None:
        self._rows, self._windows = rows, list(windows)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-reader")

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            pending = self._pool.submit(self._rows.load, *self._windows[0]) if self._windows else None
            for i in range(len(self._windows)):
                assert pending is not None
                x = pending.result()
                if i + 1 < len(self._windows):
                    pending = self._pool.submit(self._rows.load, *self._windows[i + 1])
                yield x
                del x
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _labels_of(rows: Rows, runs: Sequence[tuple[int, int]], front: np.ndarray) -> np.ndarray:
    return np.concatenate([front, *(rows.labels[start:stop].astype(np.int32) for start, stop in runs)])


def window_parts(
    rows: Rows, windows: list[list[tuple[int, int]]], batch_size: int, rng: np.random.Generator | None,
) -> Iterator[Part]:
    """An epoch's parts over the windows: each window's rows shuffled (by `rng`; none: in order) into full
    batches, the rows that do not fill a last batch carried to the front of the next window, the remainder
    the epoch's partial batch (a part of its own). Every step sees a full batch but the last, as in memory."""
    carry_x = np.empty((0, *rows.row_shape), rows.dtype)
    carry_y = np.empty(0, np.int32)
    no_tail = np.zeros(0, np.int32)
    fronts, seen = [], 0
    for runs in windows:  # rows carried into each window: known before any is read, so reads can run ahead
        fronts.append(seen % batch_size)
        seen += sum(stop - start for start, stop in runs)
    reads = _Prefetch(rows, list(zip(windows, fronts, strict=True)))
    for runs, front, x in zip(windows, fronts, reads, strict=True):
        x[:front] = carry_x
        y = _labels_of(rows, runs, carry_y)
        fresh = len(y) - front
        order = np.concatenate([np.arange(front), front + (rng.permutation(fresh) if rng is not None
                                                           else np.arange(fresh))]).astype(np.int32)
        full = len(order) // batch_size * batch_size
        yield x, y, order[:full].reshape(-1, batch_size), no_tail
        carry_x, carry_y = x[order[full:]], y[order[full:]]
        del x, y  # the window's images go before the next window's are taken
    if len(carry_y):
        yield carry_x, carry_y, np.zeros((0, batch_size), np.int32), np.arange(len(carry_y), dtype=np.int32)


def stream_epoch(
    run: BatchFn, rows: Rows, windows: list[list[tuple[int, int]]], batch_size: int,
    rng: np.random.Generator | None, label: str,
) -> dict[str, float]:
    """One epoch over the windows (`window_parts`): ceil(N / batch) steps, as in memory."""
    n = len(rows.labels)
    return run_parts(run, window_parts(rows, windows, batch_size, rng), -(-n // batch_size), n, label)


def fit_streamed(
    model: keras.Model,
    rows: Rows,
    n_classes: int,
    *,
    batch_size: int,
    epochs: int,
    seed: int | np.random.Generator | None,
    window_rows: int,
    validation: Rows | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
) -> dict[str, list[float]]:
    """`fit_compiled` for a training set read from disk a window of about `window_rows` images at a time.

    Each epoch draws from the Generator (or seed) a permutation of 1 MiB blocks, reads them a window at a
    time (the next window read while the current one trains) and shuffles each window's images: the same
    seed gives the same batches, and the Generator's state after an epoch is all the next one needs, so
    a checkpoint resumes a streamed run as it resumes one in memory. The order is not the in-memory
    order (a permutation of the whole set), so a streamed model differs from one trained in memory.
    Validation runs in order, window by window, with fit's batches. Same callbacks and History as fit's.
    """
    block_rows = max(1, BLOCK_BYTES // rows.row_bytes)
    window_rows = max(window_rows, batch_size, block_rows)
    first = np.zeros((1, *rows.row_shape), rows.dtype)
    rows.read(0, 1, first)
    _build_state(model, first, tf.one_hot(rows.labels[:1].astype(np.int32), n_classes, dtype=tf.float32))
    train_window = make_window_fn(model, rows, n_classes, batch_size, train=True)
    validate: Callable[[], dict[str, float]] | None = None
    if validation is not None and len(validation.labels):
        val_window = make_window_fn(model, validation, n_classes, batch_size, train=False)
        n_val = len(validation.labels)
        span = max(batch_size, window_rows // batch_size * batch_size)
        val_windows = [[(start, min(n_val, start + span))] for start in range(0, n_val, span)]

        def validate_epoch() -> dict[str, float]:
            # In order, in windows of whole batches: fit's validation batches.
            return stream_epoch(val_window, validation, val_windows, batch_size, None, "validation")

        validate = validate_epoch

    rng = np.random.default_rng(seed) if seed is not None else None
    n = len(rows.labels)

    def train_one(epoch: int) -> dict[str, float]:
        windows = window_plan(n, block_rows, window_rows, rng)
        try:
            return stream_epoch(train_window, rows, windows, batch_size, rng, f"epoch {epoch + 1}/{epochs}")
        except Diverged as e:
            e.epoch, e.steps = epoch + 1, -(-n // batch_size)
            raise

    return _run_epochs(model, train_one, validate, epochs, callbacks, initial_epoch)

