"""Faults in params.yaml, data and files: each ends a real stage process with one line naming the file
and what was expected. docs/faults.md quotes these lines (tests/test_faults_doc.py holds it to them)."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from faultkit import StageDir, error_line, labels_for, stage_dir, write_prepared, write_raw
from idxkit import encode_idx

from mnist_pipeline.core.datasets import DATASETS, TRAIN_IMAGES, TRAIN_LABELS, raw_name

PREPARED = Path("data/prepared")
RAW = Path("data/raw/mnist")


@pytest.fixture
def project(tmp_path: Path) -> StageDir:
    return stage_dir(tmp_path / "p")


# --- params.yaml, read first by every stage ---

EPOCHS_LINE = "  epochs: 1"  # train.epochs in the test's params.yaml: the YAML faults are put on this line


def without(section: str, key: str) -> Callable[[str], str]:
    """An edit of the params.yaml text that deletes one key."""

    def edit(text: str) -> str:
        tree = yaml.safe_load(text)
        del tree[section][key]
        return yaml.safe_dump(tree, sort_keys=False)

    return edit


MIRRORS_NOT_HTTP = {"mnist": ["file:///etc/"], "fashion_mnist": ["https://example.org/fashion/"]}
# (id, the fault: {key: value} to set or an edit of the file's text, the exact error line). In the line,
# {line} is the number of the `epochs` line, {next} the line after it, {byte} the offset of the bad byte.
PARAMS_FAULTS: list[tuple[str, dict[str, Any] | Callable[[str], str | bytes], str]] = [
    ("unknown top-level key", lambda t: t + "verbose: 1\n",
     "error: params.yaml: unknown key 'verbose': expected at the top level one of data, download, evaluate, model, "
     "predict, preprocess, train"),
    ("missing key", without("train", "seed"),
     "error: params.yaml: missing key 'train.seed': expected an integer in [0, 4294967295]"),
    ("train.epochs=0", {"train.epochs": 0}, "error: params.yaml: train.epochs = 0: expected an integer in [1, 100000]"),
    ("train.epochs=five", {"train.epochs": "five"},
     "error: params.yaml: train.epochs = 'five': expected an integer in [1, 100000]"),
    ("train.epochs=2.5", {"train.epochs": 2.5},
     "error: params.yaml: train.epochs = 2.5: expected an integer in [1, 100000]"),
    ("train.learning_rate=0", {"train.learning_rate": 0},
     "error: params.yaml: train.learning_rate = 0: expected a number > 0"),
    ("train.learning_rate=-0.01", {"train.learning_rate": -0.01},
     "error: params.yaml: train.learning_rate = -0.01: expected a number > 0"),
    ("train.learning_rate=nan", {"train.learning_rate": float("nan")},
     "error: params.yaml: train.learning_rate = nan: expected a number > 0"),
    ("train.learning_rate=inf", {"train.learning_rate": float("inf")},
     "error: params.yaml: train.learning_rate = inf: expected a number > 0"),
    ("model.dropout=1.0", {"model.dropout": 1.0},
     "error: params.yaml: model.dropout = 1.0: expected a number in [0, 1)"),
    ("model.dropout=-0.1", {"model.dropout": -0.1},
     "error: params.yaml: model.dropout = -0.1: expected a number in [0, 1)"),
    ("train.batch_size=0", {"train.batch_size": 0},
     "error: params.yaml: train.batch_size = 0: expected an integer in [1, 65536]"),
    ("train.batch_size=true", {"train.batch_size": True},
     "error: params.yaml: train.batch_size = True: expected an integer in [1, 65536]"),
    ("download.retries=50", {"download.retries": 50},
     "error: params.yaml: download.retries = 50: expected an integer in [0, 10]"),
    ("model.hidden=[64, 0]", {"model.hidden": [64, 0]},
     "error: params.yaml: model.hidden = [64, 0]: expected a list of 0 to 16 integers in [1, 1000000]"),
    ("data.dataset=fashion-mnist", {"data.dataset": "fashion-mnist"},
     "error: params.yaml: data.dataset = 'fashion-mnist': expected one of mnist, fashion_mnist, folder, digit_csv "
     "(did you mean 'fashion_mnist'?)"),
    ("data.dataset=cifar10", {"data.dataset": "cifar10"},
     "error: params.yaml: data.dataset = 'cifar10': expected one of mnist, fashion_mnist, folder, digit_csv"),
    ("data.dataset=../../etc", {"data.dataset": "../../etc"},
     "error: params.yaml: data.dataset = '../../etc': expected one of mnist, fashion_mnist, folder, digit_csv"),
    ("model.activation=rleu", {"model.activation": "rleu"},
     "error: params.yaml: model.activation = 'rleu': expected one of relu, sigmoid, tanh, elu, selu, gelu, softplus, "
     "swish, linear (did you mean 'relu'?)"),
    ("train.optimizer=lbfgs", {"train.optimizer": "lbfgs"},
     "error: params.yaml: train.optimizer = 'lbfgs': expected one of adam, sgd, rmsprop, adamw, nadam, adagrad"),
    ("mirror not http", {"download.mirrors": MIRRORS_NOT_HTTP},
     "error: params.yaml: download.mirrors = {'mnist': ['file:///etc/'], 'fashion_mnist': "
     "['https://example.org/fashion/']}: expected a mapping with exactly the keys mnist, fashion_mnist, "
     "each a list of http(s) URLs"),
    ("invalid YAML", lambda t: t.replace(EPOCHS_LINE, "  epochs: [1"),
     "error: params.yaml: line {next} is not valid YAML: expected ',' or ']', but got ':'"),
    ("bad indentation", lambda t: t.replace(EPOCHS_LINE, "    epochs: 1"),
     "error: params.yaml: line {next} is not valid YAML: expected <block end>, but found '<block mapping start>'"),
    ("duplicate key", lambda t: t.replace(EPOCHS_LINE, EPOCHS_LINE + "\n  epochs: 10"),
     "error: params.yaml: line {next}: duplicate key 'epochs' (DVC refuses the file; write each key once)"),
    ("python object tag", lambda t: t.replace(EPOCHS_LINE, "  epochs: !!python/object/apply:os.system ['touch pwned']"),
     "error: params.yaml: line {line}: tag '!!python/object/apply:os.system' is not allowed: params hold plain YAML "
     "values only"),
    ("empty file", lambda t: "",
     "error: params.yaml: the file is empty: expected a YAML mapping of sections (data, train, ...)"),
    ("not UTF-8", lambda t: t.encode() + b"# caf\xe9\n",
     "error: params.yaml: not UTF-8 text (byte {byte}: invalid continuation byte)"),
]


# A model type's own keys are checked by the train stage, which knows the model types; download reads only
# the common sections, so that a training module is never one of its deps.
MODEL_TYPE_KEYS = ("model.dropout", "model.hidden")


@pytest.mark.parametrize(("name", "fault", "expected"), PARAMS_FAULTS, ids=[f[0] for f in PARAMS_FAULTS])
def test_params_fault_ends_a_stage_with_the_exact_line(
    project: StageDir, name: str, fault: dict[str, Any] | Callable[[str], str | bytes], expected: str
) -> None:
    text = project.params_file.read_text()
    line = text.splitlines().index(EPOCHS_LINE) + 1
    where = {"{line}": line, "{next}": line + 1, "{byte}": len(text.encode()) + len("# caf")}
    if isinstance(fault, dict):
        project.set_params(fault)
    else:
        broken = fault(text)
        project.params_file.write_bytes(broken if isinstance(broken, bytes) else broken.encode())
    for placeholder, number in where.items():
        expected = expected.replace(placeholder, str(number))
    stage = "train" if name.startswith(MODEL_TYPE_KEYS) else "download"
    assert error_line(project.run(stage)) == expected
    assert not (project.path / "data").exists()  # refused before any work
    assert not (project.path / "pwned").exists()


@pytest.fixture
def prepared(project: StageDir) -> StageDir:
    write_prepared(project.path / PREPARED, {"train": 40, "val": 10, "test": 20})
    return project


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


# (name, how the file is broken, the file, the exact error line of the train stage)
NPY_FAULTS: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("missing", lambda p: p.unlink(), "x_train.npy",
     "error: data/prepared/x_train.npy: file not found (run the stage that writes it: dvc repro)"),
    ("empty", lambda p: p.write_bytes(b""), "x_train.npy",
     "error: data/prepared/x_train.npy: not a .npy array: expected the .npy header, found an empty file"),
    ("not npy", lambda p: p.write_text("hello world\n"), "x_train.npy",
     "error: data/prepared/x_train.npy: not a .npy array: expected the .npy header, found a file starting b'hello '"),
    ("npz renamed", lambda p: p.write_bytes(b"PK\x03\x04 a zip archive, as np.savez writes"), "x_val.npy",
     "error: data/prepared/x_val.npy: not a .npy array: expected the .npy header, "
     "found a file starting b'PK\\x03\\x04 a'"),
    ("truncated header", lambda p: truncate(p, 40), "y_train.npy",
     "error: data/prepared/y_train.npy: truncated or corrupt .npy array (EOF: reading array header, "
     "expected 118 bytes got 30)"),
    ("truncated data", truncate, "x_train.npy",
     "error: data/prepared/x_train.npy: truncated or corrupt .npy array: its header says shape (40, 784), "
     "125440 bytes, the file holds 62656"),
    ("object dtype", lambda p: np.save(p, np.array([{"a": 1}, print], dtype=object), allow_pickle=True),
     "y_train.npy",
     "error: data/prepared/y_train.npy: holds Python objects, which are never unpickled (allow_pickle=False): "
     "expected a plain numeric array"),
    ("wrong dtype", lambda p: np.save(p, np.zeros((40, 784), np.float64)), "x_train.npy",
     "error: data/prepared/x_train.npy: expected dtype float32, found float64"),
    ("wrong shape", lambda p: np.save(p, np.zeros((40, 28, 28), np.float32)), "x_train.npy",
     "error: data/prepared/x_train.npy: expected shape (N, 784), found (40, 28, 28)"),
    ("labels 2-D", lambda p: np.save(p, np.zeros((40, 10), np.uint8)), "y_train.npy",
     "error: data/prepared/y_train.npy: expected shape (N), found (40, 10)"),
    ("count mismatch", lambda p: np.save(p, labels_for(39)), "y_train.npy",
     "error: data/prepared/y_train.npy: 39 labels for 40 images in data/prepared/x_train.npy"),
    ("label out of range", lambda p: np.save(p, np.full(40, 12, np.uint8)), "y_train.npy",
     "error: data/prepared/y_train.npy: labels must be 0-9, found 12"),
    ("a directory", lambda p: (p.unlink(), p.mkdir()), "x_train.npy",
     "error: data/prepared/x_train.npy: a folder: expected a .npy array"),
]


@pytest.mark.parametrize(("name", "breaks", "file", "expected"), NPY_FAULTS, ids=[f[0] for f in NPY_FAULTS])
def test_prepared_array_fault(prepared: StageDir, name: str, breaks: Callable[[Path], None], file: str,
                              expected: str) -> None:
    breaks(prepared.path / PREPARED / file)
    assert error_line(prepared.run("train")) == expected
    assert not (prepared.path / "models").exists()


def test_evaluate_checks_its_test_arrays(prepared: StageDir) -> None:
    np.save(prepared.path / PREPARED / "x_test.npy", np.zeros((20, 784), np.uint8))
    assert error_line(prepared.run("evaluate")) == (
        "error: data/prepared/x_test.npy: expected dtype float32, found uint8")


# --- raw IDX files, read by preprocess ---

def test_raw_files_missing(project: StageDir) -> None:
    assert error_line(project.run("preprocess")) == "error: data/raw/mnist/train-images-idx3-ubyte: file not found"


def test_raw_image_count_differs_from_label_count(project: StageDir) -> None:
    write_raw(project.path / RAW, train=30, test=10, train_labels=29)
    assert error_line(project.run("preprocess")) == "error: data/raw/mnist: train set has 30 images but 29 labels"
    assert not (project.path / PREPARED).exists()


def test_raw_images_truncated(project: StageDir) -> None:
    write_raw(project.path / RAW)
    truncate(project.path / RAW / raw_name(TRAIN_IMAGES), 16 + 100)
    assert error_line(project.run("preprocess")) == (
        "error: train-images-idx3-ubyte: expected 23520 image bytes, found 100")


def test_raw_labels_given_as_images(project: StageDir) -> None:
    write_raw(project.path / RAW)
    images = project.path / RAW / raw_name(TRAIN_IMAGES)
    images.write_bytes((project.path / RAW / raw_name(TRAIN_LABELS)).read_bytes())
    assert error_line(project.run("preprocess")) == (
        "error: train-images-idx3-ubyte: expected IDX magic 0x00000803 (images), found 0x00000801")


def test_raw_file_corrupt_gzip(project: StageDir) -> None:
    write_raw(project.path / RAW)
    path = project.path / RAW / raw_name(TRAIN_LABELS)
    path.write_bytes(gzip.compress(path.read_bytes())[:30])
    assert error_line(project.run("preprocess")) == (
        "error: train-labels-idx1-ubyte: corrupt gzip data (Compressed file ended before the end-of-stream marker "
        "was reached)")


def test_output_folder_blocked_by_a_file(project: StageDir) -> None:
    write_raw(project.path / RAW)
    (project.path / "data" / "prepared").write_text("not a folder")
    assert error_line(project.run("preprocess")) == (
        "error: data/prepared: a regular file, not a folder: expected a folder for data/prepared/x_train.npy "
        "(move it away, then rerun)")


# --- download faults through the stage (tests/test_download.py covers each mirror fault on a real server) ---

def test_download_every_mirror_fails(project: StageDir, tmp_path: Path) -> None:
    corrupt = tmp_path / "mirror" / "mnist"
    corrupt.mkdir(parents=True)
    wrong = encode_idx(np.zeros((2, 28, 28), np.uint8))
    (corrupt / TRAIN_IMAGES).write_bytes(gzip.compress(wrong))
    project.set_params({"download.mirrors.mnist": ["http://127.0.0.1:9/mnist/"], "download.retries": 0})
    result = project.run("download", env={"DATASET_MIRROR": str(tmp_path / "mirror")})
    got = hashlib.sha256(wrong).hexdigest()[:12]
    (expected,) = [f.payload_sha256[:12] for f in DATASETS["mnist"].files if f.name == TRAIN_IMAGES]
    assert error_line(result) == (
        f"error: {TRAIN_IMAGES}: every mirror failed: $DATASET_MIRROR={tmp_path / 'mirror'}: checksum mismatch "
        f"(payload sha256 {got}..., expected {expected}...); http://127.0.0.1:9/mnist/: cannot connect "
        "([Errno 111] Connection refused)")
    assert list((project.path / "data").rglob("*")) == [project.path / "data" / "raw",
                                                        project.path / "data" / "raw" / "mnist"]


# --- model files: models/model.onnx, read by evaluate and predict-sample with ONNX Runtime ---

@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid model, one with the wrong input shape (exported as the train stage exports), and a Keras file."""
    from mnist_pipeline.train.onnx_export import save_onnx, to_onnx
    from mnist_pipeline.train.tensorflow_runtime import keras

    folder = tmp_path_factory.mktemp("models")
    models = {
        "good": keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")]),
        "shape": keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                                   keras.layers.Dense(10, activation="softmax")]),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.onnx"
        save_onnx(to_onnx(model), paths[name])
    paths["keras"] = folder / "good.keras"
    models["good"].save(paths["keras"])
    return paths


def install_model(project: StageDir, source: Path | None = None, data: bytes | None = None) -> Path:
    path = project.path / "models" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(source.read_bytes() if source else data or b"")
    return path


def test_model_missing(prepared: StageDir) -> None:
    assert error_line(prepared.run("evaluate")) == (
        "error: models/model.onnx: file not found (run the train stage: dvc repro train)")


def test_model_truncated(prepared: StageDir, model_files: dict[str, Path]) -> None:
    path = install_model(prepared, model_files["good"])
    truncate(path, 5000)
    assert error_line(prepared.run("evaluate")).startswith(
        "error: models/model.onnx: not a loadable ONNX model (5000 bytes: ")
    assert not (prepared.path / "metrics").exists()


def test_model_not_onnx(prepared: StageDir) -> None:
    install_model(prepared, data=b"GIF89a not a model")
    line = error_line(prepared.run("predict_sample"))
    assert line.startswith("error: models/model.onnx: not a loadable ONNX model (18 bytes: "), line
    assert line.endswith("expected the train stage's model.onnx (dvc repro train)"), line


def test_a_keras_file_in_place_of_the_onnx_model_is_refused(prepared: StageDir, model_files: dict[str, Path]) -> None:
    install_model(prepared, model_files["keras"])
    assert error_line(prepared.run("evaluate")).startswith("error: models/model.onnx: not a loadable ONNX model (")


def test_model_with_wrong_input_shape(prepared: StageDir, model_files: dict[str, Path]) -> None:
    install_model(prepared, model_files["shape"])
    assert error_line(prepared.run("predict_sample")) == (
        "error: models/model.onnx: expected a model from (batch, 784) images to (batch, 10) class probabilities, "
        "found inputs [(None, 28, 28)] and outputs [(None, 10)]")


def test_a_good_model_passes_these_checks(prepared: StageDir, model_files: dict[str, Path]) -> None:
    """The checks above refuse bad files, not every file: the valid model evaluates."""
    install_model(prepared, model_files["good"])
    result = prepared.run("evaluate")
    assert result.returncode == 0, result.stderr
    assert (prepared.path / "metrics" / "evaluate.json").is_file()
