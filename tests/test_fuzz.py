"""A net for faults nobody listed: Hypothesis mutates params.yaml and feeds random bytes as images, IDX and
.npy files to the real loaders, stages and `mnist-predict`.

The property, for every input: the command ends with exit 0, or with exit 2 and exactly one `error:` line
on stderr (no traceback), within a time bound, and an output that existed before a failure is unchanged.
In-process checks of the loaders take many examples (they are cheap); real stage processes take a few.
The budget is fixed (`derandomize=True`, bounded example counts), so CI runs the same cases every time.
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from faultkit import stage_dir, write_prepared
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from idxkit import encode_idx

from mnist_pipeline.core.config import flatten
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import load_npy
from mnist_pipeline.inference.imageprep import prepare_file
from mnist_pipeline.sources.idx import parse_idx
from mnist_pipeline.train.registry import validate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
KEYS = sorted(flatten(BASE))
# A process that takes longer than this has hung or is doing unbounded work.
PROCESS_BOUND_S = 60
CHEAP = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COSTLY = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


@st.composite
def mutated_params(draw: st.DrawFn) -> dict[str, Any]:
    """The project's params with one to three edits: a value replaced, a key dropped or added, a key renamed."""
    tree = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(["value", "drop", "add", "rename", "section"]))
        parent_key, _, leaf = key.rpartition(".")
        parent = tree
        for part in parent_key.split(".") if parent_key else []:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if kind == "value":
            parent[leaf] = draw(values)
        elif kind == "drop":
            parent.pop(leaf, None)
        elif kind == "add":
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif kind == "rename" and leaf in parent:
            parent[leaf + draw(st.text(min_size=1, max_size=2))] = parent.pop(leaf)
        elif kind == "section":
            tree[key.split(".")[0]] = draw(values)
    return tree


def assert_one_line_or_success(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if result.returncode == 0:
        return
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr[-2000:]}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]


@CHEAP
@given(mutated_params())
def test_any_params_edit_validates_or_names_one_fault(tree: dict[str, Any]) -> None:
    try:
        validate(tree, "params.yaml")
    except PipelineError as e:
        assert "\n" not in str(e) and str(e).startswith("params.yaml")


@CHEAP
@given(st.binary(max_size=300))
def test_random_bytes_as_params_yaml_never_crash_the_loader(data: bytes) -> None:
    from mnist_pipeline.train.registry import load_config

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_bytes(data)
        try:
            load_config(path)
        except PipelineError as e:
            assert "\n" not in str(e)


@CHEAP
@given(st.binary(max_size=200), st.sampled_from(["images", "labels"]))
def test_random_bytes_as_idx_are_read_or_refused_in_one_line(data: bytes, kind: str) -> None:
    try:
        parse_idx(data, "fuzz", kind, DATASETS["mnist"].image_shape)
    except PipelineError as e:
        assert "\n" not in str(e)


def _npy_like(draw_bytes: bytes) -> bytes:
    """Often a real .npy header with a damaged tail or body, sometimes pure noise."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 784), np.float32))
    real = buffer.getvalue()
    cut = len(draw_bytes) % len(real)
    return real[:cut] + draw_bytes if draw_bytes[:1] != b"\x00" else draw_bytes


@CHEAP
@given(st.binary(max_size=400))
def test_random_bytes_as_npy_are_loaded_or_refused_in_one_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x_train.npy"
        path.write_bytes(_npy_like(data))
        try:
            load_npy(path, np.float32, 2, (784,))
        except PipelineError as e:
            assert "\n" not in str(e)


@CHEAP
@given(st.binary(max_size=400), st.sampled_from([".png", ".jpg", ".gif", ".bmp"]))
def test_random_bytes_as_an_image_are_prepared_or_refused_in_one_line(data: bytes, suffix: str) -> None:
    # Often a real image's header in front, so the decoders get past their magic numbers.
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buffer, format={".jpg": "JPEG"}.get(suffix, suffix[1:].upper()))
    head = buffer.getvalue()[: len(data) % 64]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"digit{suffix}"
        path.write_bytes(head + data)
        try:
            prepare_file(path)
        except PipelineError as e:
            assert "\n" not in str(e)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) MNIST-shaped model, exported as train exports one: the commands get past "no model"
    to the decoders and to inference."""
    from mnist_pipeline.train.model_types.mlp import build_mlp
    from mnist_pipeline.train.onnx_export import save_onnx, to_onnx

    path = tmp_path_factory.mktemp("tiny-model") / "model.onnx"
    save_onnx(to_onnx(build_mlp([4], "relu", 0.0, 784, 10)), path)
    return path


def digit_one(path: Path) -> Path:
    """A plain dark stroke on white: a picture every decoder and the preparation must accept."""
    from PIL import Image

    pixels = np.full((56, 56), 255, np.uint8)
    pixels[8:48, 24:32] = 0
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
@COSTLY
@given(tree=mutated_params())
def test_a_real_stage_with_mutated_params_ends_cleanly_and_keeps_its_output(tree: dict[str, Any],
                                                                          tmp_path_factory: Any,
                                                                          tiny_model: Path) -> None:
    """predict-sample with a real model and real arrays: params are read first, then the arrays and the
    model; a failure leaves the old picture alone, and valid params get as far as writing it."""
    project = stage_dir(tmp_path_factory.mktemp("fuzz-params") / "p")
    write_prepared(project.path / "data" / "prepared")
    (project.path / "models").mkdir()
    shutil.copy2(tiny_model, project.path / "models" / "model.onnx")
    project.params_file.write_text(yaml.safe_dump(tree, allow_unicode=True))
    previous = project.path / "metrics" / "predictions.json"
    previous.parent.mkdir(parents=True)
    previous.write_text("previous\n")
    result = project.run("predict_sample", timeout=PROCESS_BOUND_S)
    assert_one_line_or_success(result)
    if result.returncode:
        assert previous.read_text() == "previous\n"
    else:
        assert previous.read_text() != "previous\n"  # written: the run got past params, arrays and model


@pytest.mark.slow
@COSTLY
@given(data=st.binary(min_size=1, max_size=300))
def test_a_real_preprocess_on_random_idx_bytes_ends_cleanly(data: bytes, tmp_path_factory: Any) -> None:
    project = stage_dir(tmp_path_factory.mktemp("fuzz-idx") / "p")
    raw = project.path / "data" / "raw" / "mnist"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": np.zeros((3, 28, 28), np.uint8),
              "train-labels-idx1-ubyte": np.zeros(3, np.uint8),
              "t10k-images-idx3-ubyte": np.zeros((2, 28, 28), np.uint8),
              "t10k-labels-idx1-ubyte": np.zeros(2, np.uint8)}
    for name, array in arrays.items():
        (raw / name).write_bytes(encode_idx(array))
    (raw / "train-images-idx3-ubyte").write_bytes(encode_idx(arrays["train-images-idx3-ubyte"])[:16] + data)
    result = project.run("preprocess", timeout=PROCESS_BOUND_S)
    assert_one_line_or_success(result)


@pytest.mark.slow
@COSTLY
@given(data=st.binary(min_size=1, max_size=300))
def test_mnist_predict_on_random_bytes_ends_cleanly(data: bytes, tmp_path_factory: Any, tiny_model: Path) -> None:
    """With a real model, so the random picture reaches the decoders; a good picture beside it must be
    classified, so a preparation that refused every picture would fail here."""
    folder = tmp_path_factory.mktemp("fuzz-predict")
    picture = folder / "digit.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    good = digit_one(folder / "one.png")
    result = subprocess.run([str(Path(sys.executable).parent / "mnist-predict"), str(good), str(picture),
                             "--model", str(tiny_model)], cwd=folder, capture_output=True, text=True,
                            timeout=PROCESS_BOUND_S)
    assert_one_line_or_success(result)
    assert result.stdout.startswith(f"{good}: "), result.stdout + result.stderr
    if result.returncode:
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {picture}: ")


def test_the_net_can_catch_a_fault() -> None:
    """The property is not vacuous: a traceback or a second line fails it."""
    crashed = subprocess.CompletedProcess([], 1, "", "Traceback (most recent call last):\n  boom\n")
    with pytest.raises(AssertionError):
        assert_one_line_or_success(crashed)
    two = subprocess.CompletedProcess([], 2, "", "warning: x\nerror: y\n")
    with pytest.raises(AssertionError):
        assert_one_line_or_success(two)
