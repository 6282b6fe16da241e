"""Atomic writes and checked reads of the files stages exchange.

Every output is written to a temporary file in its own directory and renamed into place, so a
stage killed mid-write leaves the previous file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from mnist_pipeline.errors import PipelineError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to `final`; renamed onto it only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the final suffix: Keras insists on `.keras` and `.weights.h5`.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{final.name}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """`open()` for writing, with the rename-into-place guarantee of `atomic_path`."""
    with atomic_path(final) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary directory next to `final` that replaces it whole when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", suffix=f"-{final.name}", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def save_json(path: str | os.PathLike[str], data: Any) -> None:
    """Sorted keys and a trailing newline: equal data gives equal bytes, and git diffs stay small."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def load_npy(
    path: str | os.PathLike[str],
    dtype: np.dtype | type,
    ndim: int,
    trailing: tuple[int, ...] = (),
) -> np.ndarray:
    """Load an array without pickle and check dtype and shape, naming the file on any mismatch."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run the stage that writes it: dvc repro)") from None
    except (ValueError, OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy array ({e})") from None
    if array.dtype != np.dtype(dtype):
        raise PipelineError(f"{path}: expected dtype {np.dtype(dtype)}, found {array.dtype}")
    if array.ndim != ndim or tuple(array.shape[1:]) != trailing:
        want = "(N" + "".join(f", {d}" for d in trailing) + ")"
        raise PipelineError(f"{path}: expected shape {want}, found {array.shape}")
    return array


def load_pair(x_path: str | os.PathLike[str], y_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 784) float32 and their labels (N,) uint8, checked to have the same N."""
    x = load_npy(x_path, np.float32, 2, (784,))
    y = load_npy(y_path, np.uint8, 1)
    if len(x) != len(y):
        raise PipelineError(f"{y_path}: {len(y)} labels for {len(x)} images in {x_path}")
    if len(y) and int(y.max()) > 9:
        raise PipelineError(f"{y_path}: labels must be 0-9, found {int(y.max())}")
    return x, y
