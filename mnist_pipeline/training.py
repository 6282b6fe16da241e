"""Build, compile and train the model named by params, deterministically, logged per epoch with dvclive.

The single-device path trains with the compiled loop of `mnist_pipeline.loop` (fit's steps without
fit's per-step overhead); a distribution strategy trains with Keras' own `fit`. Either way the same
callback writes dvclive's files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live

from mnist_pipeline import progress
from mnist_pipeline.checkpoint import Checkpoints, capture
from mnist_pipeline.distribute import check_batch_size, make_strategy
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.loop import Diverged, fit_compiled
from mnist_pipeline.models import build_model, make_optimizer

if TYPE_CHECKING:
    from mnist_pipeline.config import ModelConfig, TrainConfig
    from mnist_pipeline.datasets import DatasetSpec


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
    """After each epoch, the state the next one depends on (mnist_pipeline.checkpoint): a killed run resumes there.

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


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spec: DatasetSpec,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    live_dir: Path | None,
    checkpoints: Checkpoints | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build, compile and train the model; returns it with the per-epoch history (as fit's History).

    `live_dir` None logs nothing: a worker of a multi-worker cluster that is not the chief.
    With `train.strategy` `default` the compiled loop trains (mnist_pipeline.loop, single-device);
    with any other, Keras' own `fit` runs under the strategy and `train.batch_size` is the global batch.
    `checkpoints` (compiled loop only): continue from the epoch it holds, if any, and save one after
    every epoch; the history returned covers every epoch, those of the interrupted run included.
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
    targets = one_hot(y_train, spec.n_classes)
    validation = (x_val, one_hot(y_val, spec.n_classes)) if len(y_val) else None
    if train_cfg.strategy == "default":
        return model, _train_compiled(model, train_cfg, x_train, targets, validation, live_dir, checkpoints)
    return model, _train_under_strategy(model, strategy, train_cfg, x_train, targets, validation, live_dir)


Validation = tuple[np.ndarray, np.ndarray] | None


def _train_compiled(
    model: keras.Model,
    train_cfg: TrainConfig,
    x_train: np.ndarray,
    targets: np.ndarray,
    validation: Validation,
    live_dir: Path | None,
    checkpoints: Checkpoints | None,
) -> dict[str, list[float]]:
    """The single-device path: the compiled loop, resumed from a checkpoint when there is one."""
    epochs = train_cfg.epochs
    rng = np.random.default_rng(train_cfg.seed)  # the batch orders: part of a checkpoint
    resumed = checkpoints.resume(model, rng, epochs) if checkpoints is not None else None
    start, earlier = (resumed.epoch, resumed.history) if resumed is not None else (0, {})
    callbacks: list[keras.callbacks.Callback] = [] if live_dir is None else [LiveLogger(live_dir, replay=earlier)]
    if checkpoints is not None:
        callbacks.append(SaveCheckpoint(checkpoints, rng, earlier))
    try:
        history = fit_compiled(
            model,
            x_train,
            targets,
            batch_size=train_cfg.batch_size,
            epochs=epochs,
            seed=rng,
            validation_data=validation,
            callbacks=callbacks,
            initial_epoch=start,
        )
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
