"""The training curves picture: loss and accuracy per epoch, committed beside metrics/train.json."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from mnist_pipeline.core.figures import save_png

# Up to this many epochs each gets a tick; more get matplotlib's own few, not one label per epoch.
MAX_EPOCH_TICKS = 30


def plot_training_curves(history: dict[str, list[float]], path: str | os.PathLike[str]) -> None:
    """Loss and accuracy per epoch, train and (when held out) validation."""
    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        epochs = np.arange(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if len(epochs) <= MAX_EPOCH_TICKS:
            ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle("Training curves")
    figure.tight_layout()
    save_png(figure, path)
