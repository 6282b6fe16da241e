"""Classify your own digit pictures with the trained model: `mnist-predict my_digit.png`.

Every picture is prepared as MNIST was (imageprep.py) and scaled as preprocess scales the data
set, so the model sees what it was trained on. A model trained on a folder of your own images
(`data.dataset: folder`) gets each picture read as preprocess read the folder (its size and colour),
and its class names from `data/prepared.json`. The model is the train stage's ONNX file, run by ONNX
Runtime (inference/onnx_model.py): no TensorFlow. Bad input is reported before the model is read: one
`error:` line per bad picture, the others still classified, and exit status 2 at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from mnist_pipeline.core.cli import EXIT_FAULT, fail, one_line, run_command
from mnist_pipeline.core.config import FOLDER, PreprocessConfig, load_config
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.errors import PipelineError, printable
from mnist_pipeline.core.files import NotRegularFile, md5_of, open_regular
from mnist_pipeline.inference.imageprep import expand_paths, prepare_with_warnings, read_image
from mnist_pipeline.inference.onnx_model import DEFAULT_MODEL, load_model
from mnist_pipeline.prepared import PreparedSpec, idx_spec, load_spec
from mnist_pipeline.sources.formats import FORMAT_NAMES
from mnist_pipeline.sources.splits import scale_images

DEFAULT_PARAMS = "params.yaml"
# Where preprocess writes the prepared data's description, relative to the project (dvc.yaml's argument).
PREPARED_DIR = "data/prepared"
# What preprocess uses by default (the tutorial's x/255 - 0.5), for use outside a project.
DEFAULT_SCALE, DEFAULT_OFFSET = 255.0, 0.5
# Larger pictures are refused from their header (a PNG) or decoded at 1/2, 1/4 or 1/8 of their size
# (a JPEG): a 141 KB PNG can declare 10000x10000 pixels, gigabytes once decoded. The same as mnist-serve's.
MAX_PIXELS = 12_000_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-predict",
        description=f"Classify pictures ({FORMAT_NAMES}) of digits (or clothes, for fashion_mnist) with the "
                    "trained model.",
    )
    parser.add_argument("images", nargs="+",
                        help="image files, or directories whose image files (by suffix, not hidden) are all classified")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"trained ONNX model (default {DEFAULT_MODEL})")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    parser.add_argument("--top", type=int, default=3, help="how many most likely classes to list (default 3)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="class names to use (default: params.yaml's)")
    parser.add_argument("--params",
                        help=f"params file for data.dataset and preprocess scaling (default: {DEFAULT_PARAMS} when "
                        "it exists, else MNIST's x/255 - 0.5)")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top {args.top}: expected 1 to 10")
    return args


@dataclass(frozen=True)
class Settings:
    """How pictures become the model's input, and what its outputs are called."""

    dataset: str
    spec: PreparedSpec
    scale: float
    offset: float
    folder: PreprocessConfig | None  # a folder model's preprocess params: pictures are read as its images were


def settings(params_path: str | None, dataset: str | None) -> Settings:
    """Dataset, classes and preprocess scaling: the project's params, else the tutorial's defaults.

    Only the default params.yaml may be absent: a path the user gave must exist, or a Fashion-MNIST
    model would silently get MNIST's class names.
    """
    if params_path is None and not Path(DEFAULT_PARAMS).exists():
        name = dataset or "mnist"
        return Settings(name, idx_spec(DATASETS[name]), DEFAULT_SCALE, DEFAULT_OFFSET, None)
    path = Path(params_path or DEFAULT_PARAMS)
    cfg = load_config(path)
    preprocess: PreprocessConfig = cfg.preprocess
    name = dataset or cfg.data.dataset
    if name not in DATASETS:  # a folder or a CSV: the classes are those preprocess wrote down
        spec = load_spec(path.parent / PREPARED_DIR)
        return Settings(name, spec, preprocess.scale, preprocess.offset, preprocess if name == FOLDER else None)
    return Settings(name, idx_spec(DATASETS[name]), preprocess.scale, preprocess.offset, None)


def trained_on(model: str | os.PathLike[str], root: Path) -> str | None:
    """The data set dvc.lock says this very model file was trained on: the train stage records the file's
    md5, the preprocess stage the data.dataset it prepared. None when dvc.lock does not record this file."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    train = stages.get("train") if isinstance(stages, dict) else None
    preprocess = stages.get("preprocess") if isinstance(stages, dict) else None
    if not isinstance(train, dict) or not isinstance(preprocess, dict):
        return None
    try:
        rel = Path(model).resolve().relative_to(root.resolve()).as_posix()
        md5 = md5_of(model)
    except (ValueError, OSError, NotRegularFile):
        return None
    outs = train.get("outs") if isinstance(train.get("outs"), list) else []
    if not any(isinstance(o, dict) and o.get("path") == rel and o.get("md5") == md5 for o in outs):
        return None
    params = preprocess.get("params")
    recorded = params.get(DEFAULT_PARAMS) if isinstance(params, dict) else None
    dataset = recorded.get("data.dataset") if isinstance(recorded, dict) else None
    return dataset if isinstance(dataset, str) else None


def check_trained_on(model: str | os.PathLike[str], params_path: Path, dataset: str) -> None:
    """After `data.dataset` is edited and before `dvc repro`, the model still knows the old data set's classes:
    naming its outputs with the new one's would be a silent wrong answer."""
    locked = trained_on(model, params_path.parent)
    if locked is not None and locked != dataset:
        other = f", or pass --dataset {locked}" if locked in DATASETS else ""
        raise PipelineError(f"{params_path}: data.dataset = {dataset}, but {model} was trained on {locked} "
                            f"(dvc.lock): run `dvc repro` to train on {dataset}{other}")


def top_classes(row: np.ndarray, class_names: tuple[str, ...], top: int) -> list[dict[str, Any]]:
    """The `top` most likely classes of one image, most likely first (ties in class order): what
    `mnist-predict` prints and `mnist-serve` answers."""
    order = np.argsort(-row, kind="stable")[:top]
    return [{"class": int(c), "name": class_names[c], "probability": round(float(row[c]), 6)} for c in order]


def record(file: str | None, row: np.ndarray, class_names: tuple[str, ...], top: int) -> dict[str, Any]:
    """What one picture is: the predicted class, its name and probability, and the `top` most likely
    classes. `mnist-predict --json` prints these fields and `mnist-serve` answers them (adding its own),
    so a client reads both alike. `file` is None for a picture sent as a raw request body."""
    ranked = top_classes(row, class_names, top)
    best = ranked[0]
    return {
        "file": file,
        "predicted": best["class"],
        "predicted_name": best["name"],
        "probability": best["probability"],
        "top": ranked,
    }


def classify(probabilities: np.ndarray, files: list[Path], class_names: tuple[str, ...], top: int) -> list[dict]:
    """One record per file."""
    return [record(str(file), row, class_names, top) for file, row in zip(files, probabilities, strict=True)]


def format_text(record: dict[str, Any]) -> str:
    """`digit.png: 7 (98.1%)   top-3: 7 98.1%, 9 1.2%, 1 0.4%`"""
    ranked = ", ".join(f"{printable(t['name'])} {t['probability']:.1%}" for t in record["top"])
    return (f"{printable(record['file'])}: {printable(record['predicted_name'])} ({record['probability']:.1%})   "
            f"top-{len(record['top'])}: {ranked}")


def check_model_file(path: str) -> None:
    """The model must be a regular file: say what it is otherwise, before any picture is read."""
    try:
        open_regular(path).close()
    except FileNotFoundError:
        raise PipelineError(f"{path}: model file not found (train it with `dvc repro`, or pass --model PATH)") from None
    except NotRegularFile as e:
        raise PipelineError(f"{path}: not a regular file ({e.kind}): expected an ONNX model file") from None
    except OSError as e:  # a symbolic link loop, a path through a file, no permission
        raise PipelineError(f"{path}: cannot open: {(e.strerror or str(e)).lower()}") from None


def prepare_picture(source: str | os.PathLike[str] | io.BytesIO, name: str) -> tuple[np.ndarray, list[str]]:
    """One picture (a file, or an upload in memory for mnist-serve) as the 28x28 image the model sees,
    and a line per doubt about a photo: read with the pixel limit, prepared as MNIST was."""
    return prepare_with_warnings(read_image(source, name, max_pixels=MAX_PIXELS, shrink_jpeg=True), name)


def prepare_folder_picture(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    """A picture for a folder model: decoded, coloured and sized exactly as preprocess read the folder."""
    from mnist_pipeline.sources.imagefolder import BadImage, decode, pixel_limit

    try:
        with open_regular(path) as f, pixel_limit():
            return decode(f, cfg)
    except BadImage as e:
        raise PipelineError(f"{printable(str(path))}: {e.reason}" + (f": {e.detail}" if e.detail else "")) from None
    except NotRegularFile as e:
        raise PipelineError(f"{printable(str(path))}: not a regular file ({e.kind}): expected an image file") from None
    except OSError as e:
        raise PipelineError(f"{printable(str(path))}: cannot read ({(e.strerror or str(e)).lower()})") from None


def prepare_images(
    given: list[str], folder: PreprocessConfig | None = None
) -> tuple[list[Path], list[np.ndarray], list[dict[str, str]]]:
    """Every picture the arguments name, prepared; a bad one is reported on stderr and skipped.

    Returns the files that prepared, their images, and one {"file", "error"} per argument or file that
    did not. An unsure photo is prepared and gets a `warning:` line.
    """
    files: list[Path] = []
    images: list[np.ndarray] = []
    errors: list[dict[str, str]] = []
    for argument in given:
        try:
            found = expand_paths([argument])
        except PipelineError as e:
            fail(e)
            errors.append({"file": argument, "error": one_line(e)})
            continue
        for file in found:
            try:
                if folder is None:
                    image, doubts = prepare_picture(file, printable(str(file)))
                else:
                    image, doubts = prepare_folder_picture(file, folder), []
            except PipelineError as e:
                fail(e)
                errors.append({"file": str(file), "error": one_line(e)})
                continue
            for doubt in doubts:
                print(f"warning: {one_line(doubt)}", file=sys.stderr, flush=True)
            files.append(file)
            images.append(image)
    return files, images, errors


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict[str, str]]]:
    """Predictions for the pictures that could be prepared, and the errors of those that could not."""
    how = settings(args.params, args.dataset)
    check_model_file(args.model)
    params_path = Path(args.params or DEFAULT_PARAMS)
    if args.dataset is None and params_path.is_file():
        check_trained_on(args.model, params_path, how.dataset)
    files, images, errors = prepare_images(args.images, how.folder)
    if not files:
        return [], errors
    model = load_model(args.model, how.spec.n_pixels, how.spec.n_classes)
    probabilities = model.probabilities(scale_images(np.stack(images), how.scale, how.offset))
    top = min(args.top, how.spec.n_classes)
    return classify(probabilities, files, how.spec.class_names, top), errors


def write_stdout(text: str) -> None:
    """All of the output in one write, so a full disk is one error line rather than a half-written file.

    When stdout is a regular file, whatever part did get written is cut off again.
    """
    data = text.encode(sys.stdout.encoding or "utf-8", errors="surrogateescape")
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a file descriptor
        sys.stdout.write(text)
        return
    start = os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise
    except OSError as e:
        if start is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e)).lower()
        raise PipelineError(f"<stdout>: {reason}") from None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 when every picture was classified; 2 after one `error:` line per fault.

    Bad pictures do not stop the good ones: those are classified and printed, and the exit status is 2.
    """
    args = parse_args(argv)
    # Pillow warns (two lines on stderr) about pictures over 89 million pixels; MAX_PIXELS is far stricter.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    # A corrupt TIFF's tags make Pillow warn on stderr besides the one `error:` line that reports the file.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")

    def classify_and_print() -> int:
        records, errors = run(args)
        if args.json:
            write_stdout(json.dumps({"predictions": records, "errors": errors}, indent=2) + "\n")
        elif records:
            write_stdout("".join(format_text(record) + "\n" for record in records))
        return EXIT_FAULT if errors else 0

    run_command(classify_and_print)


if __name__ == "__main__":
    main()
