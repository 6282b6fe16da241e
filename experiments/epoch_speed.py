"""Relative epoch speed of CNN configurations, measured side by side in one process, alternating.

    python experiments/epoch_speed.py [--images 12000] [--rounds 3] [--preset cnn] \
        "fast -S model.cnn.filters=[16,32] -S train.batch_size=256" "other -S ..."

Each configuration is a name and `-S key=value` overrides on top of params.yaml plus a preset
(`--preset`, `cnn` unless named: the reference, always measured first under the preset's name).
Every round trains each configuration for two epochs on the first `--images` training images with the
pipeline's own builders and compiled loop
(mnist_pipeline.train.training / mnist_pipeline.train.loop) and times the second epoch (the first one traces).
It prints each epoch's wall and CPU seconds, then per configuration the median seconds per 60,000
images and the ratio to the reference. On a shared machine wall times are inflated by the
other processes; the ratio of configurations timed in alternation is the steadier number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mnist_pipeline.core.config import Config, with_overrides
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.presets import load_preset
from mnist_pipeline.train import cpu_kernels
from mnist_pipeline.train.registry import load_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREPARED = Path(os.environ.get("PREPARED_DIR", "/tmp/full/data/prepared"))


def parse_config(text: str, base: Config) -> tuple[str, Config]:
    """`name -S key=value -S key=value` (values as YAML) on top of `base`."""
    name, *rest = text.split()
    overrides: dict[str, Any] = {}
    for token in rest:
        if token == "-S":
            continue
        key, sep, value = token.partition("=")
        if not sep:
            raise PipelineError(f"{text!r}: expected `name -S key=value ...`, got {token!r}")
        overrides[key] = yaml.safe_load(value)
    return name, with_overrides(base, overrides, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("configs", nargs="*", help="'name -S key=value ...'")
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="cnn", help="the reference configuration, under every other one")
    args = parser.parse_args()

    params = PROJECT_ROOT / "params.yaml"
    base = with_overrides(load_config(params), load_preset(args.preset, params=str(params)))
    reference = args.preset
    configs = [(reference, base)] + [parse_config(text, base) for text in args.configs]
    x = np.load(PREPARED / "x_train.npy")[: args.images]
    y = np.load(PREPARED / "y_train.npy")[: args.images]
    # One process, one TensorFlow: the reference's kernels are every configuration's.
    cpu_kernels.choose(base.train.cpu_kernels, base.train.cpu_threads)

    from mnist_pipeline.core.datasets import DATASETS
    from mnist_pipeline.prepared import idx_spec
    from mnist_pipeline.train.loop import fit_compiled
    from mnist_pipeline.train.models import make_optimizer
    from mnist_pipeline.train.registry import build_model
    from mnist_pipeline.train.tensorflow_runtime import keras
    from mnist_pipeline.train.training import make_deterministic, one_hot, set_cpu_threads

    spec = idx_spec(DATASETS["mnist"])
    set_cpu_threads(base.train.cpu_threads)

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[tuple[float, float]] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.epochs.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    scale = 60000 / len(y)
    print(f"# {os.cpu_count()} cores, {args.images} images, {args.rounds} rounds; "
          f"load {os.getloadavg()[0]:.2f} at start")
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in configs}
    for round_ in range(args.rounds):
        for name, cfg in configs:
            make_deterministic(cfg.train.seed)
            model = build_model(cfg.model, spec)
            steps = 2 * -(-len(y) // cfg.train.batch_size)
            model.compile(optimizer=make_optimizer(cfg.train.optimizer, cfg.train.learning_rate,
                                                   cfg.train.lr_schedule, steps),
                          loss="categorical_crossentropy", metrics=["accuracy"])
            timer = Timer()
            fit_compiled(model, x, one_hot(y, spec.n_classes), batch_size=cfg.train.batch_size, epochs=2,
                         seed=cfg.train.seed, callbacks=[timer])
            wall, cpu = timer.epochs[1]
            seen[name].append((wall * scale, cpu * scale))
            print(f"round {round_} {name:12s} {model.count_params():7d} params: {wall * scale:6.1f} s wall, "
                  f"{cpu * scale:6.1f} s CPU per 60k images (load {os.getloadavg()[0]:.2f})", flush=True)
    ref_wall = statistics.median(w for w, _ in seen[reference])
    ref_cpu = statistics.median(c for _, c in seen[reference])
    for name, times in seen.items():
        wall, cpu = statistics.median(w for w, _ in times), statistics.median(c for _, c in times)
        ratios = [w / rw for (w, _), (rw, _) in zip(times, seen[reference], strict=True)]
        print(f"{name:12s} median {wall:6.1f} s wall, {cpu:6.1f} s CPU per 60k; wall/{reference} {wall / ref_wall:.3f} "
              f"(per round {', '.join(f'{r:.3f}' for r in ratios)}), CPU/{reference} {cpu / ref_cpu:.3f}")
    print(f"# load {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
