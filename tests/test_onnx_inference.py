"""models/model.onnx: the train stage's export, and the inference commands that run it without TensorFlow.

Small models are trained here on the first TRAIN_IMAGES real MNIST images (so batch-norm statistics and
weights are real ones), exported as the train stage exports them, and run by ONNX Runtime through the
module every inference command uses. The commands are then run as a user runs them, each in its own
Python process with `-X importtime`, whose log names every module the process imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, subprocess_env
from PIL import Image
from servekit import START_LIMIT_S

from mnist_pipeline.core.config import with_overrides
from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.inference.onnx_model import load_model
from mnist_pipeline.prepared import idx_spec, save_spec, save_split
from mnist_pipeline.presets import available, load_preset
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import scale_images
from mnist_pipeline.train.registry import load_config

N_TRAIN = 2000
N_TEST = 500
SPEC = idx_spec(DATASETS["mnist"])
# A CNN with every layer kind the exporter must handle: both augmentations, batch norm, dropout.
SMALL_CNN = {"model.type": "cnn", "model.cnn.filters": [4, 8], "model.cnn.dense": 16, "model.cnn.dropout": 0.25,
             "model.cnn.batch_norm": True, "model.cnn.augment_shift": 0.1, "model.cnn.augment_rotation": 0.05}
MLP_WITH_DROPOUT = {"model.dropout": 0.2}
TENSORFLOW_MODULE = re.compile(r"^import time:.*\|\s*(tensorflow|keras|tf2onnx)(\.|$)", re.MULTILINE)


def real_mnist(mirror_root: Path, images: str, labels: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(mirror_root / "mnist" / images, "images")[:n]
    return scale_images(x, 255.0, 0.5), read_idx(mirror_root / "mnist" / labels, "labels")[:n]


def trained(overrides: dict[str, object], mirror_root: Path):
    """A model from the project's params with `overrides`, fitted one epoch on real MNIST images."""
    from mnist_pipeline.train.registry import build_model
    from mnist_pipeline.train.tensorflow_runtime import keras

    cfg = with_overrides(load_config(PROJECT_ROOT / "params.yaml"), overrides)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, SPEC)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = real_mnist(mirror_root, TRAIN_IMAGES, TRAIN_LABELS, N_TRAIN)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def mlp(mirror_root: Path):
    return trained(MLP_WITH_DROPOUT, mirror_root)


@pytest.fixture(scope="module")
def cnn(mirror_root: Path):
    return trained(SMALL_CNN, mirror_root)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_onnx_runtime_predicts_the_same_classes_as_keras_on_real_test_images(
    kind: str, request: pytest.FixtureRequest, mirror_root: Path, tmp_path: Path
) -> None:
    """The MLP with dropout and the CNN with both augmentations, batch norm and dropout: no training-only op
    reaches the graph (ONNX Runtime would refuse it), and every image's class is Keras' own."""
    import onnx

    from mnist_pipeline.train.onnx_export import save_onnx, to_onnx

    model = request.getfixturevalue(kind)
    save_onnx(to_onnx(model), tmp_path / "model.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert not {op for op in ops if "Random" in op or op == "Dropout"}, ops
    x, _ = real_mnist(mirror_root, TEST_IMAGES, TEST_LABELS, N_TEST)
    expected = np.asarray(model(x, training=False))
    found = load_model(tmp_path / "model.onnx", SPEC.n_pixels, SPEC.n_classes).probabilities(x)
    np.testing.assert_array_equal(found.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(found - expected).max() < 1e-5


@pytest.mark.parametrize("preset", [None, *available()])
def test_every_preset_model_exports_and_onnx_runtime_agrees(preset: str | None, mirror_root: Path,
                                                            tmp_path: Path) -> None:
    """params.yaml's model and each preset's (untrained: the layers, not the weights, decide what exports)."""
    from mnist_pipeline.train.onnx_export import export_checked, save_onnx
    from mnist_pipeline.train.registry import build_model
    from mnist_pipeline.train.tensorflow_runtime import keras

    cfg = load_config(PROJECT_ROOT / "params.yaml")
    if preset:
        cfg = with_overrides(cfg, load_preset(preset, params=str(PROJECT_ROOT / "params.yaml")))
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, SPEC)  # fashion presets: the same shapes, 10 classes
    x, _ = real_mnist(mirror_root, TEST_IMAGES, TEST_LABELS, 200)
    data, difference = export_checked(model, x)
    save_onnx(data, tmp_path / "model.onnx")
    found = load_model(tmp_path / "model.onnx", SPEC.n_pixels, SPEC.n_classes).probabilities(x)
    np.testing.assert_array_equal(found.argmax(axis=1), np.asarray(model(x, training=False)).argmax(axis=1))
    assert difference < 1e-5


def test_export_twice_gives_the_same_bytes(cnn) -> None:
    """tf2onnx names tensors after counters that grow with each export in a process: the file must not."""
    from mnist_pipeline.train.onnx_export import to_onnx

    first, second = to_onnx(cnn), to_onnx(cnn)
    assert first == second
    assert b"tf2onnx" not in first  # no producer version or exporter's own names left in


def test_an_export_that_disagrees_with_keras_is_refused_in_one_line(mlp, cnn, mirror_root: Path) -> None:
    """The train stage's check, given another model's ONNX bytes: one line naming the file and the first image."""
    from mnist_pipeline.train.onnx_export import export_checked, largest_difference, to_onnx

    x, _ = real_mnist(mirror_root, TEST_IMAGES, TEST_LABELS, N_TEST)
    with pytest.raises(PipelineError) as raised:
        largest_difference(mlp, to_onnx(cnn), x, "models/model.onnx")
    message = str(raised.value)
    assert message.startswith("models/model.onnx: image ") and "\n" not in message, message
    assert message.endswith("the export is not the trained model; nothing was written"), message
    _, difference = export_checked(mlp, x)
    assert 0 <= difference < 1e-5


def test_training_only_layers_are_not_exported_but_the_keras_model_keeps_them(cnn) -> None:
    from mnist_pipeline.train.onnx_export import TRAINING_ONLY, inference_model

    kept = [type(layer).__name__ for layer in inference_model(cnn).layers]
    assert "RandomTranslation" not in kept and "RandomRotation" not in kept and "Dropout" not in kept
    assert "BatchNormalization" in kept
    assert sum(isinstance(layer, TRAINING_ONLY) for layer in cnn.layers) == 4  # 2 augmentations, 2 dropouts


def test_a_missing_truncated_or_foreign_model_is_one_error_line(mlp, tmp_path: Path) -> None:
    from mnist_pipeline.train.onnx_export import to_onnx

    data = to_onnx(mlp)
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "picture.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "model.onnx").write_bytes(data)
    cases = {
        "absent.onnx": "absent.onnx: file not found (run the train stage: dvc repro train)",
        "truncated.onnx": "truncated.onnx: not a loadable ONNX model",
        "picture.onnx": "picture.onnx: not a loadable ONNX model",
    }
    for name, expected in cases.items():
        with pytest.raises(PipelineError) as raised:
            load_model(tmp_path / name, SPEC.n_pixels, SPEC.n_classes)
        message = str(raised.value)
        assert message.startswith(f"{tmp_path / name}: {expected.split(': ', 1)[1]}") and "\n" not in message
    with pytest.raises(PipelineError) as raised:  # a Fashion-MNIST folder model with 3 classes, say
        load_model(tmp_path / "model.onnx", SPEC.n_pixels, 3)
    assert str(raised.value) == (f"{tmp_path / 'model.onnx'}: expected a model from (batch, 784) images to (batch, 3) "
                                 "class probabilities, found inputs [(None, 784)] and outputs [(None, 10)]")


def test_the_evaluate_stage_says_which_model_file_is_corrupt_in_one_line(mlp, tmp_path: Path) -> None:
    from mnist_pipeline.train.onnx_export import to_onnx

    project = inference_project(tmp_path, to_onnx(mlp)[:1000], np.zeros((20, 784), np.float32), np.zeros(20, np.uint8))
    result = run_python(project, "-m", "stages.evaluate", "models/model.onnx", "data/prepared", "metrics")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: models/model.onnx: not a loadable ONNX model"), lines
    assert not (project / "metrics").exists()


def inference_project(root: Path, model: bytes, x_test: np.ndarray, y_test: np.ndarray) -> Path:
    """A folder laid out as the pipeline's: params.yaml, models/model.onnx, data/prepared with a test split."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "model.onnx").write_bytes(model)
    prepared = root / "data" / "prepared"
    save_spec(prepared, SPEC)
    save_split(prepared, "test", x_test, y_test, SPEC)
    return root


def run_python(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tensorflow_modules(importtime_log: str) -> list[str]:
    return TENSORFLOW_MODULE.findall(importtime_log)


def test_inference_commands_never_import_tensorflow(mlp, mirror_root: Path, tmp_path: Path) -> None:
    """evaluate, predict-sample, mnist-predict and mnist-serve on a real trained model, each a process of its
    own under `python -X importtime`: the log names every module imported, and none is TensorFlow's."""
    from mnist_pipeline.train.onnx_export import to_onnx

    x_raw = read_idx(mirror_root / "mnist" / TEST_IMAGES, "images")[:N_TEST]
    x_test, y_test = real_mnist(mirror_root, TEST_IMAGES, TEST_LABELS, N_TEST)
    project = inference_project(tmp_path / "project", to_onnx(mlp), x_test, y_test)
    Image.fromarray(255 - x_raw[0]).save(project / "digit.png")  # dark on light, as a user draws

    logs: dict[str, str] = {}
    for name, args in {
        "evaluate": ("-m", "stages.evaluate", "models/model.onnx", "data/prepared", "metrics"),
        "predict-sample": ("-m", "stages.predict_sample", "models/model.onnx", "data/prepared", "metrics"),
        "mnist-predict": ("-m", "mnist_pipeline.inference.predict", "--json", "digit.png"),
    }.items():
        result = run_python(project, "-X", "importtime", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[name] = result.stderr
        if name == "mnist-predict":
            assert json.loads(result.stdout)["predictions"][0]["predicted"] == int(y_test[0]) == 7
    accuracy = json.loads((project / "metrics" / "evaluate.json").read_text())["accuracy"]
    assert accuracy > 0.5  # a real model answered (one epoch on 2,000 images: about 0.6; chance is 0.1)
    logs["mnist-serve"] = served_log(project)
    for name, log in logs.items():
        assert "import time:" in log and "onnxruntime" in log, f"{name}: no import log"
        assert tensorflow_modules(log) == [], f"{name} imported {tensorflow_modules(log)[:5]}"


def served_log(project: Path) -> str:
    """`mnist-serve` under -X importtime: started, asked for one prediction, stopped; its stderr."""
    env = subprocess_env(PYTHONPATH=str(PROJECT_ROOT))
    command = [sys.executable, "-X", "importtime", "-m", "mnist_pipeline.inference.serve", "--port", "0"]
    log = project / "serve.log"
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = process.stdout.readline()  # its URL, or '' when it exits first; pytest-timeout bounds the wait
        match = re.match(r"^mnist-serve: (http://\S+/) ", line)
        assert match, f"mnist-serve did not start: {line!r}\n{log.read_text()[-3000:]}"
        request = urllib.request.Request(match.group(1) + "api/predict", data=(project / "digit.png").read_bytes(),
                                         headers={"Content-Type": "image/png"}, method="POST")
        with urllib.request.urlopen(request, timeout=START_LIMIT_S) as reply:
            assert json.loads(reply.read())["predicted"] == 7
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()
    return log.read_text()
