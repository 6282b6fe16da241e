"""The compiled training loop: deterministic, seed-sensitive, fit-compatible history and dvclive files.

Trains for real (TensorFlow, small slices of real MNIST); each training takes a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.core.config import Config, with_overrides
from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.prepared import idx_spec, load_split
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import write_splits
from mnist_pipeline.train.registry import load_config
from mnist_pipeline.train.tensorflow_runtime import keras
from tests.conftest import PROJECT_ROOT, subprocess_env

MNIST = idx_spec(DATASETS["mnist"])
# 1,000 images at batch 32 leave a partial last batch of 8: the tail path runs every epoch.
N_TRAIN, N_VAL = 1000, 200


def config_with(values: dict[str, Any]) -> Config:
    """The project's params.yaml with some values changed, validated like a stage's config."""
    return with_overrides(load_config(PROJECT_ROOT / "params.yaml"), values)


def write_mirror_splits(mirror: Path, n_train: int, n_val: int, prepared_dir: Path) -> None:
    """The preprocess stage's files for the first images of real MNIST: its `write_splits` on the mirror's .gz files."""
    folder = mirror / "mnist"
    raw = {
        "train_images": read_idx(folder / TRAIN_IMAGES, "images"),
        "train_labels": read_idx(folder / TRAIN_LABELS, "labels"),
        "test_images": read_idx(folder / TEST_IMAGES, "images"),
        "test_labels": read_idx(folder / TEST_LABELS, "labels"),
    }
    limits = {"preprocess.val_size": n_val, "preprocess.seed": 0, "preprocess.train_limit": n_train + n_val,
              "preprocess.test_limit": 10}
    write_splits(raw, config_with(limits).preprocess, prepared_dir, MNIST)


def mirror_splits(mirror: Path, n_train: int, n_val: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The preprocess stage's arrays for the first images of real MNIST (`write_mirror_splits`), read back
    into memory as the train stage reads them."""
    with tempfile.TemporaryDirectory() as prepared_dir:
        write_mirror_splits(mirror, n_train, n_val, Path(prepared_dir))
        return {split: load_split(prepared_dir, split, MNIST, min_images=0) for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def splits(mirror_root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return mirror_splits(mirror_root, N_TRAIN, N_VAL)


def train(tmp_path: Path, splits: dict, name: str, with_val: bool = True, **values: Any) -> tuple[Any, dict, Path]:
    from mnist_pipeline.train.training import train_model

    cfg = config_with({"train.epochs": 2, **values})
    x_val, y_val = splits["val"] if with_val else (splits["val"][0][:0], splits["val"][1][:0])
    live = tmp_path / name
    model, history = train_model(cfg.model, cfg.train, MNIST, *splits["train"], x_val, y_val, live)
    return model, history, live


def weights_digest(model: Any) -> str:
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def test_same_seed_same_weights_and_history(tmp_path: Path, splits: dict) -> None:
    first, history_a, _ = train(tmp_path, splits, "a")
    second, history_b, _ = train(tmp_path, splits, "b")
    assert weights_digest(first) == weights_digest(second)
    assert history_a == history_b


def test_different_seed_different_weights(tmp_path: Path, splits: dict) -> None:
    first, _, _ = train(tmp_path, splits, "a", **{"train.seed": 0})
    second, _, _ = train(tmp_path, splits, "b", **{"train.seed": 1})
    assert weights_digest(first) != weights_digest(second)


def test_history_matches_fit_keys_and_learns(tmp_path: Path, splits: dict) -> None:
    model, history, live = train(tmp_path, splits, "live")
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 2 for values in history.values())
    assert history["loss"][1] < history["loss"][0]
    assert history["accuracy"][1] > 0.5
    # The loop's validation numbers are Keras' own evaluate on the same data.
    x_val, y_val = splits["val"]
    loss, accuracy = model.evaluate(x_val, np.eye(10, dtype=np.float32)[y_val], batch_size=32, verbose=0)
    assert history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history["val_loss"][-1] == pytest.approx(loss, rel=1e-4)

    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["train"]["accuracy"] == pytest.approx(history["accuracy"][-1])
    assert metrics["eval"]["loss"] == pytest.approx(history["val_loss"][-1])
    for split in ("train", "eval"):
        for metric in ("loss", "accuracy"):
            rows = (live / "plots" / "metrics" / split / f"{metric}.tsv").read_text().splitlines()
            assert rows[0] == f"step\t{metric}" and len(rows) == 3


def test_no_validation(tmp_path: Path, splits: dict) -> None:
    _, history, live = train(tmp_path, splits, "live", with_val=False)
    assert set(history) == {"loss", "accuracy"}
    assert not (live / "plots" / "metrics" / "eval").exists()


def test_dropout_schedule_and_other_optimizer(tmp_path: Path, splits: dict) -> None:
    """Dropout draws (training=True), a one-cycle schedule and SGD all run inside the graph loop, deterministically."""
    values = {"model.dropout": 0.2, "train.lr_schedule": "one_cycle", "train.optimizer": "sgd",
              "train.learning_rate": 0.05}
    first, history, _ = train(tmp_path, splits, "a", **values)
    second, _, _ = train(tmp_path, splits, "b", **values)
    assert weights_digest(first) == weights_digest(second)
    # The schedule ended at its last step: one optimizer step per batch, tail included (2 epochs x 32 batches).
    assert int(first.optimizer.iterations.numpy()) == 2 * 32
    assert history["loss"][1] < history["loss"][0]


def smoothed_target_entropy(smoothing: float, n_classes: int) -> float:
    """The entropy of a smoothed one-hot target: no prediction's cross-entropy against it can be lower."""
    other = smoothing / n_classes
    return float(-(1 - smoothing + other) * np.log(1 - smoothing + other) - (n_classes - 1) * other * np.log(other))


def test_label_smoothing_keeps_the_loss_above_the_smoothed_targets_entropy(tmp_path: Path, splits: dict) -> None:
    """With smoothing the loop trains against softened targets: the epoch loss cannot fall below their entropy,
    which the same training with plain one-hot targets does fall below."""
    values = {"train.epochs": 3, "train.learning_rate": 0.003}
    floor = smoothed_target_entropy(0.3, MNIST.n_classes)
    _, plain, _ = train(tmp_path, splits, "plain", **values)
    model, smoothed, _ = train(tmp_path, splits, "smoothed", **values, **{"train.label_smoothing": 0.3})
    assert plain["loss"][-1] < floor
    assert min(smoothed["loss"] + smoothed["val_loss"]) >= floor
    assert smoothed["accuracy"][-1] > 0.8  # it still learns the digits
    # Saved with its smoothed loss object, the model loads as the stages load it, and predicts the same.
    from mnist_pipeline.train.models import load_model, save_model_deterministic

    save_model_deterministic(model, tmp_path / "model.keras")
    x_val = splits["val"][0][:50]
    np.testing.assert_array_equal(load_model(tmp_path / "model.keras", MNIST).predict(x_val, verbose=0),
                                  model.predict(x_val, verbose=0))


def test_cnn_with_batch_norm_trains(tmp_path: Path, splits: dict) -> None:
    """Batch-norm moving statistics are updated by the loop (they would stay 0/1 otherwise)."""
    values = {"model.type": "cnn", "model.cnn.filters": [4], "model.cnn.dense": 8, "train.epochs": 1}
    model, history, _ = train(tmp_path, splits, "a", **values)
    norm = next(layer for layer in model.layers if "batch_normalization" in layer.name)
    assert np.abs(norm.moving_mean.numpy()).max() > 0
    assert np.isfinite(history["loss"][0])


def test_one_line_per_epoch_in_logs(tmp_path: Path, mirror_root: Path) -> None:
    """Not a terminal: each epoch prints exactly one progress line (stderr), and no bar."""
    code = (
        "from pathlib import Path\n"
        "from mnist_pipeline.core.datasets import DATASETS\n"
        "from mnist_pipeline.prepared import idx_spec\n"
        "from mnist_pipeline.train.training import train_model\n"
        "from tests.test_training import config_with, mirror_splits\n"
        f"s = mirror_splits(Path({str(mirror_root)!r}), 500, 100)\n"
        "c = config_with({'train.epochs': 3})\n"
        "spec = idx_spec(DATASETS['mnist'])\n"
        f"train_model(c.model, c.train, spec, *s['train'], *s['val'], Path({str(tmp_path / 'live')!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val_accuracy" in line for line in lines)


def test_terminal_chunks_give_identical_weights(tmp_path: Path, splits: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal an epoch runs in loop.BAR_UPDATES calls to move the bar; the weights must not notice."""
    from mnist_pipeline.core import progress

    plain, history_plain, _ = train(tmp_path, splits, "a")
    monkeypatch.setattr(progress, "interactive", lambda: True)
    chunked, history_chunked, _ = train(tmp_path, splits, "b")
    assert weights_digest(plain) == weights_digest(chunked)
    assert history_plain["val_accuracy"] == history_chunked["val_accuracy"]
    assert history_plain["loss"] == pytest.approx(history_chunked["loss"], rel=1e-6)


def dvclive_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("driver", ["fit", "loop"])
def test_live_logger_writes_the_bytes_dvclives_keras_callback_writes(tmp_path: Path, splits: dict, driver: str) -> None:
    """Our callback on dvclive's public API and dvclive's own Keras callback, fed the same epochs, write the
    same files byte for byte: metric names (train/..., eval/...), steps, the summary. Both drivers: the compiled
    loop (default strategy) and Keras' fit (any other strategy)."""
    from dvclive.keras import DVCLiveCallback

    from mnist_pipeline.train.loop import fit_compiled
    from mnist_pipeline.train.training import LiveLogger, one_hot

    (x, y), (x_val, y_val) = splits["train"], splits["val"]
    y, y_val = one_hot(y[:256], 10), one_hot(y_val[:64], 10)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    callbacks = [
        LiveLogger(tmp_path / "ours"),
        DVCLiveCallback(dir=str(tmp_path / "dvclive"), dvcyaml=False, save_dvc_exp=False, report=None),
    ]
    if driver == "fit":
        model.fit(x[:256], y, batch_size=32, epochs=3, validation_data=(x_val[:64], y_val), callbacks=callbacks,
                  verbose=0)
    else:
        fit_compiled(model, x[:256], y, batch_size=32, epochs=3, seed=0, validation_data=(x_val[:64], y_val),
                     callbacks=callbacks)
    ours, theirs = dvclive_files(tmp_path / "ours"), dvclive_files(tmp_path / "dvclive")
    assert {"metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/eval/accuracy.tsv"} <= set(theirs)
    assert ours == theirs
