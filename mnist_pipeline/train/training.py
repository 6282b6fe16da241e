"""Build, compile and train the model named by params, deterministically, logged per epoch with dvclive.

The single-device path trains with the compiled loop of `mnist_pipeline.train.loop` (fit's steps without
fit's per-step overhead); a distribution strategy trains with Keras' own `fit`. Either way the same
callback writes dvclive's files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from dvclive import Live

from mnist_pipeline.core import progress
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import read_rows
from mnist_pipeline.train import cpu_kernels
from mnist_pipeline.train.checkpoint import Checkpoints, capture
from mnist_pipeline.train.distribute import check_batch_size, make_strategy
from mnist_pipeline.train.loop import Diverged, Rows, fit_compiled, fit_streamed
from mnist_pipeline.train.models import make_loss, make_optimizer
from mnist_pipeline.train.registry import build_model
from mnist_pipeline.train.tensorflow_runtime import keras, set_threads, tf
from mnist_pipeline.train.whitening import SAMPLE_IMAGES, patch_whitening_filters

if TYPE_CHECKING:
    from mnist_pipeline.core.config import ModelConfig, TrainConfig
    from mnist_pipeline.prepared import PreparedSpec


def set_cpu_threads(threads: int) -> None:
    """TensorFlow's thread pools, as `train.cpu_threads` says.

    A sum split over another number of threads rounds differently, so the count is a param, never the
    core count. It takes effect only before TensorFlow's first op in a process; later (a second training
    in one process) it is left alone, and said.
    """
    if not set_threads(threads):
        progress.say(f"train: train.cpu_threads = {threads} not applied: TensorFlow already started in this process")


def dvclive_metric_name(key: str) -> str:
    """A Keras log key as dvclive's Keras integration names it: `val_loss` is `eval/loss`, `loss` is `train/loss`."""
    return "eval/" + key.removeprefix("val_") if key.startswith("val_") else "train/" + key


class LiveLogger(keras.callbacks.Callback):
    """Each epoch's logs to dvclive through its public API: one `log_metric` per key, then `next_step`.

    Writes what dvclive's own Keras callback writes (metrics.json, plots/metrics/{train,eval}/*.tsv).
    Its `Live` is built on a helper thread while the first epoch trains: building one opens the DVC
    repo (imports and git reads, about 0.5 s of CPU), pure Python that needs no training result, and
    the epoch loop runs in TensorFlow without the GIL, so the two overlap on a second core. The end
    of the first epoch waits for it if needed.

    `replay` holds the logs of epochs trained before a resumed run started: they are logged again,
    the same calls in the same order, so the files come out as if the run had never stopped.
    """

    def __init__(self, live_dir: Path, replay: Mapping[str, Sequence[float]] | None = None) -> None:
        super().__init__()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvclive-init")
        self._live: Future[Live] = pool.submit(self._open, live_dir, dict(replay or {}))
        pool.shutdown(wait=False)

    @staticmethod
    def _open(live_dir: Path, replay: dict[str, Sequence[float]]) -> Live:
        live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        for epoch in range(len(next(iter(replay.values()), []))):
            for key, values in replay.items():
                live.log_metric(dvclive_metric_name(key), values[epoch])
            live.next_step()
        return live

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        live = self._live.result()
        for key, value in (logs or {}).items():
            live.log_metric(dvclive_metric_name(key), value)
        live.next_step()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._live.result().end()

    def settle(self) -> None:
        """Wait for the helper thread, whatever it ends in: after a failed run the caller deletes the
        folder, and a `Live` still being built would create it again."""
        wait([self._live])


class SaveCheckpoint(keras.callbacks.Callback):
    """After each epoch, the state the next one depends on (train.checkpoint): a killed run resumes there.

    Added after the logger, so an epoch is checkpointed once its logs are written. `rng` is the
    Generator the loop draws batch orders from; `history` the logs of epochs trained before this run.
    """

    def __init__(self, checkpoints: Checkpoints, rng: np.random.Generator, history: Mapping[str, Sequence[float]]):
        super().__init__()
        self._checkpoints, self._rng = checkpoints, rng
        self._history = {key: list(values) for key, values in history.items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            self._history.setdefault(key, []).append(value)
        self._checkpoints.save(capture(self.model, self._rng, epoch + 1, self._history))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._checkpoints.wait()  # the last epoch's checkpoint is in place before any output is written


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


def whitened_first_conv(model_cfg: ModelConfig, spec: PreparedSpec, x_train: np.ndarray) -> np.ndarray | None:
    """The fixed first convolution's filters (`model.cnn.first_conv: whitened`), from the first training
    images (read, not mapped: a memory-mapped split stays out of memory), or None when it is trained."""
    if model_cfg.type != "cnn" or model_cfg.cnn.first_conv != "whitened":
        return None
    cnn = model_cfg.cnn
    stride = 2 if cnn.strided_blocks >= 1 else 1
    sample = read_rows(x_train, 0, SAMPLE_IMAGES)
    return patch_whitening_filters(sample, spec.array_shape, cnn.kernel_size, stride, cnn.filters[0])


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spec: PreparedSpec,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    live_dir: Path | None,
    checkpoints: Checkpoints | None = None,
    streamed: bool = False,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build, compile and train the model; returns it with the per-epoch history (as fit's History).

    `live_dir` None logs nothing: a worker of a multi-worker cluster that is not the chief.
    With `train.strategy` `default` the compiled loop trains (mnist_pipeline.train.loop, single-device);
    with any other, Keras' own `fit` runs under the strategy and `train.batch_size` is the global batch.
    `checkpoints` (compiled loop only): continue from the epoch it holds, if any, and save one after
    every epoch; the history returned covers every epoch, those of the interrupted run included.
    `streamed`: the images are past `train.memory_budget_mb`, as `prepared.over_budget` decided before they were
    loaded memory-mapped (`load_split(mmap=True)`): they are streamed from disk a window of an eighth of the
    budget at a time (`loop.fit_streamed`), a shuffled order of its own, deterministic for the seed and
    resumable, so not the in-memory run's bytes.
    """
    if train_cfg.strategy != "default" and streamed:
        raise PipelineError(
            f"params.yaml: train.strategy = {train_cfg.strategy}: the training data ({mib(x_train, x_val)}) exceed "
            f"train.memory_budget_mb = {train_cfg.memory_budget_mb}, and only the default strategy streams them "
            "from disk: expected train.strategy default or a larger train.memory_budget_mb")
    set_cpu_threads(train_cfg.cpu_threads)
    if not cpu_kernels.choose(train_cfg.cpu_kernels, train_cfg.cpu_threads):
        progress.say(f"train: train.cpu_kernels = {train_cfg.cpu_kernels} not applied: TensorFlow already started "
                     "in this process with other kernels")
    epochs, batch_size = train_cfg.epochs, train_cfg.batch_size
    # Before any model: multi_worker sets up its collectives when created.
    strategy = make_strategy(train_cfg.strategy)
    make_deterministic(train_cfg.seed)
    total_steps = epochs * math.ceil(len(y_train) / batch_size)
    fixed_filters = whitened_first_conv(model_cfg, spec, x_train)
    with strategy.scope():
        model = build_model(model_cfg, spec)
        if fixed_filters is not None:
            next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)).set_weights([fixed_filters])
        model.compile(
            optimizer=make_optimizer(train_cfg.optimizer, train_cfg.learning_rate, train_cfg.lr_schedule, total_steps),
            loss=make_loss(train_cfg.label_smoothing),
            metrics=["accuracy"],
        )
    if streamed:
        rows = rows_of(x_train, y_train)
        val_rows = rows_of(x_val, y_val) if len(y_val) else None
        window = window_rows(train_cfg, rows.row_bytes)
        progress.say(f"train: the training data ({mib(x_train, x_val)}) exceed train.memory_budget_mb = "
                     f"{train_cfg.memory_budget_mb}: streaming them from disk, {window} images at a time")

        def fit_streaming(callbacks: list[keras.callbacks.Callback], rng: np.random.Generator, start: int) -> History:
            return fit_streamed(model, rows, spec.n_classes, batch_size=batch_size, epochs=epochs, seed=rng,
                                window_rows=window, validation=val_rows, callbacks=callbacks, initial_epoch=start)

        return model, _train_compiled(model, train_cfg, fit_streaming, live_dir, checkpoints)
    targets = one_hot(y_train, spec.n_classes)
    validation = (x_val, one_hot(y_val, spec.n_classes)) if len(y_val) else None
    if train_cfg.strategy == "default":

        def fit_in_memory(callbacks: list[keras.callbacks.Callback], rng: np.random.Generator, start: int) -> History:
            return fit_compiled(model, x_train, targets, batch_size=batch_size, epochs=epochs, seed=rng,
                                validation_data=validation, callbacks=callbacks, initial_epoch=start)

        return model, _train_compiled(model, train_cfg, fit_in_memory, live_dir, checkpoints)
    return model, _train_under_strategy(model, strategy, train_cfg, x_train, targets, validation, live_dir)


# Of the memory budget, the share one window of streamed images takes: a window is read while the one
# before trains, and TensorFlow holds a copy of the one training, so the images in memory stay well inside it.
WINDOW_SHARE = 8


def mib(*images: np.ndarray) -> str:
    return f"{sum(int(a.nbytes) for a in images) / (1 << 20):,.0f} MiB"


def window_rows(train_cfg: TrainConfig, row_bytes: int) -> int:
    """Images per streamed window: an eighth of the memory budget (at least one batch)."""
    return max(train_cfg.batch_size, (train_cfg.memory_budget_mb << 20) // WINDOW_SHARE // max(1, row_bytes))


def rows_of(images: np.ndarray, labels: np.ndarray) -> Rows:
    """A split for the streaming loop: its images read a range at a time (`read_rows`: positioned reads
    from a memory-mapped split), its labels in memory."""

    def read(start: int, stop: int, out: np.ndarray) -> np.ndarray:
        return read_rows(images, start, stop, out)

    return Rows(read, np.asarray(labels), tuple(images.shape[1:]), images.dtype)


Validation = tuple[np.ndarray, np.ndarray] | None
History = dict[str, list[float]]
Fit = Callable[[list[keras.callbacks.Callback], np.random.Generator, int], History]


def _train_compiled(
    model: keras.Model,
    train_cfg: TrainConfig,
    fit: Fit,
    live_dir: Path | None,
    checkpoints: Checkpoints | None,
) -> History:
    """The single-device path (`fit`: the compiled loop in memory or streamed), resumed from a checkpoint when
    there is one. Both loops draw each epoch's order from the Generator saved in the checkpoint."""
    epochs = train_cfg.epochs
    rng = np.random.default_rng(train_cfg.seed)  # the batch orders: part of a checkpoint
    resumed = checkpoints.resume(model, rng, epochs) if checkpoints is not None else None
    start, earlier = (resumed.epoch, resumed.history) if resumed is not None else (0, {})
    callbacks: list[keras.callbacks.Callback] = [] if live_dir is None else [LiveLogger(live_dir, replay=earlier)]
    if checkpoints is not None:
        callbacks.append(SaveCheckpoint(checkpoints, rng, earlier))
    try:
        history = fit(callbacks, rng, start)
    except Diverged as e:
        rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        raise PipelineError(
            f"train: the loss became {e.loss} at epoch {e.epoch}/{epochs}, step {e.step}/{e.steps} "
            f"(learning rate {rate:g}): training diverged, so no model was saved and the previous outputs "
            "are kept; try a smaller train.learning_rate"
        ) from None
    finally:
        for callback in callbacks:
            if isinstance(callback, LiveLogger):
                callback.settle()
    keys = dict.fromkeys([*earlier, *history])
    return {key: [*earlier.get(key, []), *history.get(key, [])] for key in keys}


def _train_under_strategy(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train_cfg: TrainConfig,
    x_train: np.ndarray,
    targets: np.ndarray,
    validation: Validation,
    live_dir: Path | None,
) -> dict[str, list[float]]:
    """Keras' own `fit` under a tf.distribute strategy; `train.batch_size` is the global batch."""
    loggers: list[keras.callbacks.Callback] = [] if live_dir is None else [LiveLogger(live_dir)]
    check_batch_size(train_cfg.batch_size, strategy)
    # Says how many replicas train in step: each worker of a cluster prints it, so a log shows the cluster formed.
    progress.say(f"train: strategy {train_cfg.strategy}, {strategy.num_replicas_in_sync} replicas in sync")
    fitted = model.fit(
        x_train,
        targets,
        epochs=train_cfg.epochs,
        batch_size=train_cfg.batch_size,
        validation_data=validation,
        callbacks=loggers,
        verbose=1 if progress.interactive() else 2,
    )
    return {key: [float(v) for v in values] for key, values in fitted.history.items()}
