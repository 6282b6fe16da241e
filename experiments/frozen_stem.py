"""The frozen-stem runs of docs/experiments.md ("cnn-fast"): the cnn-fast network with its first block fixed.

With the first convolution left untrained (its seeded random weights, or patch-whitening filters) and
no batch norm after it, the gradient stops at the second convolution, whose input gradient is the
largest op of a step. Scored on the 10,000-image stratified validation split of `experiments/tune.py
--val 10000`, never on the test set; the loop and optimizer are the train stage's. The screen that led to
`model.cnn.first_conv: whitened`; docs/experiments.md has the results. Run from the project root, oneDNN's
kernels as the preset has:

    DATASET_MIRROR=/path/to/datasets python experiments/frozen_stem.py random --seed 0 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.datasets import DATASETS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import scale_images, stratified_split
from mnist_pipeline.train import cpu_kernels

STEMS = ("trained", "random", "whitening")
VAL_IMAGES = 10_000


def whitening_filters(images: np.ndarray, n_directions: int = 8, eps: float = 1e-3) -> np.ndarray:
    """3x3 stride-2 filters that whiten the images' patches: the leading eigenvectors of the patches'
    second moments, scaled by 1/sqrt(eigenvalue), each with both signs so the ReLU after keeps them all.

    The screen's own version, kept so its recorded runs reproduce: it pads with the background value, where
    the pipeline's `whitening.patch_whitening_filters` pads with zeros, as the convolution does."""
    maps = images[:10_000].reshape(-1, 28, 28)
    padded = np.pad(maps, ((0, 0), (0, 1), (0, 1)), constant_values=float(maps.min()))  # "same" at stride 2
    patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))[:, ::2, ::2].reshape(-1, 9)
    values, vectors = np.linalg.eigh(patches.T @ patches / len(patches))
    values, vectors = values[::-1][:n_directions], vectors[:, ::-1][:, :n_directions]
    filters = vectors / np.sqrt(values + eps)
    return np.concatenate([filters, -filters], axis=1).reshape(3, 3, 1, 2 * n_directions).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stem", choices=STEMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=int, default=32, help="filters of the second convolution")
    a = p.parse_args()
    cpu_kernels.choose("onednn", 2)
    folder = Path(os.environ.get("DATASET_MIRROR", "../shared/datasets")) / DATASETS["mnist"].mirror_dir
    x, y = read_idx(folder / TRAIN_IMAGES, "images"), read_idx(folder / TRAIN_LABELS, "labels")
    train, val = stratified_split(y, VAL_IMAGES, 0)
    x_train, y_train = scale_images(x[train], 255.0, 0.5), y[train]  # x/255 - 0.5, as params.yaml
    x_val, y_val = scale_images(x[val], 255.0, 0.5), y[val]

    from mnist_pipeline.train.loop import fit_compiled
    from mnist_pipeline.train.models import make_optimizer
    from mnist_pipeline.train.tensorflow_runtime import keras
    from mnist_pipeline.train.training import make_deterministic, one_hot

    layers = keras.layers

    make_deterministic(a.seed)
    frozen = a.stem != "trained"
    first = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, trainable=False) if frozen else None
    net: list[keras.layers.Layer] = [
        keras.Input((784,)),
        layers.Reshape((28, 28, 1)),
        layers.RandomTranslation(0.08, 0.08, fill_mode="nearest"),
    ]
    if a.stem == "trained":  # the preset's first block
        net += [layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False), layers.BatchNormalization()]
    else:
        net += [first]
    net += [layers.Activation("relu"),
            layers.Conv2D(a.width, 3, padding="same", use_bias=False), layers.MaxPooling2D(2),
            layers.BatchNormalization(), layers.Activation("relu"),
            layers.Flatten(), layers.Dropout(0.1), layers.Dense(128, activation="relu"), layers.Dropout(0.1),
            layers.Dense(10, activation="softmax")]
    model = keras.Sequential(net)
    if a.stem == "whitening":
        first.set_weights([whitening_filters(x_train)])
    steps = a.epochs * math.ceil(len(y_train) / 256)
    model.compile(optimizer=make_optimizer("adam", 0.01, "one_cycle", steps), loss="categorical_crossentropy")
    epoch_s: list[float] = []

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            epoch_s.append(round(time.perf_counter() - self.started, 1))

    history = fit_compiled(model, x_train, one_hot(y_train, 10), batch_size=256, epochs=a.epochs,
                           seed=np.random.default_rng(a.seed), validation_data=(x_val, one_hot(y_val, 10)),
                           callbacks=[EpochTimes()])
    print(json.dumps({"stem": a.stem, "seed": a.seed, "epochs": a.epochs, "width": a.width,
                      "val_acc": round(history["val_accuracy"][-1], 4), "epoch_s": epoch_s}))


if __name__ == "__main__":
    run_command(main)
