"""Scan-like pictures of MNIST test digits through picture preparation: refusals, warnings, accuracy.

    python benchmarks/scan_digits.py [--slice held-out | tuning] [--epochs 3]
    python benchmarks/scan_digits.py --strokes     # MNIST's stroke widths, behind imageprep.MAX_STROKE

The scans are tests/scankit.py's (64-128 px, blurred, thin to marker-thick strokes, both polarities,
margins, edge lines, a third JPEG), made from MNIST's test digits 5000-5999 (held out: imageprep was tuned
on 0-1999 only). Each is prepared as `mnist-predict` prepares a file; the tutorial's MLP, trained here on
MNIST's 60,000 training images (seeded), classifies the prepared scans and the same digits' 28x28 originals.
tests/test_scans.py asserts the thresholds on the same numbers. Needs the local data mirror
($DATASET_MIRROR, or ../shared/datasets next to the project). A benchmark: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

import scankit  # noqa: E402

from mnist_pipeline.core.datasets import TRAIN_IMAGES  # noqa: E402
from mnist_pipeline.inference.imageprep import (  # noqa: E402
    BOX,
    crop_to_ink,
    half_extent,
    stroke_width,
    to_ink,
)
from mnist_pipeline.sources.idx import read_idx  # noqa: E402


def mirror() -> Path:
    root = Path(os.environ.get("DATASET_MIRROR") or PROJECT_ROOT.parent / "shared" / "datasets")
    if not (root / "mnist" / TRAIN_IMAGES).is_file():
        sys.exit(f"error: {root}: no mnist/{TRAIN_IMAGES} (set DATASET_MIRROR to the local data mirror)")
    return root


def strokes(root: Path, count: int = 10_000, scaled: int = 3_000) -> None:
    """imageprep's constants from MNIST's training digits: MAX_STROKE and HALF_EXTENT."""
    images = read_idx(root / "mnist" / TRAIN_IMAGES, "images")
    widths = np.array([stroke_width(crop_to_ink(to_ink(d.astype(np.float64), "digit"))) for d in images[:count]])
    percentiles = (1, 5, 25, 50, 75, 95, 99)
    values = ", ".join(f"{p}%: {v:.3f}" for p, v in zip(percentiles, np.percentile(widths, percentiles), strict=True))
    print(f"stroke width / longer side, MNIST's first {count:,} training digits: {values}")
    for factor in (3, 4):
        extents = []
        for digit in images[:scaled]:
            big = Image.fromarray(digit).resize((28 * factor, 28 * factor), Image.Resampling.BICUBIC)
            crop = crop_to_ink(to_ink(np.asarray(big, np.float64), "digit"))
            extent = max(half_extent(crop.max(axis=1)), half_extent(crop.max(axis=0)))
            extents.append(BOX * extent / max(crop.shape))
        print(f"half-ink extent in output pixels, the first {scaled:,} scaled up {factor} times: median "
              f"{np.median(extents):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", choices=("held-out", "tuning"), default="held-out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--strokes", action="store_true", help="print MNIST's stroke-width percentiles and stop")
    args = parser.parse_args()
    root = mirror()
    if args.strokes:
        strokes(root)
        return
    indices = scankit.HELD_OUT if args.slice == "held-out" else scankit.TUNING
    models = [scankit.train_model(root, seed, args.epochs) for seed in scankit.SEEDS]
    measured = scankit.measure(root, indices, models)
    print(f"{measured.count} scans of MNIST test digits {indices.start}-{indices.stop - 1}, the tutorial MLP "
          f"trained with seeds {scankit.SEEDS.start}-{scankit.SEEDS.stop - 1}:")
    print(f"  refused: {len(measured.refused)}")
    print(f"  warned: {len(measured.warned)} ({len(measured.warned) / measured.count:.1%})")
    print(f"  accuracy (mean over seeds): scans {measured.scan_accuracy:.4f}, the 28x28 originals "
          f"{measured.original_accuracy:.4f}")
    print(f"  originals minus scans right, per seed: {measured.gaps} images; "
          f"mean {measured.mean_gap_points:.2f} points")
    for line in measured.refused + measured.warned:
        print(f"  {line}")


if __name__ == "__main__":
    main()
