"""Classify your own digit pictures with the trained model: `mnist-predict my_digit.png`.

Every picture is prepared as MNIST was (imageprep.py) and scaled as preprocess scales the data
set, so the model sees what it was trained on. Bad input is reported before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.cli import run_command
from mnist_pipeline.config import PreprocessConfig, load_config
from mnist_pipeline.data import scale_images
from mnist_pipeline.datasets import DATASETS
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.imageprep import expand_paths, prepare_file

DEFAULT_MODEL = "models/model.keras"
DEFAULT_PARAMS = "params.yaml"
# What preprocess uses by default (the tutorial's x/255 - 0.5), for use outside a project.
DEFAULT_SCALE, DEFAULT_OFFSET = 255.0, 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mnist-predict",
        description="Classify PNG or JPEG pictures of digits (or clothes, for fashion_mnist) with the trained model.",
    )
    parser.add_argument("images", nargs="+", help="image files, or directories whose PNG/JPEG files are all classified")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"trained Keras model (default {DEFAULT_MODEL})")
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


def settings(params_path: str | None, dataset: str | None) -> tuple[str, float, float]:
    """Dataset name and preprocess scaling: the project's params, else the tutorial's defaults.

    Only the default params.yaml may be absent: a path the user gave must exist, or a Fashion-MNIST
    model would silently get MNIST's class names.
    """
    if params_path is None and not Path(DEFAULT_PARAMS).exists():
        return dataset or "mnist", DEFAULT_SCALE, DEFAULT_OFFSET
    cfg = load_config(params_path or DEFAULT_PARAMS)
    preprocess: PreprocessConfig = cfg.preprocess
    return dataset or cfg.data.dataset, preprocess.scale, preprocess.offset


def classify(probabilities: np.ndarray, files: list[Path], class_names: tuple[str, ...], top: int) -> list[dict]:
    """One record per file: the predicted class, its probability and the `top` most likely classes."""
    records = []
    for file, row in zip(files, probabilities, strict=True):
        order = np.argsort(-row, kind="stable")[:top]
        best = int(order[0])
        records.append({
            "file": str(file),
            "predicted": best,
            "predicted_name": class_names[best],
            "probability": round(float(row[best]), 6),
            "top": [{"class": int(c), "name": class_names[c], "probability": round(float(row[c]), 6)} for c in order],
        })
    return records


def format_text(record: dict[str, Any]) -> str:
    """`digit.png: 7 (98.1%)   top-3: 7 98.1%, 9 1.2%, 1 0.4%`"""
    ranked = ", ".join(f"{t['name']} {t['probability']:.1%}" for t in record["top"])
    return (f"{record['file']}: {record['predicted_name']} ({record['probability']:.1%})   "
            f"top-{len(record['top'])}: {ranked}")


def run(args: argparse.Namespace) -> list[dict]:
    dataset, scale, offset = settings(args.params, args.dataset)
    if not Path(args.model).is_file():
        raise PipelineError(f"{args.model}: model file not found (train it with `dvc repro`, or pass --model PATH)")
    files = expand_paths(args.images)
    images = np.stack([prepare_file(file) for file in files])
    # Imported here: TensorFlow takes seconds to load, and bad input should not wait for it.
    from mnist_pipeline.models import load_model

    model = load_model(args.model, DATASETS[dataset])
    probabilities = model.predict(scale_images(images, scale, offset), verbose=0)
    return classify(probabilities, files, DATASETS[dataset].class_names, args.top)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 when every picture was classified, 2 with one `error:` line otherwise."""
    args = parse_args(argv)

    def classify_and_print() -> None:
        records = run(args)
        if args.json:
            print(json.dumps({"predictions": records}, indent=2))
        else:
            print("\n".join(format_text(record) for record in records))

    run_command(classify_and_print)


if __name__ == "__main__":
    main()
