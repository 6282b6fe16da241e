"""Optimizer and loss from the `train` params; save a model so equal weights give equal bytes, and load one.

The networks themselves are built by the model types (registry.py, model_types/)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, atomic_path, open_regular
from mnist_pipeline.train.tensorflow_runtime import keras

if TYPE_CHECKING:
    from mnist_pipeline.prepared import PreparedSpec

# Zip's own epoch: every entry gets it, so a save today and a save tomorrow are the same bytes.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_SAVE_DATE = "1980-01-01@00:00:00"


def make_learning_rate(
    learning_rate: float, schedule: str, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, or a one-cycle shape: linear warm-up over 30% of the steps to `learning_rate`
    (from a 25th of it), then cosine decay to zero. Keras' own CosineDecay draws exactly that curve."""
    if schedule == "constant":
        return learning_rate
    warmup = max(1, int(0.3 * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 25,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.0,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(
    name: str, learning_rate: float, schedule: str = "constant", total_steps: int = 0
) -> keras.optimizers.Optimizer:
    rate = make_learning_rate(learning_rate, schedule, total_steps)
    return type(keras.optimizers.get(name))(learning_rate=rate)


def make_loss(label_smoothing: float) -> str | keras.losses.Loss:
    """Cross-entropy on one-hot targets, smoothed by Keras' own loss when asked. Unsmoothed it stays the
    tutorial's loss by name, which is what model.keras records: the default model keeps its bytes."""
    if label_smoothing == 0:
        return "categorical_crossentropy"
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def _renumber_shared_ids(config: Any, ids: dict[int, int]) -> Any:
    """Keras writes `id()` of shared objects (a memory address) as `shared_object_id`, so the
    same model saved by two processes differs; number them 1, 2, ... in order of appearance instead.
    Loading only matches equal ids, so sharing is kept."""
    if isinstance(config, dict):
        return {
            k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else _renumber_shared_ids(v, ids)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [_renumber_shared_ids(v, ids) for v in config]
    return config


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
                elif info.filename == "config.json":
                    data = json.dumps(_renumber_shared_ids(json.loads(data), {})).encode()
                fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_TIME)
                fixed.compress_type = info.compress_type
                fixed.external_attr = 0o644 << 16
                target.writestr(fixed, data)
        Path(tmp).write_bytes(buffer.getvalue())


def save_weights(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """The weights alone, loadable into the tutorial's own model definition."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


def load_model(path: str | os.PathLike[str], spec: PreparedSpec) -> keras.Model:
    """Load with `safe_mode=True`: a shared model file cannot run arbitrary code (Lambda layers).

    The model must map the data set's flattened images to its class probabilities.
    """
    try:
        open_regular(path).close()  # /dev/zero would be read forever, a FIFO block
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run the train stage: dvc repro train)") from None
    except NotRegularFile as e:
        raise PipelineError(f"{path}: not a regular file ({e.kind}): expected a .keras model file") from None
    except OSError as e:  # a symbolic link loop, a path through a file, no permission: not "not found"
        raise PipelineError(f"{path}: cannot open: {(e.strerror or str(e)).lower()}") from None
    if not zipfile.is_zipfile(path):
        # Keras would say "File not found" for a truncated file; the real fault is its content.
        size = Path(path).stat().st_size
        raise PipelineError(f"{path}: not a Keras model: expected a .keras zip archive, found {size} bytes "
                            "that are not one (truncated, or another format)")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for a bad file; all mean the same to a user.
        text = " ".join(str(e).split())
        if "arbitrary code execution" in text:
            raise PipelineError(f"{path}: refused: the model holds Python code (a Lambda layer) and models load "
                                "with safe_mode=True; rebuild it from layers without Python functions") from None
        raise PipelineError(f"{path}: not a loadable Keras model ({type(e).__name__}: {text[:200]})") from None
    try:
        shapes = (tuple(model.input_shape[1:]), tuple(model.output_shape[1:]))
    except (AttributeError, ValueError, TypeError):  # a model without one defined input or output
        shapes = ("unknown",), ("unknown",)
    if shapes != ((spec.n_pixels,), (spec.n_classes,)):
        raise PipelineError(f"{path}: expected a model from ({spec.n_pixels},) images to ({spec.n_classes},) class "
                            f"probabilities, found {shapes[0]} to {shapes[1]}")
    return model
