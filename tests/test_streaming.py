"""Data past the memory budget: training streams them from disk, evaluation predicts them a window at a time.

Real TensorFlow on the first 1,200 images of real MNIST (1,000 to train, 200 to validate), written as
the prepared .npy files and opened memory-mapped. A budget of 1 MiB (the images take 3.6 MiB) sends
training down the streaming path: windows of one 1 MiB block (334 images), so an epoch spans several
windows, carries rows from one window to the next and ends in a partial batch.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import load_split, over_budget, read_rows, save_split, split_paths
from mnist_pipeline.train.checkpoint import Checkpoints, digest_arrays
from mnist_pipeline.train.loop import window_plan
from tests.test_training import MNIST, config_with, write_mirror_splits

N_TRAIN, N_VAL = 1000, 200
STREAMED = {"train.memory_budget_mb": 1, "train.epochs": 3}


@pytest.fixture(scope="module")
def prepared(mirror_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared splits of the first MNIST images, as preprocess writes them."""
    folder = tmp_path_factory.mktemp("prepared")
    write_mirror_splits(mirror_root, N_TRAIN, N_VAL, folder)
    return folder


def mapped(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_split(prepared, split, MNIST, min_images=0, mmap=True)


def train_streamed(prepared: Path, folder: Path, checkpoints: Checkpoints | None = None, **values: Any) -> tuple:
    """Train through the stage's own function on memory-mapped splits; the saved model's bytes and the history."""
    from mnist_pipeline.train.models import save_model_deterministic
    from mnist_pipeline.train.training import train_model

    cfg = config_with({**STREAMED, **values})
    streamed = over_budget(cfg.train.memory_budget_mb, prepared)  # the train stage's decision
    assert streamed == (cfg.train.memory_budget_mb == 1)
    (x_train, y_train), (x_val, y_val) = mapped(prepared, "train"), mapped(prepared, "val")
    model, history = train_model(cfg.model, cfg.train, MNIST, x_train, y_train, x_val, y_val, folder / "live",
                                 checkpoints, streamed=streamed)
    save_model_deterministic(model, folder / "model.keras")
    return (folder / "model.keras").read_bytes(), history, model


def test_streamed_training_learns_and_gives_the_same_bytes_twice(prepared: Path, tmp_path: Path) -> None:
    first, history, model = train_streamed(prepared, tmp_path / "a")
    second, again, _ = train_streamed(prepared, tmp_path / "b")
    assert hashlib.md5(first).hexdigest() == hashlib.md5(second).hexdigest()
    assert history == again
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.7  # ten classes: chance is 0.1
    # One optimizer step per batch, the partial last one included: ceil(1000 / 32) = 32 an epoch.
    assert int(model.optimizer.iterations.numpy()) == 3 * 32
    # The streamed validation numbers are Keras' own evaluate of the same images.
    x_val, y_val = mapped(prepared, "val")
    loss, accuracy = model.evaluate(np.array(x_val), np.eye(10, dtype=np.float32)[y_val], batch_size=32, verbose=0)
    assert history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history["val_loss"][-1] == pytest.approx(loss, rel=1e-4)


def test_streamed_training_differs_by_seed_and_from_in_memory(prepared: Path, tmp_path: Path) -> None:
    """The seed drives the streamed order; in memory (a budget the data fit) the order is another one."""
    base, _, _ = train_streamed(prepared, tmp_path / "a", **{"train.epochs": 1})
    other_seed, _, _ = train_streamed(prepared, tmp_path / "b", **{"train.epochs": 1, "train.seed": 1})
    in_memory, _, _ = train_streamed(prepared, tmp_path / "c", **{"train.epochs": 1, "train.memory_budget_mb": 1024})
    assert len({base, other_seed, in_memory}) == 3


def test_streamed_training_resumes_from_a_checkpoint_to_the_same_bytes(prepared: Path, tmp_path: Path) -> None:
    """The Generator saved after an epoch draws the next streamed order: a resumed run equals an unbroken one."""
    unbroken, history, _ = train_streamed(prepared, tmp_path / "whole")
    checkpoints = Checkpoints(tmp_path / "checkpoint.npz")
    train_streamed(prepared, tmp_path / "first", checkpoints, **{"train.epochs": 1})  # leaves epoch 1's checkpoint
    checkpoints.wait()
    assert checkpoints.path.is_file()
    resumed, resumed_history, _ = train_streamed(prepared, tmp_path / "rest", Checkpoints(checkpoints.path))
    assert resumed == unbroken
    assert resumed_history == history


def test_window_plan_reads_every_image_once_in_a_seeded_order() -> None:
    n, block, window = 1000, 64, 200
    plans = [window_plan(n, block, window, np.random.default_rng(seed)) for seed in (0, 0, 1)]
    rows = [np.concatenate([np.arange(a, b) for runs in plan for a, b in runs]) for plan in plans]
    assert np.array_equal(np.sort(rows[0]), np.arange(n))
    assert np.array_equal(rows[0], rows[1])
    assert not np.array_equal(rows[0], rows[2])
    assert all(sum(b - a for a, b in runs) <= max(window, block) for runs in plans[0])
    # Each window's ranges are in file order and merged where blocks touch.
    assert all(runs == sorted(runs) and all(x[1] < y[0] for x, y in itertools.pairwise(runs)) for runs in plans[0])


def test_predictions_on_the_memory_mapped_test_set_equal_those_in_memory(prepared: Path, tmp_path: Path) -> None:
    """evaluate's path: the ONNX model run a window of rows at a time on the memory-mapped split gives the
    probabilities of one run on the arrays in memory."""
    from mnist_pipeline.inference.onnx_model import load_model
    from mnist_pipeline.train.onnx_export import save_onnx, to_onnx
    from mnist_pipeline.train.registry import build_model
    from mnist_pipeline.train.tensorflow_runtime import keras

    keras.utils.set_random_seed(0)
    save_onnx(to_onnx(build_model(config_with({}).model, MNIST)), tmp_path / "model.onnx")
    model = load_model(tmp_path / "model.onnx", MNIST.n_pixels, MNIST.n_classes)
    x_test, _ = load_split(prepared, "test", MNIST, mmap=True)
    x_train, _ = mapped(prepared, "train")
    assert isinstance(x_test, np.memmap)
    for images in (x_test, x_train):
        in_memory = model.probabilities(np.array(images), batch_size=len(images))
        windowed = model.probabilities(images, batch_size=96)  # windows of 96 rows, a partial one at the end
        assert np.array_equal(windowed, in_memory)


def test_read_rows_reads_what_the_map_holds(prepared: Path) -> None:
    x_train, _ = mapped(prepared, "train")
    whole = np.load(split_paths(prepared, "train")[0])
    assert np.array_equal(read_rows(x_train, 0, N_TRAIN), whole)
    assert np.array_equal(read_rows(x_train, 990, 2000), whole[990:])
    out = np.empty((5, whole.shape[1]), np.float32)
    assert read_rows(x_train, 10, 15, out) is out and np.array_equal(out, whole[10:15])
    assert np.array_equal(read_rows(x_train[100:], 0, 3), whole[100:103])  # a view of the map: read through it
    # The checkpoint key's digest is the same, streamed or in memory.
    assert digest_arrays({"x": x_train}) == digest_arrays({"x": whole})


def test_streamed_checks_catch_a_nan_and_an_unknown_label(tmp_path: Path) -> None:
    """The checks of a memory-mapped split read it a chunk at a time, and still see a single bad value at its end."""
    images = np.zeros((3000, MNIST.n_pixels), np.float32)
    labels = (np.arange(3000) % 10).astype(np.uint8)
    save_split(tmp_path, "train", images, labels, MNIST)
    x_path, y_path = split_paths(tmp_path, "train")
    assert isinstance(load_split(tmp_path, "train", MNIST, mmap=True)[0], np.memmap)

    with open(x_path, "r+b") as f:  # the last pixel of the last image becomes NaN
        f.seek(-4, 2)
        f.write(np.float32(np.nan).tobytes())
    with pytest.raises(PipelineError, match=r"x_train\.npy: 1 pixel values are not finite"):
        load_split(tmp_path, "train", MNIST, mmap=True)

    save_split(tmp_path, "train", images, labels, MNIST)
    with open(y_path, "r+b") as f:  # the last label names an eleventh class
        f.seek(-1, 2)
        f.write(bytes([10]))
    with pytest.raises(PipelineError, match=r"y_train\.npy: labels must be 0-9, found 10"):
        load_split(tmp_path, "train", MNIST, mmap=True)


def test_preprocess_streamed_in_chunks_writes_the_bytes_of_preprocess_in_memory(mirror_root: Path,
                                                                                 tmp_path: Path) -> None:
    """Raw IDX images read from disk and scaled 128 at a time, with a validation split and limits: the bytes of
    the same data set loaded whole and written in one chunk."""
    from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, raw_name
    from mnist_pipeline.sources.idx import IdxItems, read_idx
    from mnist_pipeline.sources.splits import load_raw, open_raw, write_splits
    from tests.idxkit import encode_idx

    raw_dir = tmp_path / "raw"
    (raw_dir / "mnist").mkdir(parents=True)
    for name, count in ((TRAIN_IMAGES, 1300), (TRAIN_LABELS, 1300), (TEST_IMAGES, 300), (TEST_LABELS, 300)):
        kind = "images" if "images" in name else "labels"
        first = read_idx(mirror_root / "mnist" / name, kind)[:count]
        (raw_dir / "mnist" / raw_name(name)).write_bytes(encode_idx(first))
    cfg = config_with({"preprocess.val_size": 100, "preprocess.train_limit": 1200, "preprocess.test_limit": 250})
    opened = open_raw(raw_dir, DATASETS["mnist"])
    assert isinstance(opened["train_images"], IdxItems) and isinstance(opened["test_images"], IdxItems)
    written = write_splits(opened, cfg.preprocess, tmp_path / "prepared", MNIST, chunk_images=128)
    assert {split: count for split, (count, _) in written.items()} == {"train": 1100, "val": 100, "test": 250}
    whole = load_raw(raw_dir, DATASETS["mnist"])
    assert all(isinstance(array, np.ndarray) for array in whole.values())
    assert write_splits(whole, cfg.preprocess, tmp_path / "whole", MNIST) == {
        split: (count, tmp_path / "whole" / path.name) for split, (count, path) in written.items()}
    for split in written:
        x, y = load_split(tmp_path / "prepared", split, MNIST)
        images, labels = load_split(tmp_path / "whole", split, MNIST)
        assert x.tobytes() == images.tobytes() and y.tobytes() == labels.tobytes(), split


def test_a_distribution_strategy_over_the_budget_is_refused_in_one_line(prepared: Path) -> None:
    """Only the default strategy streams: `fit` under a strategy would load the arrays whole."""
    from mnist_pipeline.train.training import train_model

    cfg = config_with({**STREAMED, "train.strategy": "mirrored"})
    (x_train, y_train), (x_val, y_val) = mapped(prepared, "train"), mapped(prepared, "val")
    with pytest.raises(PipelineError) as raised:
        train_model(cfg.model, cfg.train, MNIST, x_train, y_train, x_val, y_val, None,
                    streamed=over_budget(cfg.train.memory_budget_mb, prepared))
    assert str(raised.value) == (
        "params.yaml: train.strategy = mirrored: the training data (4 MiB) exceed train.memory_budget_mb = 1, and "
        "only the default strategy streams them from disk: expected train.strategy default or a larger "
        "train.memory_budget_mb")
