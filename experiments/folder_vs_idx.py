"""The folder path against the IDX path on the same 70,000 MNIST images: test accuracy over seeds.

MNIST (train and test) is exported as folders of PNGs (`mnist_pipeline.sources.export_folder --split all`, once
with class folders at the top and once `--layout splits`), then each path runs the pipeline's own stages,
`python -m stages.<name>` as dvc.yaml runs them, with the default params (the tutorial's MLP) and
train.seed 0, 1, 2:

- idx:     data.dataset mnist: the official 60,000 / 10,000 split;
- folders: data.dataset folder, preprocess.split folders: the exported train/ and test/ folders, so the
           same 60,000 training and 10,000 test images as the IDX path, read from PNG files (in the folder
           path's own order);
- folder:  data.dataset folder, preprocess.split hash: a 10,000 / 70,000 test share
           (`preprocess.test_fraction`), drawn by the folder path's own hash of each file's path, so its
           test images are another 10,000.

Run it from the root of a clone, never in the main checkout (it writes params.yaml, data/, models/):

    git clone . /tmp/acc && cd /tmp/acc && ln -s "$OLDPWD/.venv" .venv
    DATASET_MIRROR=/abs/path/to/datasets .venv/bin/python experiments/folder_vs_idx.py

`--preset NAME` runs a shipped preset (`python -m mnist_pipeline.presets`) on both paths instead of the
tutorial's MLP: a model whose test accuracy varies less from seed to seed tells a difference between the
paths apart from the draw with fewer seeds.

Each run's accuracy is printed as it finishes and appended to `folder_vs_idx.jsonl` in the working
folder (runs already there are not repeated; `--split-seeds 0 1 2` adds the folder path on two more
hashed splits, to see how much the choice of held-out images moves the mean); the table at the end
gives each path's mean and spread, and the difference of the means.
Before it, one line per folder path says whether every row it prepared equals its source IDX image scaled
the IDX path's way (the exported names carry the IDX split and index): then the two paths differ only in
which images they hold out for testing.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.prepared import load_spec, load_split
from mnist_pipeline.presets import load_preset
from mnist_pipeline.sources.splits import load_raw, scale_images

TUTORIAL = "tutorial"  # the model of the default params, when no preset is named

IMAGES = "data/images"
SPLIT_IMAGES = "data/images-split"
RESULTS = Path("folder_vs_idx.jsonl")
PATHS: dict[str, dict[str, Any]] = {
    "idx": {"data.dataset": "mnist", "data.folder": "data/raw"},
    "folders": {"data.dataset": "folder", "data.folder": SPLIT_IMAGES, "preprocess.split": "folders"},
    "folder": {"data.dataset": "folder", "data.folder": IMAGES, "preprocess.test_fraction": 10_000 / 70_000},
}
SPLIT_LABELS = {"idx": "official 60,000 / 10,000", "folders": "the exported train/ and test/ folders"}


def python(*args: str) -> None:
    started = time.monotonic()
    subprocess.run([sys.executable, *args], check=True)
    print(f"  {' '.join(args)}: {time.monotonic() - started:.0f} s", flush=True)


def set_params(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    tree = json.loads(json.dumps(base))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    Path("params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def arms(split_seeds: list[int]) -> list[tuple[str, int, dict[str, Any]]]:
    """(path, split seed, params) of each set of runs: the IDX path's one split, the folder path's hashed ones."""
    found = [("idx", 0, PATHS["idx"]), ("folders", 0, PATHS["folders"])]
    found += [("folder", p, {**PATHS["folder"], "preprocess.seed": p}) for p in split_seeds]
    return found


def done(model: str) -> list[dict[str, Any]]:
    """The runs of `model` (a preset's name, or TUTORIAL) in the results file."""
    if not RESULTS.exists():
        return []
    rows = [{"split_seed": 0, "model": TUTORIAL, **json.loads(line)} for line in RESULTS.read_text().splitlines()
            if line.strip()]
    return [row for row in rows if row["model"] == model]


def run(seeds: list[int], split_seeds: list[int], model: str) -> list[dict[str, Any]]:
    """Every (path, split seed, train seed) of `model` not yet in the results file, appended as it finishes."""
    base = yaml.safe_load(Path("params.yaml").read_text())
    preset = {} if model == TUTORIAL else load_preset(model)
    finished = {(r["path"], r["split_seed"], r["seed"]) for r in done(model)}
    try:
        set_params(base, PATHS["idx"])
        if not Path("data/raw/mnist").is_dir():
            python("-m", "stages.download", "data/raw")
        for folder, layout in ((IMAGES, "classes"), (SPLIT_IMAGES, "splits")):
            if not Path(folder).is_dir():
                python("-m", "mnist_pipeline.sources.export_folder", "--dataset", "mnist", "--split", "all",
                       "--layout", layout, "--out", folder)
        for name, split_seed, overrides in arms(split_seeds):
            todo = [seed for seed in seeds if (name, split_seed, seed) not in finished]
            if not todo:
                continue
            prepared = f"data/prepared-{name}" + (f"-p{split_seed}" if split_seed else "")
            set_params(base, overrides)
            if not Path(prepared).is_dir():
                python("-m", "stages.preprocess", overrides["data.folder"], prepared)
            for seed in todo:
                set_params(base, {**preset, **overrides, "train.seed": seed})
                run_dir = Path(f"runs/{model}-{Path(prepared).name.removeprefix('prepared-')}-s{seed}")
                shutil.rmtree(run_dir, ignore_errors=True)
                python("-m", "stages.train", prepared, str(run_dir / "models"), str(run_dir / "train"),
                       str(run_dir / "train.json"))
                python("-m", "stages.evaluate", str(run_dir / "models/model.keras"), prepared, str(run_dir))
                report = json.loads((run_dir / "evaluate.json").read_text())
                row = {"model": model, "path": name, "split_seed": split_seed, "seed": seed,
                       "accuracy": report["accuracy"], "test_images": report["test_images"]}
                print(json.dumps(row), flush=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        Path("params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    return done(model)


def same_pixels(prepared: str, raw: str = "data/raw") -> str:
    """Whether every row the folder path prepared is its source IDX image, scaled as the IDX path scales it.

    The manifest names each file's split and row; the exported file's name names its IDX split and index.
    Equal rows mean the two paths differ only in which images are held out for testing.
    """
    cfg = yaml.safe_load(Path("params.yaml").read_text())["preprocess"]
    idx = load_raw(raw, DATASETS["mnist"])
    spec = load_spec(prepared)
    with open(f"{prepared}/manifest.csv", encoding="utf-8", newline="") as f:
        manifest = list(csv.DictReader(f))
    checked = mismatched = 0
    for split in ("train", "val", "test"):
        rows = [r for r in manifest if r["split"] == split]
        if not rows:
            continue
        x, y = load_split(prepared, split, spec)
        for row in rows:
            source, index = Path(row["path"]).stem.split("-")
            expected = scale_images(idx[f"{source}_images"][int(index)][None], cfg["scale"], cfg["offset"])[0]
            i = int(row["index"])
            label_ok = spec.class_names[y[i]] == str(idx[f"{source}_labels"][int(index)])
            mismatched += not (label_ok and np.array_equal(x[i], expected))
            checked += 1
    return f"{prepared}: {checked:,} prepared rows checked against the IDX pixels: {mismatched} differ"


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (path, split seed), one per path over all its runs, then the difference of the means."""
    lines = ["| path | split | test images | accuracy per train.seed 0, 1, ... | mean | spread (max - min) |",
             "| --- | --- | --- | --- | --- | --- |"]

    def line(name: str, split: str, own: list[dict[str, Any]]) -> float:
        accuracies = [r["accuracy"] for r in own]
        images = sorted({r["test_images"] for r in own})
        mean = statistics.mean(accuracies)
        lines.append(f"| {name} | {split} | {', '.join(f'{n:,}' for n in images)} | "
                     f"{', '.join(f'{a:.4f}' for a in accuracies)} | {mean:.4f} | "
                     f"{max(accuracies) - min(accuracies):.4f} |")
        return mean

    means = {}
    for name in PATHS:
        own = sorted((r for r in rows if r["path"] == name), key=lambda r: (r["split_seed"], r["seed"]))
        splits = sorted({r["split_seed"] for r in own})
        for split_seed in splits:
            label = SPLIT_LABELS.get(name, f"hashed, preprocess.seed {split_seed}")
            means[(name, split_seed)] = line(name, label, [r for r in own if r["split_seed"] == split_seed])
        if len(splits) > 1:
            means[(name, None)] = line(name, "all of the above", own)
    if ("idx", 0) in means and ("folders", 0) in means:
        lines.append(f"\nfolders - idx: {100 * (means['folders', 0] - means['idx', 0]):+.2f} points")
    if ("idx", 0) in means and ("folder", 0) in means:
        lines.append(f"folder (preprocess.seed 0) - idx: {100 * (means['folder', 0] - means['idx', 0]):+.2f} points")
    if ("idx", 0) in means and ("folder", None) in means:
        lines.append(f"folder (every split) - idx: {100 * (means['folder', None] - means['idx', 0]):+.2f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    parser.add_argument("--split-seeds", type=int, nargs="*", default=[0],
                        help="preprocess.seed values of the folder path: each a different hashed test split "
                        "(none: only the idx and folders paths)")
    parser.add_argument("--preset", default=TUTORIAL, help="a shipped preset for both paths (default: the "
                        "tutorial's MLP of params.yaml)")
    parser.add_argument("--table-only", action="store_true", help="print the table of folder_vs_idx.jsonl")
    args = parser.parse_args()
    rows = done(args.preset) if args.table_only else run(args.seeds, args.split_seeds, args.preset)
    for prepared in ("data/prepared-folders", "data/prepared-folder"):
        if Path(prepared).is_dir():
            print(same_pixels(prepared))
    print(table(rows))


if __name__ == "__main__":
    main()
