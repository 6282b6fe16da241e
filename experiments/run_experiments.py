"""Run the experiments of docs/experiments.md as `dvc exp run`s over seeds, and print their table.

Run it from the root of a clone, never in the main checkout (experiments rewrite params.yaml, dvc.lock
and metrics/):

    git clone . /tmp/exp && cd /tmp/exp
    DATASET_MIRROR=... python experiments/run_experiments.py run tutorial lr-0.005
    python experiments/run_experiments.py table            # markdown rows from experiments/results.jsonl

Each result line, appended to experiments/results.jsonl next to this script, records the exact command, the
test accuracy from metrics/evaluate.json, the training time (the sum of the epoch times the train stage
prints), the wall time of `dvc exp run` and the 1-minute load average at its start and end.

The table gives each row's test accuracy as mean +- standard deviation over its seeds (min-max), and says
whether its mean differs from its baseline's (`baseline_of`: the tutorial's) beyond seed noise: a
two-sided Welch t-test at 5% over the seeds' accuracies. A seed changes the weights and the order of the
batches, so this is the noise a rerun brings; the test images' own noise is `tools/compare.py`'s.
"""

from __future__ import annotations

import argparse
import json
import math
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
# Two-sided 95% quantiles of Student's t for 1-30 degrees of freedom (more: the value for 30, a little wide).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def baseline_of(name: str) -> str:
    """The row a row is judged against: the tutorial's model and params on the same data set; for the
    variants of the fast CNN, the fast CNN."""
    if name.startswith("fashion"):
        return "fashion-tutorial"
    return "cnn-fast" if name.startswith("cnn-fast-") else "tutorial"


def beyond_seed_noise(a: list[float], b: list[float]) -> bool:
    """Welch's t-test at 5%, two-sided: do the means of two rows' seeds differ by more than seeds do?"""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"beyond_seed_noise: {len(a)} and {len(b)} seeds: expected at least 2 on each side")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    difference = abs(statistics.mean(a) - statistics.mean(b))
    if va + vb == 0:
        return difference > 0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    critical = T_975[min(max(int(df), 1), len(T_975)) - 1]  # df rounded down: the wider quantile
    return difference / math.sqrt(va + vb) > critical


def noise_note(name: str, accuracies: dict[str, list[float]]) -> str:
    base = baseline_of(name)
    if name == base:
        return "baseline"
    if base not in accuracies or len(accuracies[base]) < 2 or len(accuracies[name]) < 2:
        return f"no {base} seeds to compare with"
    delta = (statistics.mean(accuracies[name]) - statistics.mean(accuracies[base])) * 100
    verdict = "beyond seed noise" if beyond_seed_noise(accuracies[name], accuracies[base]) else "within seed noise"
    return f"{delta:+.2f} points against {base}: {verdict}"


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
    accuracies = {name: [r["accuracy"] for (n, _), r in latest.items() if n == name] for name in ROWS}
    for name in ROWS:
        rows = [r for (n, _), r in latest.items() if n == name]
        if not rows:
            continue
        acc = accuracies[name]
        spread = f" +- {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        train = [r["train_s"] for r in rows]
        seeds = ",".join(str(r["seed"]) for r in rows)
        args = ROWS[name][0]
        command = " ".join(["dvc exp run", *([args] if args else []), "-S train.seed=S"])
        load = statistics.mean(r["load_start"] for r in rows)
        accuracy = f"{statistics.mean(acc):.4f}{spread} ({min(acc):.4f}-{max(acc):.4f})"
        print(f"| {name} | `{command}` (S={seeds}) | {accuracy} | {noise_note(name, accuracies)} "
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

