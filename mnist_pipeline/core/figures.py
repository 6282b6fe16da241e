"""PNG pictures with the same bytes for the same data, so a committed plot changes only when its data does.

Saved without a timestamp or software tag. Figures are matplotlib's `Figure` objects, rendered by Agg when
saved: no pyplot, so no display backend to choose and no global figure state to close.
"""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from mnist_pipeline.core.files import atomic_path

PNG_METADATA = {"Software": None}


def save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """The figure as a PNG with the same bytes for the same data, written whole or not at all."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA)
