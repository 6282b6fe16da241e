"""Pictures committed with the evaluation metrics, readable offline (no browser, no CDN): the confusions and
the captioned image grids, saved with `core.figures.save_png` so the same data gives the same bytes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from mnist_pipeline.core.figures import save_png


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


# The confusion plot: a matrix with a count in every cell up to MATRIX_CLASSES classes, at most
# MAX_INCHES wide (its cells shrink past 15 classes); beyond that the TOP_CONFUSIONS most frequent
# mistakes as bars, so the picture's pixels and drawing time stay bounded whatever the class count.
MATRIX_CLASSES = 30
MAX_INCHES = 12.0
TOP_CONFUSIONS = 30
NAME_CHARS = 24


def _short(name: str) -> str:
    """A class name as a tick label: long names cut, so a label cannot widen the picture without bound."""
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "\u2026"


def _accuracy_title(confusion: np.ndarray) -> str:
    return (f"({int(confusion.sum())} test images, accuracy "
            f"{np.trace(confusion) / max(1, confusion.sum()):.4f})")


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str]) -> None:
    """A heat map with the count in every cell (the diagonal is what the model got right); past
    MATRIX_CLASSES classes, the most frequent confusions instead."""
    if len(class_names) > MATRIX_CLASSES:
        plot_top_confusions(confusion, class_names, path)
        return
    natural = 0.65 * len(class_names) + 2
    size = min(MAX_INCHES, max(6.0, natural))
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    shown = np.log1p(confusion)
    ax.imshow(shown, cmap="Blues")
    threshold = shown.max() / 2 if shown.max() else 1
    fontsize = 8 if size >= natural else 8 * size / natural
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=fontsize,
                color="white" if shown[row, col] > threshold else "black")
    names = [_short(n) for n in class_names]
    smaller = {"fontsize": 10 * size / natural} if size < natural else {}  # cells shrunk: labels too
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", **smaller)
    ax.set_yticks(range(len(names)), names, **smaller)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix {_accuracy_title(confusion)}")
    figure.tight_layout()
    save_png(figure, path)


def plot_top_confusions(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str]) -> None:
    """The TOP_CONFUSIONS most frequent (true, predicted) mistakes as bars: a fixed-size picture for any
    class count (the full matrix is in confusion.csv)."""
    mistakes = confusion.astype(np.int64, copy=True)
    np.fill_diagonal(mistakes, 0)
    flat = mistakes.ravel()
    count = min(TOP_CONFUSIONS, int(np.count_nonzero(flat)))
    top = np.argpartition(-flat, count - 1)[:count] if count else np.zeros(0, dtype=np.int64)
    top = top[np.lexsort((top, -flat[top]))]  # most frequent first, ties in matrix order
    n = len(class_names)
    labels = [f"{_short(class_names[i // n])} \u2192 {_short(class_names[i % n])}" for i in top]
    figure = Figure(figsize=(10.0, 8.0))
    ax = figure.subplots()
    if count:
        ax.barh(range(count), flat[top], color="tab:blue")
        ax.set_yticks(range(count), labels, fontsize=8)
        ax.invert_yaxis()
        for row, value in enumerate(flat[top]):
            ax.text(value, row, f" {int(value)}", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("test images (true \u2192 predicted)")
    ax.set_title(f"The {count} most frequent confusions of {n} classes {_accuracy_title(confusion)}", fontsize=10)
    figure.tight_layout()
    save_png(figure, path)
