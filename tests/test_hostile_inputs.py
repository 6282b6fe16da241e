"""Hostile inputs that once gave a silent wrong result, a hang or a traceback: each now ends in one
line or a correct result. Quick, in-process tests on real files, FIFOs and arrays."""

from __future__ import annotations

import ast
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import requires

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.inference.predict import prepare_images
from mnist_pipeline.train.registry import load_config

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mnist_pipeline"


def finishes(call: Callable[[], Any], fifo: Path) -> Any:
    """`call()`'s result, failing (not hanging) when it blocks on `fifo`: a writer then releases it."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        with open(fifo, "wb"):  # the blocked reader gets end of file and returns
            pass
        worker.join()
        pytest.fail(f"blocked opening the FIFO {fifo}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@requires(hasattr(os, "mkfifo"), "FIFOs are POSIX")
@pytest.mark.parametrize(("model", "expected"), [("mnist", "not a regular file (a FIFO): expected an image file"),
                                               ("folder", "not a regular file (a FIFO): expected an image file")],
                         ids=["mnist", "folder"])
def test_mnist_predict_refuses_a_fifo_for_either_kind_of_model(tmp_path: Path, model: str, expected: str) -> None:
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    folder = load_config(ROOT / "params.yaml").preprocess if model == "folder" else None
    files, images, errors = finishes(lambda: prepare_images([str(fifo)], folder), fifo)
    assert (files, images) == ([], [])
    assert len(errors) == 1 and errors[0]["file"] == str(fifo)
    assert errors[0]["error"] == f"{fifo}: {expected}"


def _reading_opens(tree: ast.AST) -> list[int]:
    """Lines of builtin open() calls that read (no mode, or a mode without w, x or a)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                 None)
            text = mode.value if isinstance(mode, ast.Constant) else "r"
            if not set(str(text)) & set("wxa"):
                lines.append(node.lineno)
    return lines


def test_every_picture_reader_opens_files_through_the_one_regular_file_check() -> None:
    """A module that hands files to Pillow reads them only through files.open_regular."""
    readers = [p for p in sorted(PACKAGE.rglob("*.py")) if "from PIL import" in p.read_text(encoding="utf-8")]
    assert {"imageprep.py", "imagefolder.py", "predict.py", "serve.py"} <= {p.name for p in readers}
    found = {p.name: lines for p in readers if (lines := _reading_opens(ast.parse(p.read_text(encoding="utf-8"))))}
    assert found == {}, f"builtin open() for reading, not files.open_regular: {found}"


def test_open_regular_names_what_a_path_is_instead_of_reading_it(tmp_path: Path) -> None:
    from mnist_pipeline.core.files import NotRegularFile, open_regular

    with pytest.raises(NotRegularFile, match=r"not a regular file \(a directory\)"):
        open_regular(tmp_path)
    with pytest.raises(NotRegularFile, match=r"not a regular file \(a character device\)"):
        open_regular("/dev/zero")
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing.png")


@pytest.mark.parametrize("classes", [10, 30, 31, 150, 1000])
def test_confusion_plot_is_bounded_in_pixels_whatever_the_class_count(tmp_path: Path, classes: int) -> None:
    """Past 30 classes the most frequent confusions are drawn, not a matrix growing with the square."""
    import numpy as np
    from PIL import Image

    from mnist_pipeline.evaluate.plots import TOP_CONFUSIONS, plot_confusion

    rng = np.random.default_rng(classes)
    confusion = rng.integers(0, 4, (classes, classes))
    np.fill_diagonal(confusion, 40)
    names = [f"a class with a rather long name number {i}" for i in range(classes)]
    plot_confusion(confusion, names, tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as png:
        assert png.width <= 1200 and png.height <= 1200, png.size
    assert TOP_CONFUSIONS <= 30


def test_folder_preprocess_holds_a_chunk_of_bytes_not_of_images(tmp_path: Path) -> None:
    """At image_size 1024 in RGB an image is 12 MB of float32: a chunk counted in images (4,096 of them)
    once asked for 6.5 GiB. Memory now stays near CHUNK_BYTES whatever the image size."""
    import tracemalloc

    import numpy as np
    from PIL import Image

    from mnist_pipeline.sources.imagefolder import prepare_folder
    from mnist_pipeline.sources.splits import CHUNK_BYTES

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / name / f"{i}.png")
    cfg = load_config(ROOT / "params.yaml").preprocess.model_copy(update={"image_size": 1024, "color": "rgb"})
    tracemalloc.start()
    try:
        spec = prepare_folder(str(images), tmp_path / "prepared", cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_image = 4 * spec.n_pixels
    assert spec.n_pixels == 1024 * 1024 * 3
    assert peak < CHUNK_BYTES + 4 * one_image, f"peak {peak / 2**20:.0f} MiB for {one_image / 2**20:.0f} MiB images"
    x_train = np.load(tmp_path / "prepared" / "x_train.npy", mmap_mode="r")
    x_test = np.load(tmp_path / "prepared" / "x_test.npy", mmap_mode="r")
    assert len(x_train) + len(x_test) == 12


def _tiff(path: Path, values: list[list[int]], dtype: str) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.array(values, dtype=dtype)).save(path, format="TIFF")
    return path


def test_32_bit_integer_tiff_is_refused_not_clipped(tmp_path: Path) -> None:
    """Mode I holds values up to 2**31: clipped at 65535, 100000 and 70000 would both become white."""
    from mnist_pipeline.inference.predict import prepare_folder_picture
    from mnist_pipeline.sources.imagefolder import BadImage, decode, pixel_limit

    cfg = load_config(ROOT / "params.yaml").preprocess.model_copy(update={"image_size": 4})
    wide = _tiff(tmp_path / "wide.tif", [[0, 70000], [100000, 2**31 - 1]], "int32")
    expected = ("unsupported pixels: signed or 32-bit integer pixels: expected 8- or 16-bit unsigned integer "
                "images (save it as 16-bit)")
    with open(wide, "rb") as f, pixel_limit(), pytest.raises(BadImage) as caught:
        decode(f, cfg)
    assert f"{caught.value.reason}: {caught.value.detail}" == expected
    with pytest.raises(PipelineError) as refused:
        prepare_folder_picture(wide, cfg)
    assert str(refused.value) == f"{wide}: {expected}"


def test_16_bit_tiff_is_still_scaled_by_its_full_range(tmp_path: Path) -> None:
    import numpy as np

    from mnist_pipeline.sources.imagefolder import decode, pixel_limit

    cfg = load_config(ROOT / "params.yaml").preprocess.model_copy(update={"image_size": 2})
    deep = _tiff(tmp_path / "deep.tif", [[0, 257], [32896, 65535]], "uint16")
    with open(deep, "rb") as f, pixel_limit():
        assert decode(f, cfg).tolist() == np.array([[0, 1], [128, 255]]).tolist()


def _count_keys() -> list[str]:
    """Every params key that holds an integer or a list of integers, from the config's own schema."""
    from mnist_pipeline.train.registry import leaf_keys

    return sorted(key for key, field in leaf_keys().items() if field.annotation in (int, list[int]))


@pytest.mark.parametrize("key", _count_keys())
def test_every_count_param_has_an_upper_bound(key: str) -> None:
    """10**20 in any count (train.epochs with lr_schedule one_cycle once ended in a TypeError) is one line."""
    import copy

    import yaml

    from mnist_pipeline.core.config import set_dotted
    from mnist_pipeline.train.registry import leaf_keys, validate

    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree = copy.deepcopy(tree)
    set_dotted(tree, "train.lr_schedule", "one_cycle")
    huge = [10**20] if leaf_keys()[key].annotation == list[int] else 10**20
    set_dotted(tree, key, huge)
    with pytest.raises(PipelineError) as refused:
        validate(tree)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"params.yaml: {key} = {huge}: expected ")
    assert "in [" in message, message  # the allowed range, with its upper end
    if key == "train.epochs":
        assert message == "params.yaml: train.epochs = 100000000000000000000: expected an integer in [1, 100000]"


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_class_folder_nested_1200_deep_is_one_line_not_a_recursion_error(tmp_path: Path, policy: str) -> None:
    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / name / f"{i}.png")
    fd = os.open(images / "a", os.O_RDONLY)
    try:  # 1,200 levels: created relative to an open folder, as no path that long could name them
        for _ in range(1200):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(f"/proc/self/fd/{fd}/deep.png")
    finally:
        os.close(fd)
    try:
        _scan_deep(images, policy)
    finally:
        _remove_chain(images / "a", "d", 1200)  # shutil.rmtree itself recurses: pytest could not remove it


def _remove_chain(top: Path, name: str, depth: int) -> None:
    """Remove `top/name/name/...` (depth levels, each holding at most files) from the bottom up, by fds."""
    fds = [os.open(top, os.O_RDONLY)]
    try:
        for _ in range(depth):
            fds.append(os.open(name, os.O_RDONLY, dir_fd=fds[-1]))
        while len(fds) > 1:
            inner = fds.pop()
            for entry in os.listdir(inner):
                os.unlink(entry, dir_fd=inner)
            os.close(inner)
            os.rmdir(name, dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def _scan_deep(images: Path, policy: str) -> None:
    from mnist_pipeline.sources.imagefolder import MAX_DEPTH, BadFiles, scan

    cfg = load_config(ROOT / "params.yaml").preprocess.model_copy(update={"bad_images": policy, "image_size": 8})
    bad = BadFiles(str(images), fail=policy == "fail")
    too_deep = "a/" + "/".join(["d"] * (MAX_DEPTH + 1))
    if policy == "fail":
        with pytest.raises(PipelineError) as refused:
            scan(str(images), cfg, bad)
        assert str(refused.value) == (f"{images}/{too_deep}: folder nested too deep (over {MAX_DEPTH} folders below "
                                      "its class folder: expected images at most that deep): fix or remove it, or "
                                      "set preprocess.bad_images: skip to leave such files out")
    else:
        classes, entries = scan(str(images), cfg, bad)
        assert classes == ["a", "b"] and len(entries) == 6
        assert bad.found == [(too_deep, "folder nested too deep")]


def _spec(size: int = 28, channels: int = 1, classes: int = 10) -> Any:
    from mnist_pipeline.prepared import PreparedSpec

    return PreparedSpec("test", tuple(str(i) for i in range(classes)), (size, size), channels)


def test_a_model_too_big_for_memory_is_refused_before_building_in_one_line() -> None:
    """model.hidden [1000000, 1000000]: a trillion weights; TensorFlow took minutes to a 40-line error."""
    from mnist_pipeline.train.footprint import check_fits

    cfg = load_config(ROOT / "params.yaml")
    model = cfg.model.model_copy(update={"hidden": [1000000, 1000000]})
    with pytest.raises(PipelineError) as refused:
        check_fits(model, cfg.train, _spec(), available=64 << 30)
    assert str(refused.value) == (
        "params.yaml: model.hidden = [1000000, 1000000], train.batch_size = 32, train.optimizer = adam: training "
        "needs at least 14.6 TiB (1,000,796,000,010 weights with their gradients and 2 optimizer slots, 244.1 MiB "
        "of layer outputs per batch), more than the 64.0 GiB of memory here: expected a smaller model or batch")
    huge_batch = cfg.model.model_copy(update={"type": "cnn"})
    train = cfg.train.model_copy(update={"batch_size": 65536})
    with pytest.raises(PipelineError, match=r"^params.yaml: model.cnn.filters = \[32, 64\], model.cnn.dense = 128, "
                                            r"train.batch_size = 65536, .* of layer outputs per batch\), more than"):
        check_fits(huge_batch, train, _spec(size=256, channels=3), available=64 << 30)
    check_fits(cfg.model, cfg.train, _spec(), available=64 << 20)  # the tutorial's model fits in 64 MiB


@pytest.mark.parametrize("update", [{}, {"type": "cnn"}, {"type": "cnn", "cnn.first_conv": "whitened"},
                                    {"type": "cnn", "cnn.batch_norm_first": False, "cnn.strided_blocks": 1}])
def test_memory_estimate_counts_the_weights_keras_builds(update: dict[str, Any]) -> None:
    """The estimate follows the builders: its weight count is Keras' own count_params of the built model."""
    from mnist_pipeline.train.footprint import estimate
    from mnist_pipeline.train.registry import build_model

    cfg = load_config(ROOT / "params.yaml")
    cnn = cfg.model.cnn.model_copy(update={k[4:]: v for k, v in update.items() if k.startswith("cnn.")})
    model = cfg.model.model_copy(update={"cnn": cnn, **{k: v for k, v in update.items() if "." not in k}})
    spec = _spec(size=20, channels=3)
    assert estimate(model, cfg.train, spec).parameters == build_model(model, spec).count_params()


def test_a_file_name_with_a_newline_stays_on_its_own_output_line(tmp_path: Path) -> None:
    """`a\\nb.png` once printed as two lines of mnist-predict's text output, the second looking like a file."""
    import numpy as np

    from mnist_pipeline.inference.predict import classify, format_text

    name = tmp_path / "seven\n8.png: 8 (99.0%)\x1b[2J.png"
    probabilities = np.full((1, 10), 0.01, np.float32)
    probabilities[0, 7] = 0.91
    [record] = classify(probabilities, [name], tuple(str(d) for d in range(10)), 3)
    line = format_text(record)
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith(f"{tmp_path}/seven\\n8.png: 8 (99.0%)\\x1b[2J.png: 7 (91.0%)   top-3: 7 91.0%, ")
    assert record["file"] == str(name)  # --json keeps the exact name, JSON-escaped
    name.write_bytes(b"not a picture")
    files, _, errors = prepare_images([str(name)])
    assert files == [] and errors == [{"file": str(name), "error": f"{tmp_path}/seven\\n8.png: 8 (99.0%)\\x1b[2J.png: "
                                                                     "not an image (expected PNG, JPEG, BMP, TIFF, GIF "
                                                                     "or WEBP)"}]


def _params_with(tmp_path: Path, old: str, new: str) -> Path:
    """The project's params.yaml with one line changed, as a user would edit it."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  strided_blocks: 0 ", "  strided_blocks: 3 ",
     "params.yaml: model.cnn.strided_blocks = 3: expected an integer in [0, 2] (model.cnn.filters has 2 blocks)"),
    ("  activation: relu ", "  activation: r\u0435lu ",
     "params.yaml: model.activation = 'r\u0435lu': expected one of relu, sigmoid, tanh, elu, selu, gelu, softplus, "
     "swish, linear (did you mean 'relu'?; it has '\u0435' (U+0435 CYRILLIC SMALL LETTER IE) where 'e' is meant)"),
    ("  epochs: 5\n", "  epochs: 5\n  ~: 1\n",
     "params.yaml: key None in 'train' (YAML reads ~, null or an empty key as null): expected a key name, one of "
     "train.epochs, train.batch_size, train.optimizer, train.learning_rate, train.lr_schedule, "
     "train.label_smoothing, train.seed, train.cpu_threads, train.cpu_kernels, train.strategy, train.checkpoint, "
     "train.memory_budget_mb"),
], ids=["strided_blocks above the blocks", "look-alike letter in a value", "null key in a section"])
def test_odd_params_get_a_line_that_names_the_real_problem(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = _params_with(tmp_path, old, new)
    with pytest.raises(PipelineError) as refused:
        load_config(path)
    assert str(refused.value) == expected.replace("params.yaml", str(path), 1)


@requires(hasattr(os, "mkfifo"), "FIFOs are POSIX")
def test_links_to_nothing_loops_and_fifos_in_a_directory_argument_are_reported_not_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "notes.txt").write_text("not named as a picture: passed over")
    files, _, errors = finishes(lambda: prepare_images([str(folder)]), folder / "pipe.png")
    assert files == []
    assert errors == [
        {"file": str(folder / "dangling.png"), "error": f"{folder}/dangling.png: file not found"},
        {"file": str(folder / "loop.png"),
         "error": f"{folder}/loop.png: cannot open: too many levels of symbolic links"},
        {"file": str(folder / "pipe.png"),
         "error": f"{folder}/pipe.png: not a regular file (a FIFO): expected an image file"},
    ]


def test_same_bytes_under_two_classes_are_reported_as_conflicting_labels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only duplicates across splits were warned of; the same picture as a cat and as a dog was not."""
    import numpy as np
    from PIL import Image

    from mnist_pipeline.sources.imagefolder import prepare_folder

    images = tmp_path / "images"
    rng = np.random.default_rng(1)
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / name / f"{i}.png")
    (images / "dog" / "same.png").write_bytes((images / "cat" / "3.png").read_bytes())
    cfg = load_config(ROOT / "params.yaml").preprocess.model_copy(update={"image_size": 8})
    prepare_folder(str(images), tmp_path / "prepared", cfg)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "different classes" in line]
    assert warnings == ["preprocess: warning: 2 images have the same bytes under different classes (conflicting "
                        "labels: one picture, two answers): cat/3.png (class cat) = dog/same.png (class dog)"]


GROUP_WRITER = """
import os, signal, sys
from pathlib import Path
from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.files import output_group, save_json

out = sys.argv[1]

def main():
    with output_group(f"{out}/evaluate.json", f"{out}/per_class.csv", f"{out}/confusion.png") as (a, b, c):
        save_json(a, {"accuracy": 0.5})
        if sys.argv[2] == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        with open(b, "w") as f:
            f.write("y" * 100_000)
        c.write_bytes(b"new")

run_command(main)
"""


@pytest.mark.parametrize(("how", "status", "line"), [
    ("ulimit", 2, "error: {out}/per_class.csv: File too large"),
    ("sigterm", 143, "error: terminated (SIGTERM); no partial output was kept"),
])
def test_evaluate_outputs_change_together_or_not_at_all(tmp_path: Path, how: str, status: int, line: str) -> None:
    """SIGTERM between evaluate's writes once replaced evaluate.json alone; `ulimit -f 40` replaced 4 of 5."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "metrics"
    out.mkdir()
    old = {"evaluate.json": "old metrics", "per_class.csv": "old table", "confusion.png": "old picture"}
    for name, text in old.items():
        (out / name).write_text(text)

    def limit_file_size() -> None:
        if how == "ulimit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    result = subprocess.run([sys.executable, "-c", GROUP_WRITER, str(out), how], capture_output=True, text=True,
                            timeout=120, preexec_fn=limit_file_size, cwd=ROOT)
    assert result.returncode == status, result.stderr
    assert result.stderr.strip().splitlines()[-1] == line.format(out=out)
    assert {p.name: p.read_text() for p in out.iterdir()} == old  # every old output, nothing left beside them
    ok = subprocess.run([sys.executable, "-c", GROUP_WRITER, str(out), "whole"], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(old) and (out / "confusion.png").read_text() == "new"


@pytest.mark.parametrize(("blocker", "expected"), [
    ("models", "{root}/models: a regular file, not a folder: expected a folder for {root}/models/model.keras "
               "(move it away, then rerun)"),
    ("models/model.keras/", "{root}/models/model.keras: a folder: expected the file written there (move it away, "
                            "then rerun)"),
])
def test_output_paths_are_checked_before_the_work(tmp_path: Path, blocker: str, expected: str) -> None:
    """`models` as a file once failed train only after all its epochs; `.cache` as a file on every rerun."""
    from mnist_pipeline.core.files import check_output_paths

    if blocker.endswith("/"):
        (tmp_path / blocker).mkdir(parents=True)
    else:
        (tmp_path / blocker).write_text("in the way")
    with pytest.raises(PipelineError) as refused:
        check_output_paths(tmp_path / "metrics" / "train.json", tmp_path / "models" / "model.keras")
    assert str(refused.value) == expected.format(root=tmp_path)


def test_a_finite_but_impossible_pixel_in_a_prepared_array_is_refused(tmp_path: Path) -> None:
    """1e30 in x_test was accepted and changed the accuracy: preprocess's x/255 - 0.5 gives -0.5 to 0.5 only."""
    import numpy as np
    from PIL import Image

    from mnist_pipeline.prepared import load_spec, load_split, save_spec
    from mnist_pipeline.sources.imagefolder import prepare_folder

    images = tmp_path / "images"
    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / name / f"{i}.png")
    cfg = load_config(ROOT / "params.yaml").preprocess.model_copy(update={"image_size": 8})
    prepared = tmp_path / "data" / "prepared"
    save_spec(prepared, prepare_folder(str(images), prepared, cfg))
    spec = load_spec(prepared)
    assert spec.pixel_range == (-0.5, 0.5)
    load_split(prepared, "test", spec)  # as preprocess wrote it
    x_test = np.load(prepared / "x_test.npy")
    x_test[0, 3] = 1e30
    np.save(prepared / "x_test.npy", x_test)
    with pytest.raises(PipelineError) as refused:
        load_split(prepared, "test", spec, mmap=True)
    assert str(refused.value) == (
        f"{prepared}/x_test.npy: 1 pixel values outside [-0.5, 0.5] (one is 1e+30), the range preprocess's "
        "scaling gives: expected values preprocess wrote (rerun preprocess: dvc repro -f -s preprocess)")


def test_mnist_predict_refuses_the_new_data_sets_classes_for_a_model_of_the_old_one(tmp_path: Path) -> None:
    """data.dataset edited to fashion_mnist, no `dvc repro` yet: the model still knows digits, not clothes."""
    import hashlib

    import yaml

    from mnist_pipeline.inference.predict import parse_args, run

    params = _params_with(tmp_path, "  dataset: mnist ", "  dataset: fashion_mnist ")
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "model.keras"
    model.write_bytes(b"the trained model")
    md5 = hashlib.md5(b"the trained model", usedforsecurity=False).hexdigest()
    lock = {"schema": "2.0", "stages": {
        "preprocess": {"params": {"params.yaml": {"data.dataset": "mnist"}}},
        "train": {"outs": [{"path": "models/model.keras", "md5": md5}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    picture = tmp_path / "digit.png"
    picture.write_text("not even a picture: the check comes first")
    with pytest.raises(PipelineError) as refused:
        run(parse_args(["--params", str(params), "--model", str(model), str(picture)]))
    assert str(refused.value) == (f"{params}: data.dataset = fashion_mnist, but {model} was trained on mnist "
                                  "(dvc.lock): run `dvc repro` to train on fashion_mnist, or pass --dataset mnist")
    # Told which classes to use, it goes on (to the picture, which is refused on its own line).
    records, errors = run(parse_args(["--params", str(params), "--dataset", "mnist", "--model", str(model),
                                      str(picture)]))
    assert records == [] and errors[0]["error"].endswith("not an image (expected PNG, JPEG, BMP, TIFF, GIF or WEBP)")
    model.write_bytes(b"a model dvc.lock does not record")  # trained some other way: nothing to compare with
    records, errors = run(parse_args(["--params", str(params), "--model", str(model), str(picture)]))
    assert records == [] and len(errors) == 1


STAGE_LIKE = """
import threading
from mnist_pipeline.core.cli import run_stage
from mnist_pipeline.core.files import atomic_path

def main(output):
    with atomic_path(output) as tmp:
        tmp.write_text("half an output")
        print("working", flush=True)
        threading.Event().wait(300)  # a long training

run_stage(main, "a stage as stages/*.py start them", "output")
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen(sys.argv[1:])
print(child.pid, flush=True)
child.wait()
"""


@requires(hasattr(os, "pidfd_open"), "needs pidfd_open (Linux 5.3)")
@pytest.mark.parametrize("how", ["direct", "through a shell"])
def test_a_stage_ends_when_the_dvc_that_started_it_is_killed(tmp_path: Path, how: str) -> None:
    """SIGKILL to the parent (dvc) once left the stage training on, rewriting outputs after dvc released its lock."""
    import select
    import shlex
    import signal
    import subprocess
    import sys

    output = tmp_path / "models" / "model.keras"
    stage = [sys.executable, "-c", STAGE_LIKE, str(output)]
    if how == "through a shell":  # `; true`: the shell stays between dvc and the stage, as some shells do
        stage = ["/bin/sh", "-c", shlex.join(stage) + "; true"]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *stage], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline() == "working\n"  # the stage's own line, through the inherited pipe
        if how == "through a shell":  # the shell's one child is the stage
            (child,) = map(int, Path(f"/proc/{child}/task/{child}/children").read_text().split())
        watcher = os.pidfd_open(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        ended, _, _ = select.select([watcher], [], [], 60)
        os.close(watcher)
        assert ended, "the stage still runs a minute after its parent was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
    assert not output.exists() and list(output.parent.iterdir()) == []  # nothing half-written left behind
