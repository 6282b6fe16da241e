"""Build the network named by params, and save it so equal weights give equal bytes."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import keras

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import atomic_path

if TYPE_CHECKING:
    from mnist_pipeline.params import Params

N_CLASSES = 10
N_PIXELS = 784
# Zip's own epoch: every entry gets it, so a save today and a save tomorrow are the same bytes.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_SAVE_DATE = "1980-01-01@00:00:00"


def build_mlp(hidden: list[int], activation: str, dropout: float) -> keras.Model:
    """The tutorial's Sequential MLP; defaults give Dense 64 relu, Dense 64 relu, Dense 10 softmax."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=(N_PIXELS,))]
    for width in hidden:
        layers.append(keras.layers.Dense(width, activation=activation))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(N_CLASSES, activation="softmax"))
    return keras.Sequential(layers, name="mlp")


def build_model(params: Params) -> keras.Model:
    """The network described by the `model.*` params (weights drawn from the global seed)."""
    return build_mlp(params["model.hidden"], params["model.activation"], params["model.dropout"])


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    return keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})


def save_model_deterministic(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """`model.save`, then rewrite the zip with fixed timestamps and save date, atomically."""
    buffer = io.BytesIO()
    with atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as source, zipfile.ZipFile(buffer, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata["date_saved"] = FIXED_SAVE_DATE
                    data = json.dumps(metadata).encode()
                fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
                fixed.compress_type = info.compress_type
                fixed.external_attr = 0o644 << 16
                target.writestr(fixed, data)
        Path(tmp).write_bytes(buffer.getvalue())


def save_weights(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """The weights alone, loadable into the tutorial's own model definition."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load with `safe_mode=True`: a shared model file cannot run arbitrary code (Lambda layers)."""
    if not Path(path).is_file():
        raise PipelineError(f"{path}: file not found (run the train stage: dvc repro train)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for a bad file; all mean the same to a user.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PipelineError(f"{path}: not a loadable Keras model ({type(e).__name__}: {first_line[:200]})") from None
