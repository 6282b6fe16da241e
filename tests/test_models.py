"""Models from params, the tutorial-compatible weights file, deterministic saving and safe loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_pipeline.core.config import ACTIVATIONS, OPTIMIZERS, Config, with_overrides
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import idx_spec
from mnist_pipeline.train.model_types.mlp import build_mlp
from mnist_pipeline.train.models import load_model, make_optimizer, save_model_deterministic, save_weights
from mnist_pipeline.train.registry import build_model, load_config
from mnist_pipeline.train.tensorflow_runtime import keras
from mnist_pipeline.train.training import train_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MNIST = idx_spec(DATASETS["mnist"])
IMAGE_SHAPE = MNIST.image_shape


def make_params(overrides: dict[str, Any] | None = None) -> Config:
    """The project's params.yaml with dotted-key overrides, validated as a stage would see it."""
    return with_overrides(load_config(PROJECT_ROOT / "params.yaml"), overrides or {})


def train(cfg: Config, x: np.ndarray, y: np.ndarray, live: Path) -> tuple[keras.Model, dict]:
    return train_model(cfg.model, cfg.train, MNIST, x, y, x[:0], y[:0], live)


def layers_of(model: keras.Model) -> list[tuple[str, Any, Any]]:
    """(kind, units or rate, activation function) per layer."""
    described = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            described.append(("Dense", layer.units, layer.activation))
        elif isinstance(layer, keras.layers.Dropout):
            described.append(("Dropout", layer.rate, None))
        else:
            described.append((type(layer).__name__, None, None))
    return described


def small_data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, (n, 784)).astype(np.float32), rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> keras.Model:
    """The default (tutorial) model after one short epoch on small data: weights that are not the init."""
    x, y = small_data()
    params = make_params({"train.epochs": 1})
    model, history = train(params, x, y, tmp_path_factory.mktemp("live"))
    assert set(history) == {"loss", "accuracy"}  # no validation slice, no val_ metrics
    return model


def test_defaults_are_the_tutorials_model() -> None:
    model = build_model(make_params().model, MNIST)
    relu, softmax = keras.activations.get("relu"), keras.activations.get("softmax")
    assert layers_of(model) == [("Dense", 64, relu), ("Dense", 64, relu), ("Dense", 10, softmax)]
    assert model.input_shape == (None, 784)
    assert model.count_params() == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation(activation: str) -> None:
    model = build_model(make_params({"model.activation": activation}).model, MNIST)
    function = keras.activations.get(activation)
    assert [a for kind, _, a in layers_of(model)] == [function, function, keras.activations.get("softmax")]


@pytest.mark.parametrize(
    ("hidden", "dropout"),
    [([], 0.0), ([128], 0.0), ([32, 16, 8], 0.0), ([64, 64], 0.2), ([10, 20, 30, 40], 0.5)],
)
def test_depth_width_and_dropout(hidden: list[int], dropout: float) -> None:
    cfg = make_params({"model.hidden": hidden, "model.dropout": dropout, "model.activation": "tanh"})
    model = build_model(cfg.model, MNIST)
    tanh = keras.activations.get("tanh")
    expected: list[tuple[str, Any, Any]] = []
    for width in hidden:
        expected.append(("Dense", width, tanh))
        if dropout:
            expected.append(("Dropout", dropout, None))
    expected.append(("Dense", 10, keras.activations.get("softmax")))
    assert layers_of(model) == expected
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_compiles_and_steps(name: str) -> None:
    keras.utils.set_random_seed(0)
    model = build_model(make_params({"model.hidden": [8]}).model, MNIST)
    optimizer = make_optimizer(name, 0.01)
    assert type(optimizer).__name__.lower() == name
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = small_data(32)
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, keras.utils.to_categorical(y, 10))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_weights_load_into_the_tutorials_own_definition(trained: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "model.weights.h5"
    save_weights(trained, path)
    # The tutorial's code, verbatim (Keras 3 warns that input_shape belongs on an Input layer).
    from keras.layers import Dense
    from keras.models import Sequential

    with pytest.warns(UserWarning, match="input_shape"):
        tutorial = Sequential([
            Dense(64, activation="relu", input_shape=(784,)),
            Dense(64, activation="relu"),
            Dense(10, activation="softmax"),
        ])
    tutorial.load_weights(str(path))
    x, _ = small_data(100, seed=1)
    np.testing.assert_array_equal(tutorial.predict(x, verbose=0), trained.predict(x, verbose=0))
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights.h5"]  # no temporary file left


def test_deterministic_saving_gives_identical_bytes(trained: keras.Model, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "model.keras", tmp_path / "b" / "model.keras"
    save_model_deterministic(trained, first)
    save_model_deterministic(trained, second)
    assert first.read_bytes() == second.read_bytes()
    save_weights(trained, tmp_path / "a" / "model.weights.h5")
    save_weights(trained, tmp_path / "b" / "model.weights.h5")
    assert (tmp_path / "a" / "model.weights.h5").read_bytes() == (tmp_path / "b" / "model.weights.h5").read_bytes()
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.keras", "model.weights.h5"]


def test_training_twice_with_one_seed_gives_identical_weights(trained: keras.Model, tmp_path: Path) -> None:
    x, y = small_data()
    again, _ = train(make_params({"train.epochs": 1}), x, y, tmp_path / "live")
    for a, b in zip(trained.get_weights(), again.get_weights(), strict=True):
        assert a.tobytes() == b.tobytes()
    save_weights(trained, tmp_path / "a.weights.h5")
    save_weights(again, tmp_path / "b.weights.h5")
    assert (tmp_path / "a.weights.h5").read_bytes() == (tmp_path / "b.weights.h5").read_bytes()
    other, _ = train(make_params({"train.epochs": 1, "train.seed": 1}), x, y, tmp_path / "l2")
    assert not np.array_equal(other.get_weights()[0], again.get_weights()[0])


SAVE_SCRIPT = """
import sys, keras
from mnist_pipeline.train.models import save_model_deterministic
from mnist_pipeline.train.model_types.mlp import build_mlp
keras.utils.set_random_seed(0)
save_model_deterministic(build_mlp([16], "relu", 0.1, 784, 10), sys.argv[1])
"""


def test_model_file_is_identical_across_processes(tmp_path: Path) -> None:
    """Stages are separate processes: nothing process-specific (dates, memory addresses) may reach the file."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(tmp_path / "a.keras")], env=env, check=True,
                   capture_output=True, timeout=300)
    keras.utils.clear_session(free_memory=False)  # a fresh process's layer names, here
    keras.utils.set_random_seed(0)
    save_model_deterministic(build_mlp([16], "relu", 0.1, 784, 10), tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert json.loads(archive.read("metadata.json"))["date_saved"] == "1980-01-01@00:00:00"
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert '"shared_object_id": 1' in archive.read("config.json").decode()
    assert load_model(tmp_path / "a.keras", MNIST).output_shape == (None, 10)


def test_load_model_round_trip(trained: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    save_model_deterministic(trained, path)
    loaded = load_model(path, MNIST)
    x, _ = small_data(50, seed=2)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trained.predict(x, verbose=0))


@pytest.mark.parametrize("damage", ["truncated", "text", "empty", "other-zip"])
def test_load_model_turns_a_bad_file_into_one_line(trained: keras.Model, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.keras"
    save_model_deterministic(trained, path)
    good = path.read_bytes()
    if damage == "other-zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not a model")
    else:
        bad = {"truncated": good[: len(good) // 2], "text": b"version https://git-lfs\n", "empty": b""}
        path.write_bytes(bad[damage])
    with pytest.raises(PipelineError) as info:
        load_model(path, MNIST)
    message = str(info.value)
    assert message.startswith(f"{path}: not a ")
    assert "Keras model" in message
    assert "\n" not in message


def test_load_model_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"model\.keras: file not found \(run the train stage"):
        load_model(tmp_path / "model.keras", MNIST)


def test_load_model_uses_safe_mode(tmp_path: Path) -> None:
    """A Lambda layer carries Python bytecode; safe mode refuses to run it."""
    model = keras.Sequential([keras.Input(shape=(784,)), keras.layers.Lambda(lambda t: t * 2),
                              keras.layers.Dense(10)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    assert keras.saving.load_model(path, safe_mode=False).output_shape == (None, 10)  # loadable when unsafe
    with pytest.raises(PipelineError) as info:
        load_model(path, MNIST)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "safe_mode" in message
    assert "\n" not in message
