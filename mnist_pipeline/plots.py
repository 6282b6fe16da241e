"""Pictures committed with the metrics, readable offline (no browser, no CDN).

Saved without a timestamp or software tag, so the same data gives the same PNG bytes. Figures are
matplotlib's `Figure` objects, rendered by Agg when saved: no pyplot, so no display backend to choose
and no global figure state to close.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mnist_pipeline.files import atomic_path

PNG_METADATA = {"Software": None}


def save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """The figure as a PNG with the same bytes for the same data, written whole or not at all."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA)


def image_grid(
    images: np.ndarray,
    captions: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
    image_shape: tuple[int, int, int],
    colors: Sequence[str] | None = None,
    columns: int = 5,
) -> None:
    """Flattened images of `image_shape` (rows, cols, channels) in a grid, each captioned ("pred 7 / true 7").

    Grayscale is drawn dark on light, as digits are written; colour as it is. Each image is stretched to
    its own darkest and lightest value, so the picture needs no preprocess params.
    """
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(2.0 * columns, 2.3 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            if image_shape[2] == 1:
                ax.imshow(images[i].reshape(image_shape[:2]), cmap="gray_r")
            else:
                image = images[i].reshape(image_shape)
                low, high = float(image.min()), float(image.max())
                ax.imshow((image - low) / (high - low) if high > low else np.zeros_like(image))
            ax.set_title(captions[i], fontsize=9, color=(colors[i] if colors else "black"))
    figure.suptitle(title)
    figure.tight_layout()
    save_png(figure, path)


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
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle("Training curves")
    figure.tight_layout()
    save_png(figure, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str]) -> None:
    """A heat map with the count in every cell; the diagonal is what the model got right."""
    size = max(6.0, 0.65 * len(class_names) + 2)
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    shown = np.log1p(confusion)
    ax.imshow(shown, cmap="Blues")
    threshold = shown.max() / 2 if shown.max() else 1
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if shown[row, col] > threshold else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({int(confusion.sum())} test images, accuracy "
                 f"{np.trace(confusion) / max(1, confusion.sum()):.4f})")
    figure.tight_layout()
    save_png(figure, path)
