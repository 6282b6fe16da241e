"""The short tuning runs of docs/experiments.md: one configuration, scored on a held-out validation split.

The configuration is the project's params.yaml with DVC-style `-S key=value` overrides, validated by the
same typed config as every stage. The model and optimizer come from the pipeline's own builders
(mnist_pipeline/train/models.py), trained with Keras `fit` (or, with `--loop compiled`, the train stage's own
`train_model`) on the training set minus a stratified validation split, so choices are made without looking at
the test set (test accuracy is printed too, for the record).
Run from the project root:

    DATASET_MIRROR=/path/to/datasets python experiments/tune.py --tag A -S model.type=cnn \
        -S model.cnn.dropout=0.5 -S model.cnn.augment_shift=0 -S train.learning_rate=0.003 \
        -S train.lr_schedule=one_cycle -S train.batch_size=128 -S train.epochs=6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.config import flatten, with_overrides
from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import idx_spec
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import scale_images, stratified_split
from mnist_pipeline.train import cpu_kernels
from mnist_pipeline.train.registry import load_config


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` as `dvc exp run -S` reads it: the value is YAML (`0.003`, `[32,64]`, `true`)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise PipelineError(f"-S {text}: expected key=value, e.g. -S train.learning_rate=0.003")
    return key, yaml.safe_load(value)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--tag", default="", help="a name for the results line")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a params.yaml override, as for `dvc exp run -S` (repeatable)")
    p.add_argument("--val", type=int, default=5000, help="validation images held out of the training set")
    p.add_argument("--loop", choices=("fit", "compiled"), default="fit",
                   help="Keras fit, or the train stage's own train_model (its compiled loop, timed as the stage)")
    return p.parse_args()


def tune(a: argparse.Namespace) -> None:
    cfg = with_overrides(load_config(), dict(parse_override(o) for o in a.overrides), "-S overrides")
    dataset = DATASETS[cfg.data.dataset]
    spec = idx_spec(dataset)
    pre = cfg.preprocess
    folder = Path(os.environ.get("DATASET_MIRROR", "../shared/datasets")) / dataset.mirror_dir
    x, y = read_idx(folder / TRAIN_IMAGES, "images"), read_idx(folder / TRAIN_LABELS, "labels")
    if pre.train_limit:
        x, y = x[: pre.train_limit], y[: pre.train_limit]
    x_test = scale_images(read_idx(folder / TEST_IMAGES, "images"), pre.scale, pre.offset)
    y_test = read_idx(folder / TEST_LABELS, "labels")
    train, val = stratified_split(y, a.val, pre.seed)
    x_train, y_train = scale_images(x[train], pre.scale, pre.offset), y[train]
    x_val, y_val = scale_images(x[val], pre.scale, pre.offset), y[val]
    cpu_kernels.choose(cfg.train.cpu_kernels, cfg.train.cpu_threads)  # before TensorFlow loads, as the train stage does

    from mnist_pipeline.train.models import make_optimizer
    from mnist_pipeline.train.registry import build_model
    from mnist_pipeline.train.tensorflow_runtime import (
        keras,  # after the data is read: TensorFlow's import is slow
        tf,
    )
    from mnist_pipeline.train.training import whitened_first_conv

    start = time.monotonic()
    if a.loop == "compiled":
        from mnist_pipeline.train.training import train_model

        model, history = train_model(cfg.model, cfg.train, spec, x_train, y_train, x_val, y_val, None)
    else:
        if cfg.train.label_smoothing:
            raise PipelineError("train.label_smoothing: the Keras-fit path trains on integer labels, which "
                                "Keras' sparse loss does not smooth; use --loop compiled")
        keras.utils.set_random_seed(cfg.train.seed)
        tf.config.experimental.enable_op_determinism()
        model = build_model(cfg.model, spec)
        fixed_filters = whitened_first_conv(cfg.model, spec, x_train)  # as train_model sets them
        if fixed_filters is not None:
            next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)).set_weights([fixed_filters])
        steps = cfg.train.epochs * math.ceil(len(y_train) / cfg.train.batch_size)
        model.compile(optimizer=make_optimizer(cfg.train.optimizer, cfg.train.learning_rate, cfg.train.lr_schedule,
                                               steps),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x_train, y_train, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                            validation_data=(x_val, y_val) if len(y_val) else None, verbose=2).history
    fit_s = time.monotonic() - start
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    test_acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1]
    result = dict(tag=a.tag, overrides=a.overrides, val=a.val, config=flatten(cfg.model_dump(exclude={"download"})),
                  val_acc=history.get("val_accuracy", [None])[-1], test_acc=test_acc,
                  val_acc_per_epoch=[round(v, 4) for v in history.get("val_accuracy", [])], loop=a.loop,
                  train_acc=history["accuracy"][-1], fit_s=round(fit_s, 1), load=os.getloadavg()[0],
                  params=model.count_params(), n_train=len(y_train))
    print("RESULT", json.dumps(result))
    with open(os.environ.get("TUNE_RESULTS", "tune-results.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    args = parse_args()
    run_command(lambda: tune(args))
