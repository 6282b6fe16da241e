"""What the train stage's checkpoints cost: the time each epoch waits for one, and the run's key.

`python benchmarks/checkpoint_cost.py`: for the default MLP and the `cnn` preset's model, medians
over 30 checkpoints of the time the training thread spends (every variable read out, the write handed
to the helper thread) and of the helper thread's write (the .npz built, written, fsynced, renamed into
place; it overlaps the next epoch), and the file's size; then the time to hash full-MNIST-sized
training arrays (once per run, on a helper thread while TensorFlow loads). Not a test.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_pipeline.core.config import with_overrides
from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.prepared import idx_spec
from mnist_pipeline.presets import load_preset
from mnist_pipeline.train.checkpoint import Checkpoints, capture, digest_arrays
from mnist_pipeline.train.registry import load_config

REPEATS = 30


def checkpoint_ms(overrides: dict, folder: Path) -> tuple[float, float, int]:
    from mnist_pipeline.train.models import make_optimizer
    from mnist_pipeline.train.registry import build_model
    from mnist_pipeline.train.training import make_deterministic

    cfg = with_overrides(load_config(), overrides)
    make_deterministic(0)
    model = build_model(cfg.model, idx_spec(DATASETS["mnist"]))
    optimizer = make_optimizer(cfg.train.optimizer, cfg.train.learning_rate)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    history = {"loss": [0.1] * 5, "accuracy": [0.9] * 5}
    checkpoints = Checkpoints(folder / f"train-{len(overrides)}.npz")
    on_epoch, writes = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        checkpoints.save(capture(model, rng, 5, history))
        handed = time.perf_counter()
        checkpoints.wait()
        on_epoch.append(handed - started)
        writes.append(time.perf_counter() - handed)
    size = checkpoints.path.stat().st_size
    checkpoints.remove()
    return statistics.median(on_epoch) * 1000, statistics.median(writes) * 1000, size


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in (("default MLP", {}), ("cnn preset", load_preset("cnn"))):
            on_epoch, write, size = checkpoint_ms(overrides, Path(tmp))
            print(f"{name}: {on_epoch:.1f} ms of each epoch, then {write:.1f} ms of writing on the helper "
                  f"thread (medians of {REPEATS}), {size / 1e6:.2f} MB")
    arrays = {"x_train": np.zeros((60_000, 784), np.float32), "y_train": np.zeros(60_000, np.uint8)}
    started = time.perf_counter()
    digest_arrays(arrays)
    print(f"run key: hashing full-MNIST training arrays {time.perf_counter() - started:.2f} s (once per run)")


if __name__ == "__main__":
    main()
