"""Time to accuracy: test accuracy after each epoch against the training seconds spent, per configuration.

    python benchmarks/time_to_accuracy.py [--configs mlp cnn cnn-fast]    (or `make bench-tta`)

In one run on one machine it trains, one after the other and each in a fresh subprocess (a fresh
TensorFlow, so each configuration's `train.cpu_threads` and `train.cpu_kernels` apply), the tutorial's
MLP (the default params), the `cnn` preset and the `cnn-fast` preset with the pipeline's own
`train_model` on all 60,000 training images, seed 0. Only here is the test set passed as the validation data, so the
compiled loop scores it after every epoch; that scoring is timed apart (by wrapping
`mnist_pipeline.train.loop.run_epoch` in the child process) and left out of the training seconds. Each
epoch's point is (seconds since `train_model` started, minus the scoring so far; test accuracy):
building, compiling and tracing count as training time, as they do in the train stage.
Prints the points, the load average at start and end and the machine, and writes the same text to
docs/time_to_accuracy.txt and the plot to docs/time_to_accuracy.png (`--text`, `--png`), so one
command refreshes both. Needs the local data mirror ($DATASET_MIRROR, or ../shared/datasets next to
the project). A benchmark, not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from train_speed import PROJECT_ROOT, child_env, child_result, find_mirror, load, machine, mirror_splits, run_measured

RESULT_TAG = "BENCH_RESULT "
CONFIGS = ("mlp", "cnn", "cnn-fast")  # "mlp" is params.yaml as it is; the others are presets on top of it
TARGET = 0.993
BUDGET_S = 60.0  # cnn-fast's training budget on two cores
DOCS = PROJECT_ROOT / "docs"
ERROR_TICKS = (0.005, 0.007, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9)


def child(name: str) -> None:
    """Train one configuration on MNIST, prepared as the preprocess stage does, and print its per-epoch points."""
    from mnist_pipeline.core.config import with_overrides
    from mnist_pipeline.presets import load_preset
    from mnist_pipeline.train import cpu_kernels
    from mnist_pipeline.train.registry import load_config

    params = PROJECT_ROOT / "params.yaml"
    cfg = load_config(params)
    if name != "mlp":
        cfg = with_overrides(cfg, load_preset(name, params=str(params)), f"presets/{name}.yaml")
    spec, splits = mirror_splits(cfg)
    cpu_kernels.choose(cfg.train.cpu_kernels, cfg.train.cpu_threads)  # before TensorFlow loads, as the train stage does

    from mnist_pipeline.train import loop
    from mnist_pipeline.train.training import train_model

    # The loop runs the training epoch and then the scoring of the validation data (here: the test set)
    # through run_epoch, labelled "epoch i/N" and "validation": time each call, so scoring can be left out.
    marks: list[tuple[str, float, float]] = []
    run_epoch = loop.run_epoch

    def timed_run_epoch(*args: Any) -> dict[str, float]:
        started = time.perf_counter()
        result = run_epoch(*args)
        marks.append((args[-1], started, time.perf_counter()))
        return result

    loop.run_epoch = timed_run_epoch
    x_test, y_test = splits["test"]
    started = time.perf_counter()
    model, history = train_model(cfg.model, cfg.train, spec, *splits["train"], x_test, y_test, None)
    total = time.perf_counter() - started
    scoring, points = 0.0, []
    for label, begin, end in marks:
        if label == "validation":
            scoring += end - begin
        else:
            points.append(end - started - scoring)
    record = {"name": name, "train_s": points, "test_accuracy": history["val_accuracy"],
              "scoring_s": round(scoring, 2), "total_s": round(total, 2),
              "images": len(splits["train"][1]), "epochs": cfg.train.epochs,
              "batch_size": cfg.train.batch_size, "cpu_threads": cfg.train.cpu_threads,
              "cpu_kernels": cfg.train.cpu_kernels, "params": model.count_params()}
    print(RESULT_TAG + json.dumps(record), flush=True)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Test error (1 - accuracy) against seconds on a log scale, labelled as accuracy, better upwards, so
    the MLP's 94% and the CNNs' last tenths of a point are both readable; one line per configuration, the
    99.3% target and the one-minute budget dashed; no timestamp in the PNG."""
    from matplotlib.figure import Figure

    from mnist_pipeline.core.figures import save_png

    figure = Figure(figsize=(8, 5))
    ax = figure.subplots()
    for result in results:
        ax.plot(result["train_s"], [1 - a for a in result["test_accuracy"]], marker="o", label=result["name"])
    ax.axhline(1 - TARGET, color="grey", linestyle="--", linewidth=1, label=f"{TARGET:.1%}")
    ax.axvline(BUDGET_S, color="grey", linestyle=":", linewidth=1, label=f"{BUDGET_S:.0f} s")
    ax.set_yscale("log")
    worst = max(max(1 - a for a in result["test_accuracy"]) for result in results)
    ticks = [e for e in ERROR_TICKS if e <= max(worst, 0.05) * 1.5]
    ax.set_ylim(max(ticks) * 1.2, 0.004)  # inverted: better is up
    ax.set_yticks(ticks, [f"{1 - e:.1%}".replace(".0%", "%") for e in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training seconds (cumulative; build, compile and tracing included)")
    ax.set_ylabel("test accuracy after the epoch (log scale of the error)")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"MNIST: test accuracy against training time, {os.cpu_count()} CPU cores")
    figure.tight_layout()
    save_png(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--png", type=Path, default=DOCS / "time_to_accuracy.png")
    parser.add_argument("--text", type=Path, default=DOCS / "time_to_accuracy.txt",
                        help="where the printed report is written too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    mirror = find_mirror()
    env = child_env(mirror)
    from importlib.metadata import version

    from mnist_pipeline.core.files import atomic_path

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# time_to_accuracy benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    say(f"# {machine()}; TensorFlow {version('tensorflow')}, Keras {version('keras')}")
    say(f"# {load()} at start")
    results = []
    for name in args.configs:
        with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
            run = run_measured([sys.executable, str(Path(__file__).resolve()), "--child", name], Path(tmp), env)
        result = child_result(run["stdout"])
        results.append(result)
        say(f"\n## {name}: {result['params']} weights, {result['epochs']} epochs, batch {result['batch_size']}, "
            f"cpu_threads {result['cpu_threads']}, cpu_kernels {result['cpu_kernels']}; process {run['wall_s']:.1f} s "
            f"(train_model {result['total_s']:.1f} s, of which scoring the test set {result['scoring_s']:.1f} s)")
        for epoch, (seconds, accuracy) in enumerate(zip(result["train_s"], result["test_accuracy"], strict=True), 1):
            say(f"epoch {epoch:2d}: {seconds:7.1f} s  test accuracy {accuracy:.4f}")
        reached = next((s for s, a in zip(result["train_s"], result["test_accuracy"], strict=True) if a >= TARGET),
                       None)
        say(f"first epoch at >= {TARGET:.1%}: " + (f"{reached:.1f} s" if reached is not None else "none"))
        say(f"{load()} after {name}")
    plot(results, args.png)
    with atomic_path(args.text) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\n# plot {shown(args.png)}, text {shown(args.text)}")


def shown(path: Path) -> Path:
    """`path` relative to the project when it is inside it."""
    resolved = path.resolve()
    return resolved.relative_to(PROJECT_ROOT) if resolved.is_relative_to(PROJECT_ROOT) else path


if __name__ == "__main__":
    main()
