"""Numbers that are not finite, empty splits and lying .npy headers end a real stage with one line.

Each case runs the stage as `dvc repro` would (`python -m stages.<name> ...` in a copy of the
project) and checks the exit status, the single `error:` line, and that nothing was written.
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import numpy as np
import pytest
from faultkit import error_line, stage_dir, write_prepared, write_raw

from mnist_pipeline.prepared import split_paths


def outputs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_scale_that_makes_infinite_images_writes_nothing(tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p", params={"preprocess.scale": 1.0e-300})
    write_raw(project.path / "data" / "raw" / "mnist")
    result = project.run("preprocess")
    assert error_line(result) == (
        "error: params.yaml: preprocess.scale = 1e-300, preprocess.offset = 0.5: x / scale - offset is not "
        "finite in float32 for some pixel value: expected a scale that keeps the images finite (the tutorial's "
        "is 255)"
    )
    assert "RuntimeWarning" not in result.stderr
    assert outputs(project.path / "data" / "prepared") == []


@pytest.mark.parametrize(
    ("stage", "split", "value"),
    [("train", "train", np.nan), ("evaluate", "test", np.inf), ("predict_sample", "test", -np.inf)],
)
def test_prepared_arrays_that_are_not_finite_are_refused(tmp_path: Path, stage: str, split: str,
                                                         value: float) -> None:
    project = stage_dir(tmp_path / "p")
    prepared = project.path / "data" / "prepared"
    write_prepared(prepared)
    x_path, _ = split_paths(prepared, split)
    x = np.load(x_path)
    x[3, 17] = value
    np.save(x_path, x)
    if stage != "train":  # evaluate and predict-sample need a model file; the arrays are checked first
        (project.path / "models").mkdir()
        (project.path / "models" / "model.onnx").write_bytes(b"unused")
    line = error_line(project.run(stage))
    assert line == (f"error: data/prepared/x_{split}.npy: 1 pixel values are not finite (NaN or infinity): "
                    "expected finite numbers (rerun preprocess: dvc repro -f -s preprocess)")
    assert not (project.path / "metrics").exists()


def test_an_empty_training_split_is_refused(tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p")
    write_prepared(project.path / "data" / "prepared", {"train": 0, "val": 0, "test": 5})
    assert error_line(project.run("train")) == (
        "error: data/prepared/x_train.npy: 0 images: expected at least 1 in the train split"
    )
    assert not (project.path / "models").exists()


def test_a_header_claiming_a_huge_shape_is_refused_before_loading(tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p")
    prepared = project.path / "data" / "prepared"
    write_prepared(prepared)
    x_path, _ = split_paths(prepared, "train")
    header = bytearray(x_path.read_bytes()[:128])
    claimed = header.replace(b"(40, 784)", b"(99999999999, 784)".ljust(len(b"(40, 784)")))
    assert claimed != header
    x_path.write_bytes(bytes(claimed[:128]) + x_path.read_bytes()[128:])
    line = error_line(project.run("train"))
    assert line.startswith("error: data/prepared/x_train.npy: truncated or corrupt .npy array: its header says "
                           "shape (99999999999, 784), 313599999996864 bytes, the file holds 125440")


def _small_file_limit() -> None:
    """In the child: files may not grow past 64 KiB, and going past is an error (EFBIG), not a kill."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))


def test_a_write_fault_names_the_output_and_keeps_the_previous_file(tmp_path: Path) -> None:
    """A disk that fills up mid-write (here: a file-size limit, the same OSError path) is one line."""
    import subprocess

    project = stage_dir(tmp_path / "p")
    write_raw(project.path / "data" / "raw" / "mnist", train=200, test=10)
    previous = project.path / "data" / "prepared" / "x_train.npy"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"the previous run's bytes")
    result = subprocess.run(project.command("preprocess"), cwd=project.path, env=project.env, capture_output=True,
                            text=True, timeout=300, preexec_fn=_small_file_limit)
    line = error_line(result)  # numpy's own words for the short write stand in the brackets
    assert line.startswith("error: data/prepared/x_train.npy: cannot write (")
    assert line.endswith("); the previous file, if any, is unchanged")
    assert previous.read_bytes() == b"the previous run's bytes"
    assert [p.name for p in previous.parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_evaluate_never_writes_nan_as_json(tmp_path: Path) -> None:
    """A model whose outputs are NaN must not leave `"loss": NaN`, which no JSON parser reads."""
    from mnist_pipeline.train.onnx_export import save_onnx, to_onnx
    from mnist_pipeline.train.tensorflow_runtime import keras

    project = stage_dir(tmp_path / "p")
    write_prepared(project.path / "data" / "prepared")
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    weights = model.get_weights()
    weights[0][:] = np.nan
    model.set_weights(weights)
    (project.path / "models").mkdir()
    save_onnx(to_onnx(model), project.path / "models" / "model.onnx")
    line = error_line(project.run("evaluate"))
    assert line == ("error: metrics/evaluate.json: refusing to write a value that is not finite (NaN or infinity): "
                    "JSON cannot hold it, and the result it stands for is meaningless")
    assert not (project.path / "metrics" / "evaluate.json").exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_previous_outputs(tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "p", params={"train.learning_rate": 1.0e10, "train.checkpoint": False})
    write_prepared(project.path / "data" / "prepared", {"train": 320, "val": 0, "test": 5})
    previous = {name: f"the previous {name}".encode() for name in ("models/model.keras", "metrics/train.json")}
    for name, content in previous.items():
        (project.path / name).parent.mkdir(parents=True, exist_ok=True)
        (project.path / name).write_bytes(content)
    line = error_line(project.run("train"))
    assert line.startswith("error: train: the loss became nan at epoch 1/1, step ")
    assert line.endswith("/10 (learning rate 1e+10): training diverged, so no model was saved and the previous "
                         "outputs are kept; try a smaller train.learning_rate")
    for name, content in previous.items():
        assert (project.path / name).read_bytes() == content
    assert [p.name for p in (project.path / "metrics").iterdir()] == ["train.json"]  # no dvclive leftovers
