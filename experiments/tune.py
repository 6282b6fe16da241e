"""The short tuning runs of docs/experiments.md: one configuration, scored on a held-out validation split.

Uses the pipeline's own model builders and optimizer (mnist_pipeline/models.py) with Keras `fit`, on the
training set minus a stratified validation split, so choices are made without looking at the test set
(test accuracy is printed too, for the record). Run from the project root:

    DATASET_MIRROR=/path/to/datasets python experiments/tune.py --tag A --lr 0.003 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from mnist_pipeline.data import scale_images, stratified_split
from mnist_pipeline.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.idx import read_idx


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default="")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion"])
    p.add_argument("--type", default="cnn", choices=["cnn", "mlp"])
    p.add_argument("--filters", default="32,64")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--dense", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.5, help="CNN dropout")
    p.add_argument("--bn", type=int, default=1)
    p.add_argument("--shift", type=float, default=0.0)
    p.add_argument("--rot", type=float, default=0.0)
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--mlp_dropout", type=float, default=0.0)
    p.add_argument("--act", default="relu")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--sched", default="one_cycle", choices=["constant", "one_cycle"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=5000, help="validation images held out of the training set")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training images (0 = all)")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    spec = DATASETS["mnist" if a.dataset == "mnist" else "fashion_mnist"]
    folder = Path(os.environ.get("DATASET_MIRROR", "../shared/datasets")) / spec.mirror_dir
    x, y = read_idx(folder / TRAIN_IMAGES, "images"), read_idx(folder / TRAIN_LABELS, "labels")
    if a.limit:
        x, y = x[: a.limit], y[: a.limit]
    x_test = scale_images(read_idx(folder / TEST_IMAGES, "images"), 255.0, 0.5)
    y_test = read_idx(folder / TEST_LABELS, "labels")
    train, val = stratified_split(y, a.val, 0)
    x_train, y_train = scale_images(x[train], 255.0, 0.5), y[train]
    x_val, y_val = scale_images(x[val], 255.0, 0.5), y[val]

    import keras  # after the data is read: TensorFlow's import is slow
    import tensorflow as tf

    from mnist_pipeline.models import build_cnn, build_mlp, make_optimizer

    keras.utils.set_random_seed(a.seed)
    tf.config.experimental.enable_op_determinism()
    if a.type == "cnn":
        filters = [int(f) for f in a.filters.split(",")]
        model = build_cnn(filters, a.kernel, a.dense, a.dropout, bool(a.bn), a.act, a.shift, a.rot)
    else:
        model = build_mlp([int(h) for h in a.hidden.split(",")], a.act, a.mlp_dropout)
    steps = a.epochs * math.ceil(len(y_train) / a.batch)
    model.compile(optimizer=make_optimizer(a.optimizer, a.lr, a.sched, steps),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.monotonic()
    history = model.fit(x_train, y_train, epochs=a.epochs, batch_size=a.batch,
                        validation_data=(x_val, y_val) if len(y_val) else None, verbose=2)
    fit_s = time.monotonic() - start
    test_acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1]
    result = dict(vars(a), val_acc=history.history.get("val_accuracy", [None])[-1], test_acc=test_acc,
                  train_acc=history.history["accuracy"][-1], fit_s=round(fit_s, 1), load=os.getloadavg()[0],
                  params=model.count_params(), n_train=len(y_train))
    print("RESULT", json.dumps(result))
    with open(os.environ.get("TUNE_RESULTS", "tune-results.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
