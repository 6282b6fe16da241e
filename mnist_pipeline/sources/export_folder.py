"""Write an IDX data set (MNIST, Fashion-MNIST) as a folder of images, one subfolder per class.

The layout is the one `data.dataset: folder` reads, so every reader has a folder to try the folder
path with, and a way to compare it with the IDX path on the same pictures:

    python -m mnist_pipeline.sources.export_folder --dataset fashion_mnist --split test --out data/images

    data/images/Ankle boot/test-00000.png
    data/images/T-shirt-top/test-00001.png      # a '/' in a class name becomes '-'

With `--layout splits` each split gets its own folder, the layout `preprocess.split: folders` reads:
the data set's own test set stays the test set (`--split all --layout splits`):

    data/images/train/Ankle boot/train-00000.png
    data/images/test/Ankle boot/test-00000.png

A file is named after its split and its index in that split's IDX file, so train and test images
never collide and each file traces back to its source. The IDX files come from `<raw>/<dataset>/`
(the download stage's output) when all four are there, else they are fetched and verified as the
download stage does ($DATASET_MIRROR first, then params.yaml's mirrors) into a temporary folder.

The bytes are deterministic: Pillow writes PNG without a timestamp, and the same pixels give the
same files. The folder appears whole or not at all: it is written beside its final name and renamed
into place at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_pipeline.core import progress
from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.config import PARAMS_FILE, load_config
from mnist_pipeline.core.datasets import DATASETS, DatasetSpec, raw_name
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import atomic_dir
from mnist_pipeline.sources.download import MIRROR_ENV, download_dataset
from mnist_pipeline.sources.splits import load_raw

SPLITS = ("train", "test")
LAYOUTS = ("classes", "splits")
FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg")}
JPEG_QUALITY = 95
# Wide enough for the 60,000 training images' indexes: names sort in the IDX files' order.
INDEX_DIGITS = 5


def folder_name(class_name: str) -> str:
    """A class name as a folder name: '/' (Fashion-MNIST's "T-shirt/top") cannot be part of one."""
    return class_name.replace("/", "-")


def read_dataset(spec: DatasetSpec, raw_dir: Path, params: str) -> dict[str, np.ndarray]:
    """The data set's four IDX arrays: from `raw_dir` when the download stage wrote them there, else
    fetched and checksum-verified into a temporary folder that is gone afterwards."""
    if all((raw_dir / spec.name / raw_name(f.name)).is_file() for f in spec.files):
        progress.say(f"export: reading {spec.name} from {raw_dir / spec.name}")
        return load_raw(raw_dir, spec)
    try:
        download = load_config(params).download
    except PipelineError as e:
        raise PipelineError(f"{raw_dir / spec.name}: no IDX files there (`dvc repro download` writes them), and "
                            f"fetching them needs the project's mirrors: {e}") from None
    with tempfile.TemporaryDirectory(prefix="export-idx-") as tmp:
        download_dataset(spec, tmp, download, env_root=os.environ.get(MIRROR_ENV))
        return load_raw(tmp, spec)


def write_images(images: np.ndarray, labels: np.ndarray, split: str, folders: Sequence[Path],
                 image_format: str) -> None:
    """One file per image, in its class's folder, named `<split>-<index>.<ext>`."""
    pil_format, ext = FORMATS[image_format]
    options = {"quality": JPEG_QUALITY} if pil_format == "JPEG" else {}
    bar = progress.bar(len(images), f"export {split}", unit="img")
    try:
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            path = folders[int(label)] / f"{split}-{index:0{INDEX_DIGITS}d}{ext}"
            Image.fromarray(pixels).save(path, format=pil_format, **options)
            bar.update()
    finally:
        bar.close()


def export(dataset: str, splits: Sequence[str], limit: int, image_format: str, out: Path, raw_dir: Path,
           force: bool = False, params: str = PARAMS_FILE, layout: str = "classes") -> dict[str, int]:
    """Write the chosen splits of `dataset` into `out`, class folders at the top or (layout `splits`) under
    one folder per split; returns the images written per class."""
    spec = DATASETS[dataset]
    if out.exists() and not out.is_dir():
        raise PipelineError(f"{out}: exists and is not a folder: expected a folder path for --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PipelineError(f"{out}: folder is not empty: expected a new or empty folder (--force replaces it)")
    names = [folder_name(name) for name in spec.class_names]
    arrays = read_dataset(spec, raw_dir, params)
    chosen = {split: (arrays[f"{split}_images"][: limit or None], arrays[f"{split}_labels"][: limit or None])
              for split in splits}
    # Only classes that have images get a folder: an empty class folder is bad data to the folder path.
    present = np.unique(np.concatenate([labels for _, labels in chosen.values()]))
    counts = {names[int(label)]: 0 for label in present}
    with atomic_dir(out) as tmp:
        for split, (images, labels) in chosen.items():
            folders = [(tmp / split if layout == "splits" else tmp) / name for name in names]
            for label in np.unique(labels):
                folders[int(label)].mkdir(parents=True, exist_ok=True)
            write_images(images, labels, split, folders, image_format)
            for label, n in zip(*np.unique(labels, return_counts=True), strict=True):
                counts[names[int(label)]] += int(n)
            progress.say(f"export: {spec.name} {split}: {len(images):,} {image_format.upper()} images written")
    where = "class folders" if layout == "classes" else f"classes, under {' and '.join(f'{s}/' for s in splits)}"
    progress.say(f"export: {sum(counts.values()):,} images in {len(counts)} {where}: {out}")
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_pipeline.sources.export_folder",
        description="Write an IDX data set as a folder of images, one subfolder per class "
        "('/' in a class name becomes '-'), the layout data.dataset: folder reads.",
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="test",
                        help="which IDX split to write; all = train and test (70,000 images)")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="only the first N images of each split (0 = all)")
    parser.add_argument("--format", dest="image_format", choices=sorted(FORMATS), default="png",
                        help=f"png (lossless) or jpeg (quality {JPEG_QUALITY})")
    parser.add_argument("--layout", choices=LAYOUTS, default="classes",
                        help="classes: <out>/<class>/ (preprocess.split: hash); splits: <out>/<split>/<class>/ "
                        "(preprocess.split: folders, the data set's own test set as the test split)")
    parser.add_argument("--out", type=Path, default=Path("data/images"), help="the folder to create")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"),
                        help="where the download stage keeps the IDX files (fetched when absent there)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file whose download mirrors are used")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error(f"--limit {args.limit}: expected 0 (all) or a positive number of images per split")
    splits = SPLITS if args.split == "all" else (args.split,)
    export(args.dataset, splits, args.limit, args.image_format, args.out, args.raw, args.force, args.params,
           args.layout)


if __name__ == "__main__":
    run_command(main)
