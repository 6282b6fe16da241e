"""The folder path against the IDX path on the same 70,000 MNIST images: test accuracy over seeds.

MNIST (train and test) is exported as a folder of PNGs (`mnist_pipeline.export_folder --split all`),
then each path runs the pipeline's own stages, `python -m stages.<name>` as dvc.yaml runs them, with the
default params (the tutorial's MLP) and train.seed 0, 1, 2:

- idx:    data.dataset mnist: the official 60,000 / 10,000 split;
- folder: data.dataset folder: a 10,000 / 70,000 test share (`preprocess.test_fraction`), drawn by the
          folder path's own hash of each file's path, so its test images are another 10,000.

Run it from the root of a clone, never in the main checkout (it writes params.yaml, data/, models/):

    git clone . /tmp/acc && cd /tmp/acc && ln -s "$OLDPWD/.venv" .venv
    DATASET_MIRROR=/abs/path/to/datasets .venv/bin/python experiments/folder_vs_idx.py

Each run's accuracy is printed as it finishes and appended to `folder_vs_idx.jsonl` in the working
folder; the table at the end gives each path's mean and spread, and the difference of the means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

IMAGES = "data/images"
RESULTS = Path("folder_vs_idx.jsonl")
PATHS: dict[str, dict[str, Any]] = {
    "idx": {"data.dataset": "mnist", "data.folder": "data/raw"},
    "folder": {"data.dataset": "folder", "data.folder": IMAGES, "preprocess.test_fraction": 10_000 / 70_000},
}


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


def run(seeds: list[int]) -> list[dict[str, Any]]:
    base = yaml.safe_load(Path("params.yaml").read_text())
    results = []
    try:
        if not Path(IMAGES).is_dir():
            set_params(base, PATHS["idx"])
            python("-m", "stages.download", "data/raw")
            python("-m", "mnist_pipeline.export_folder", "--dataset", "mnist", "--split", "all", "--out", IMAGES)
        for name, overrides in PATHS.items():
            prepared = f"data/prepared-{name}"
            set_params(base, overrides)
            python("-m", "stages.preprocess", overrides["data.folder"], prepared)
            for seed in seeds:
                set_params(base, {**overrides, "train.seed": seed})
                run_dir = Path(f"runs/{name}-s{seed}")
                shutil.rmtree(run_dir, ignore_errors=True)
                python("-m", "stages.train", prepared, str(run_dir / "models"), str(run_dir / "train"),
                       str(run_dir / "train.json"))
                python("-m", "stages.evaluate", str(run_dir / "models/model.keras"), prepared, str(run_dir))
                report = json.loads((run_dir / "evaluate.json").read_text())
                row = {"path": name, "seed": seed, "accuracy": report["accuracy"],
                       "test_images": report["test_images"]}
                print(json.dumps(row), flush=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                results.append(row)
    finally:
        Path("params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    return results


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| path | test images | accuracy per seed | mean | spread (max - min) |",
             "| --- | --- | --- | --- | --- |"]
    means = {}
    for name in PATHS:
        own = sorted((r for r in rows if r["path"] == name), key=lambda r: r["seed"])
        if not own:
            continue
        accuracies = [r["accuracy"] for r in own]
        means[name] = statistics.mean(accuracies)
        per_seed = ", ".join(f"{a:.4f} (seed {r['seed']})" for a, r in zip(accuracies, own, strict=True))
        lines.append(f"| {name} | {own[0]['test_images']:,} | {per_seed} | {means[name]:.4f} | "
                     f"{max(accuracies) - min(accuracies):.4f} |")
    if len(means) == 2:
        lines.append(f"\nfolder - idx: {100 * (means['folder'] - means['idx']):+.2f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table-only", action="store_true", help="print the table of folder_vs_idx.jsonl")
    args = parser.parse_args()
    if args.table_only:
        rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    else:
        rows = run(args.seeds)
    print(table(rows))


if __name__ == "__main__":
    main()
