"""Run the experiments of docs/experiments.md as `dvc exp run`s over seeds, and print their table.

Run it from the root of a clone, never in the main checkout (experiments rewrite params.yaml, dvc.lock
and metrics/):

    git clone . /tmp/exp && cd /tmp/exp
    DATASET_MIRROR=... python experiments/run_experiments.py run tutorial lr-0.005
    python experiments/run_experiments.py table            # markdown rows from experiments/results.jsonl

Each result line, appended to experiments/results.jsonl next to this script, records the exact command, the
test accuracy from metrics/evaluate.json, the training time (the sum of the epoch times the train stage
prints), the wall time of `dvc exp run` and the 1-minute load average at its start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
EPOCH_LINE = re.compile(r"epoch \d+/\d+ - ([0-9.]+)s - ")
CNN_FAST = "$(python -m mnist_pipeline.presets cnn-fast)"
# The rows run before the preset chose label smoothing instead of dropout, oneDNN's kernels and a whitened first
# convolution: as they were measured.
CNN_FAST_DROPOUT = f"{CNN_FAST} -S model.cnn.dropout=0.1 -S train.label_smoothing=0"
CNN_FAST_TRAINED = f"{CNN_FAST_DROPOUT} -S model.cnn.first_conv=trained"
CNN_FAST_EIGEN = f"{CNN_FAST_TRAINED} -S train.cpu_kernels=eigen"
# name: (arguments after `dvc exp run`, seeds)
ROWS: dict[str, tuple[str, tuple[int, ...]]] = {
    "tutorial": ("", (0, 1, 2)),
    "lr-0.005": ("-S train.learning_rate=0.005", (0, 1, 2)),
    "batch64-10ep": ("-S train.batch_size=64 -S train.epochs=10", (0, 1, 2)),
    "4-hidden": ("-S 'model.hidden=[64,64,64,64]'", (0, 1, 2)),
    "sigmoid": ("-S model.activation=sigmoid", (0, 1, 2)),
    "dropout-0.5": ("-S model.dropout=0.5", (0, 1, 2)),
    "mlp-512": ("$(python -m mnist_pipeline.presets mlp-512)", (0, 1, 2)),
    "cnn": ("$(python -m mnist_pipeline.presets cnn)", (0, 1, 2)),
    "cnn-fast": (CNN_FAST, (0, 1, 2)),
    "cnn-fast-5ep": (f"{CNN_FAST_EIGEN} -S train.batch_size=250 -S train.epochs=5", (0, 1, 2)),
    # Cheaper networks tried for the one-minute budget (docs/experiments.md, "cnn-fast"):
    "cnn-fast-4x4": (f"{CNN_FAST_EIGEN} -S model.cnn.kernel_size=4 -S model.cnn.strided_blocks=2 "
                     "-S model.cnn.batch_norm_first=false -S train.batch_size=250", (0, 1, 2)),
    "cnn-fast-24": (f"{CNN_FAST_EIGEN} -S 'model.cnn.filters=[16,24]' -S train.batch_size=250", (0, 1, 2)),
    "cnn-fast-pool1": (f"{CNN_FAST_EIGEN} -S 'model.cnn.pool_blocks=[1]' -S train.batch_size=250", (0, 1, 2)),
    "cnn-fast-whitened": (f"{CNN_FAST_DROPOUT} -S model.cnn.first_conv=whitened", (0, 1, 2)),
    "cnn-fast-trained": (CNN_FAST_TRAINED, (0, 1, 2)),  # the preset before its first convolution was whitened
    "cnn-fast-nodrop": (f"{CNN_FAST} -S train.label_smoothing=0", (0, 1, 2)),  # neither dropout nor smoothing
    # The preset as first scored on the test set, written as the overrides of the preset before it:
    "cnn-fast-nodrop-ls": (f"{CNN_FAST} -S model.cnn.dropout=0 -S train.label_smoothing=0.1", (0, 1, 2)),
    "fashion-tutorial": ("-S data.dataset=fashion_mnist", (0, 1, 2)),
    "fashion-mlp": ("$(python -m mnist_pipeline.presets fashion-mlp)", (0, 1, 2)),
    "fashion-cnn": ("$(python -m mnist_pipeline.presets fashion-cnn)", (0, 1, 2)),
}


def run(names: list[str], seeds: list[int] | None) -> None:
    for name in names:
        args, default_seeds = ROWS[name]
        for seed in seeds if seeds is not None else default_seeds:
            command = f"dvc exp run -n {name}-s{seed} {args} -S train.seed={seed}".replace("  ", " ")
            # `dvc exp run` leaves the experiment's params in the workspace and applies -S on top of them:
            # start every run from the committed params.yaml, so each row differs from the defaults only by its -S.
            subprocess.run(["git", "checkout", "HEAD", "--", "params.yaml"], check=True)
            load = os.getloadavg()[0]
            start = time.monotonic()
            result = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
            wall = time.monotonic() - start
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{command}: exited {result.returncode}")
            report = json.loads(Path("metrics/evaluate.json").read_text())
            # The train stage prints "epoch i/N - 12.3s - loss: ..." per epoch: their sum is the training time.
            epochs = EPOCH_LINE.findall(result.stdout + result.stderr)
            record = {"name": name, "seed": seed, "command": command, "accuracy": report["accuracy"],
                      "loss": report["loss"], "exp_run_s": round(wall, 1),
                      "train_s": round(sum(float(t) for t in epochs), 1),
                      "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)}
            print(json.dumps(record), flush=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(record) + "\n")


def table() -> None:
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    # A row run again (its preset retuned) replaces its earlier runs: the latest record per name and seed.
    latest = {(r["name"], r["seed"]): r for r in records}
    for name in ROWS:
        rows = [r for (n, _), r in latest.items() if n == name]
        if not rows:
            continue
        acc = [r["accuracy"] for r in rows]
        train = [r["train_s"] for r in rows]
        seeds = ",".join(str(r["seed"]) for r in rows)
        args = ROWS[name][0]
        command = " ".join(["dvc exp run", *([args] if args else []), "-S train.seed=S"])
        load = statistics.mean(r["load_start"] for r in rows)
        print(f"| {name} | `{command}` (S={seeds}) | {statistics.mean(acc):.4f} ({min(acc):.4f}-{max(acc):.4f}) "
              f"| {statistics.mean(train):.0f} s ({min(train):.0f}-{max(train):.0f}), load {load:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("names", nargs="+", choices=list(ROWS))
    run_parser.add_argument("--seeds", type=int, nargs="+")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.action == "run":
        run(args.names, args.seeds)
    else:
        table()


if __name__ == "__main__":
    main()

