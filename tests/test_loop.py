"""The compiled loop takes the steps `model.fit` takes: same batches, same start, same weights after.

Each case trains two copies of one model (same initial weights, same optimizer) for 2 epochs on the
first 300 images of real MNIST, batch 32: 9 full batches and a partial one of 12 an epoch. One copy
goes through Keras' `fit`, the other through `fit_compiled`; their weights (batch-norm statistics
included), optimizer step counts and per-epoch logs must agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.core.config import with_overrides
from mnist_pipeline.core.datasets import DATASETS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.prepared import idx_spec
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import scale_images
from mnist_pipeline.train.loop import batch_plan, fit_compiled
from mnist_pipeline.train.model_types.cnn import build_cnn
from mnist_pipeline.train.model_types.mlp import build_mlp
from mnist_pipeline.train.registry import load_config
from mnist_pipeline.train.tensorflow_runtime import keras, tf

MNIST = idx_spec(DATASETS["mnist"])
N_TRAIN, N_VAL, BATCH, EPOCHS = 300, 100, 32, 2
STEPS = EPOCHS * -(-N_TRAIN // BATCH)  # the partial batch is a step too

SMALL_CNN = with_overrides(load_config(Path(__file__).resolve().parents[1] / "params.yaml"), {
    "model.cnn.filters": [4], "model.cnn.dense": 0, "model.cnn.dropout": 0.0, "model.cnn.batch_norm": True,
    "model.cnn.augment_shift": 0.0, "model.cnn.augment_rotation": 0.0,
}).model.cnn
# Deterministic models: no dropout, no augmentation. Batch norm is deterministic and has state outside
# the gradients (its moving statistics), which the loop must update as fit does. Validation (in order,
# with its own partial batch) is checked once, on the MLP: each traced function costs test time.
CASES: dict[str, tuple[Callable[[], keras.Model], bool]] = {
    "mlp-with-validation": (lambda: build_mlp([64, 64], "relu", 0.0, MNIST.n_pixels, MNIST.n_classes), True),
    "cnn-batch-norm": (lambda: build_cnn(SMALL_CNN, "relu", MNIST.array_shape, MNIST.n_classes), False),
}


@pytest.fixture(scope="module")
def data(mirror_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and validation images of real MNIST, scaled as preprocess scales them, one-hot targets."""
    folder = mirror_root / "mnist"
    images = scale_images(read_idx(folder / TRAIN_IMAGES, "images")[: N_TRAIN + N_VAL], 255.0, 0.5)
    targets = np.eye(MNIST.n_classes, dtype=np.float32)[read_idx(folder / TRAIN_LABELS, "labels")[: N_TRAIN + N_VAL]]
    return images[:N_TRAIN], targets[:N_TRAIN], images[N_TRAIN:], targets[N_TRAIN:]


def twin_models(build: Callable[[], keras.Model]) -> tuple[keras.Model, keras.Model]:
    """Two compiled copies of one model with equal weights and fresh equal Adam optimizers."""
    keras.utils.set_random_seed(0)
    first, second = build(), build()
    second.set_weights(first.get_weights())
    for model in (first, second):
        # No XLA: the loop does not use it, and fit's "auto" would turn it on where a GPU is present.
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"],
                      jit_compile=False)
    return first, second


def assert_same_training(by_fit: keras.Model, by_loop: keras.Model, fit_logs: dict, loop_logs: dict) -> None:
    assert int(by_fit.optimizer.iterations.numpy()) == int(by_loop.optimizer.iterations.numpy()) == STEPS
    assert [w.name for w in by_fit.weights] == [w.name for w in by_loop.weights]  # kernels, biases, statistics
    for w_fit, w_loop in zip(by_fit.weights, by_loop.weights, strict=True):
        np.testing.assert_allclose(w_loop.numpy(), w_fit.numpy(), rtol=1e-5, atol=1e-6, err_msg=w_fit.path)
    assert set(loop_logs) == set(fit_logs)
    for key, values in fit_logs.items():
        np.testing.assert_allclose(loop_logs[key], values, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", CASES)
def test_unshuffled_loop_equals_fit_without_shuffle(name: str, data: tuple[np.ndarray, ...]) -> None:
    """fit(shuffle=False) and the loop without a seed both take the batches in the data's order."""
    x, y, x_val, y_val = data
    build, with_validation = CASES[name]
    validation = (x_val, y_val) if with_validation else None
    by_fit, by_loop = twin_models(build)
    initial = by_fit.get_weights()
    fitted = by_fit.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, validation_data=validation, verbose=0)
    history = fit_compiled(by_loop, x, y, batch_size=BATCH, epochs=EPOCHS, seed=None, validation_data=validation)
    assert_same_training(by_fit, by_loop, fitted.history, history)
    # The weights moved: equal because both trained alike, not because neither trained.
    assert not np.allclose(by_fit.get_weights()[0], initial[0], atol=1e-3)


def planned_batches(x: np.ndarray, y: np.ndarray, seed: int) -> tf.data.Dataset:
    """The batches the loop draws with `seed`: each pass over the data set is the next epoch's plan."""
    rng = np.random.default_rng(seed)

    def epoch() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        batches, tail = batch_plan(len(y), BATCH, rng)
        for idx in [*batches, tail]:
            yield x[idx], y[idx]

    signature = (tf.TensorSpec((None, x.shape[1]), tf.float32), tf.TensorSpec((None, y.shape[1]), tf.float32))
    steps = -(-len(y) // BATCH)
    dataset = tf.data.Dataset.from_generator(epoch, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps))  # fit then knows an epoch's length


def test_shuffled_loop_equals_fit_fed_the_same_batches(data: tuple[np.ndarray, ...]) -> None:
    """With a seed the loop's epochs are permutations, a new one each epoch; fit fed them steps alike."""
    x, y, _, _ = data
    by_fit, by_loop = twin_models(CASES["mlp-with-validation"][0])
    fitted = by_fit.fit(planned_batches(x, y, seed=7), epochs=EPOCHS, verbose=0)
    history = fit_compiled(by_loop, x, y, batch_size=BATCH, epochs=EPOCHS, seed=7)
    assert_same_training(by_fit, by_loop, fitted.history, history)


def test_batch_plan_covers_every_image_once_per_epoch() -> None:
    rng = np.random.default_rng(0)
    batches, tail = batch_plan(N_TRAIN, BATCH, rng)
    assert batches.shape == (N_TRAIN // BATCH, BATCH) and batches.dtype == np.int32
    assert len(tail) == N_TRAIN % BATCH
    assert sorted(np.concatenate([batches.ravel(), tail])) == list(range(N_TRAIN))
    next_batches, _ = batch_plan(N_TRAIN, BATCH, rng)
    assert not np.array_equal(batches, next_batches)  # each epoch its own order
    in_order, in_order_tail = batch_plan(N_TRAIN, BATCH, None)
    assert np.array_equal(np.concatenate([in_order.ravel(), in_order_tail]), np.arange(N_TRAIN))
