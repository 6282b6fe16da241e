"""Checkpoints of the train stage: a killed run continues from its last finished epoch, to the same bytes.

After every epoch the train stage writes one file holding all the state the next epoch depends on:
every variable of the model (weights, batch-norm statistics, the `SeedGenerator` states that drive
dropout and augmentation) and of the optimizer (slots, step count), Keras' global `SeedGenerator`
when something used it, the numpy `Generator` state that draws the next epoch's batch order, and
the per-epoch logs (from which dvclive's files are written again). Restoring all of it and
continuing gives the same arithmetic as never stopping, so the outputs are byte-identical.

The file is `CHECKPOINT_DIR/train-<key>.npz`, outside every DVC output (DVC would delete an output
before rerunning the stage) and ignored by git and DVC. Its key is a hash of what the stage
declares: the code it runs (every project module loaded), the arrays it trains on and the values of
its params sections; a run of other code, data or params never sees another run's checkpoint. A
finished run removes its checkpoint. A file that cannot be read or does not fit the model is
reported in one line and ignored.

This module needs no TensorFlow: it hashes arrays before TensorFlow is imported, and handles a model's
variables through what every Keras variable has (`path`, `shape`, `dtype`, `numpy()`, `assign()`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline.core import progress
from mnist_pipeline.core.files import atomic_path, sweep_leftovers
from mnist_pipeline.prepared import check_rows, read_rows

CHECKPOINT_DIR = Path(".cache") / "train-checkpoints"
FORMAT = 1
# The modules whose source is part of the key: this project's (the stage's own code deps).
PROJECT_PACKAGES = ("mnist_pipeline", "stages")
# Keras' global SeedGenerator (random ops without a seed) is no layer's variable: it gets its own name.
GLOBAL_SEED = "keras.random global SeedGenerator"
# A checkpoint's temporary file, left by a run killed while writing it (any run's: any key).
_LEFTOVER = re.compile(r"\.tmp-[0-9a-f]{12}-(train-[0-9a-f]+\.npz)")

History = dict[str, list[float]]


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be used; the message says why, in a few words."""


# ---------------------------------------------------------------------------------------------
# The key: what the stage declares (code, data, params), hashed.


def digest_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over each array's name, dtype, shape and bytes: the content of the .npy files loaded.

    A memory-mapped split is read a chunk at a time (`read_rows`): the same digest, in bounded memory."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        if isinstance(array, np.memmap) and array.ndim:
            step = check_rows(array)
            for start in range(0, len(array), step):
                digest.update(read_rows(array, start, start + step).data)
        else:
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def digest_arrays_in_background(arrays: Mapping[str, np.ndarray]) -> Future[str]:
    """`digest_arrays` on a helper thread: hashlib releases the GIL, so hashing the full training set
    (about 0.3-0.5 s on these cores) overlaps the import of TensorFlow instead of adding to it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-key")
    future = pool.submit(digest_arrays, dict(arrays))
    pool.shutdown(wait=False)
    return future


def code_digests() -> list[tuple[str, str]]:
    """(module, sha256 of its source) for every project module this process has loaded, sorted.

    These are exactly the stage's `.py` deps in dvc.yaml, which tools/stage_deps.py derives from the
    same imports. Call it once the stage has imported everything it runs."""
    found: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        real_name = getattr(spec, "name", None) or name  # `python -m stages.train` runs as __main__
        file = getattr(module, "__file__", None)
        if file and real_name.split(".")[0] in PROJECT_PACKAGES:
            found[real_name] = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    return sorted(found.items())


def run_key(data_digest: str, sections: Mapping[str, Any]) -> str:
    """The hash naming a run's checkpoint: code, data and the params sections (pydantic models) it reads."""
    text = json.dumps(
        {
            "format": FORMAT,
            "code": code_digests(),
            "data": data_digest,
            "params": {name: section.model_dump(mode="json") for name, section in sections.items()},
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The state of a run between two epochs.


@dataclass(frozen=True)
class TrainingState:
    """Everything the next epoch depends on, after `epoch` finished epochs."""

    epoch: int
    history: History  # fit's History dict: each log key's value per finished epoch, in log order
    shuffle: dict[str, Any] | None  # numpy bit_generator.state of the batch-order Generator (None: no shuffling)
    names: list[tuple[str, tuple[int, ...], str]]  # each variable's path, shape and dtype
    values: list[np.ndarray]

    @property
    def dvclive_step(self) -> int:
        """dvclive's step after these epochs: one `next_step` per epoch."""
        return self.epoch


def _global_seed_variable(create: bool) -> Any:
    """The state variable of Keras' global SeedGenerator: None when no unseeded random op made one
    (and `create` is false). Keras has no public accessor for it; this is where keras.random keeps it."""
    import mnist_pipeline.train.tensorflow_runtime  # noqa: F401 - Keras loads through the door, if not yet loaded

    # isort: split
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR, global_seed_generator

    generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    if generator is None and create:
        generator = global_seed_generator()
    return None if generator is None else generator.state


def state_variables(model: Any, with_global_seed: bool | None = None) -> list[tuple[str, Any]]:
    """(name, variable) for every variable training changes: the model's (seed generators included,
    they are Keras variables of their layers), the optimizer's, and the global seed generator's.

    `with_global_seed` None includes the global one only if it exists; True creates it first."""
    found = [(v.path, v) for v in model.variables] + [(v.path, v) for v in model.optimizer.variables]
    seed = _global_seed_variable(create=bool(with_global_seed))
    if seed is not None and with_global_seed is not False:
        found.append((GLOBAL_SEED, seed))
    return found


def capture(
    model: Any, rng: np.random.Generator | None, epoch: int, history: Mapping[str, Sequence[float]]
) -> TrainingState:
    """The state after `epoch` finished epochs (`history` holds their logs)."""
    variables = state_variables(model)
    values = [np.asarray(v.numpy()) for _, v in variables]
    names = [(name, tuple(a.shape), a.dtype.str) for (name, _), a in zip(variables, values, strict=True)]
    shuffle = rng.bit_generator.state if rng is not None else None
    return TrainingState(epoch, {k: [float(x) for x in v] for k, v in history.items()}, shuffle, names, values)


def restore(model: Any, rng: np.random.Generator | None, state: TrainingState) -> None:
    """Put `state` back into a freshly built and compiled model, its optimizer and the batch-order Generator.

    Everything is checked before anything is changed: a state that does not fit raises DamagedCheckpoint
    and leaves the model as it was built."""
    model.optimizer.build(model.trainable_variables)  # its slots exist only once built (fit builds them anyway)
    variables = state_variables(model, with_global_seed=any(name == GLOBAL_SEED for name, _, _ in state.names))
    expected = [(name, tuple(v.shape), np.dtype(v.dtype).str) for name, v in variables]
    if expected != state.names:
        theirs = {n for n, _, _ in state.names}
        ours = {n for n, _, _ in expected}
        differing = sorted(theirs ^ ours) or [a[0] for a, b in zip(expected, state.names, strict=False) if a != b]
        raise DamagedCheckpoint(f"its variables do not fit this model (first difference: {differing[:1]})")
    if (rng is None) != (state.shuffle is None):
        raise DamagedCheckpoint("its batch-order state does not fit this run's shuffling")
    if rng is not None:
        try:
            rng.bit_generator.state = state.shuffle
        except (TypeError, ValueError, KeyError) as e:
            raise DamagedCheckpoint(f"unusable batch-order state ({e})") from None
    for (_, variable), value in zip(variables, state.values, strict=True):
        variable.assign(value)


# ---------------------------------------------------------------------------------------------
# The file.


def _encode(state: TrainingState) -> bytes:
    """An .npz archive (zip, every entry CRC-checked on reading): the arrays, and the rest as JSON."""
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "dvclive_step": state.dvclive_step,
        "history": state.history,
        "shuffle": state.shuffle,
        "variables": [[name, list(shape), dtype] for name, shape, dtype in state.names],
    }
    entries = {f"v{i}": value for i, value in enumerate(state.values)}
    buffer = io.BytesIO()
    np.savez(buffer, state=np.frombuffer(json.dumps(meta).encode(), np.uint8), **entries)
    return buffer.getvalue()


def _decode(path: Path, epochs: int) -> TrainingState:
    """The state in the file, every part checked; DamagedCheckpoint says what is wrong."""
    mode = path.lstat().st_mode
    if not stat.S_ISREG(mode):
        raise DamagedCheckpoint("not a regular file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["state"].tobytes())
            count = len(meta["variables"])
            values = [archive[f"v{i}"] for i in range(count)]
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        reason = " ".join(str(e).split())[:120] or "no detail"
        raise DamagedCheckpoint(f"unreadable: {type(e).__name__}: {reason}") from None
    try:
        epoch, history, shuffle = meta["epoch"], meta["history"], meta["shuffle"]
        names = [(str(n), tuple(int(d) for d in shape), str(dtype)) for n, shape, dtype in meta["variables"]]
        ok = (meta["format"] == FORMAT and isinstance(epoch, int) and 1 <= epoch <= epochs
              and meta["dvclive_step"] == epoch and isinstance(history, dict) and history
              and all(isinstance(v, list) and len(v) == epoch and all(isinstance(x, float) for x in v)
                      for v in history.values())
              and (shuffle is None or isinstance(shuffle, dict)))
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedCheckpoint(f"malformed state ({type(e).__name__}: {e})") from None
    if not ok:
        raise DamagedCheckpoint(f"malformed state (epoch {epoch!r} of {epochs})")
    for (name, shape, dtype), value in zip(names, values, strict=True):
        if value.shape != shape or value.dtype.str != dtype:
            raise DamagedCheckpoint(f"variable {name}: expected {dtype} {shape}, found {value.dtype.str} {value.shape}")
    return TrainingState(epoch, history, shuffle, names, values)


class Checkpoints:
    """The checkpoint file of one run: read when the run starts, replaced after every epoch, removed at the end.

    The state is taken at the end of an epoch (`capture`, on the training thread); building the file,
    writing, fsyncing and renaming it happen on a helper thread while the next epoch trains, one write
    at a time, in order. `wait()` returns once the last one is in place.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._broken = False  # a write failed once: the run goes on without checkpoints
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    @classmethod
    def for_run(cls, key: str, folder: Path = CHECKPOINT_DIR) -> Checkpoints:
        return cls(folder / f"train-{key[:24]}.npz")

    def _discard(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)

    def resume(self, model: Any, rng: np.random.Generator | None, epochs: int) -> TrainingState | None:
        """Restore the last finished epoch into `model` and `rng`, saying so in one line; None when there is
        no checkpoint, or a damaged one (also one line: the run starts from epoch 1)."""
        self._sweep_folder()
        if not os.path.lexists(self.path):
            return None
        try:
            state = _decode(self.path, epochs)
            restore(model, rng, state)
        except DamagedCheckpoint as e:
            progress.say(f"train: ignoring a damaged checkpoint ({self.path}: {e}): starting from epoch 1")
            self._discard()
            return None
        where = f"at epoch {state.epoch + 1}/{epochs}" if state.epoch < epochs else f"after the last epoch ({epochs})"
        progress.say(f"train: resuming {where} from {self.path}")
        return state

    def _sweep_folder(self) -> None:
        """Temporary files of checkpoints whose writer was killed outright, whatever their run's key."""
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return
        sweep_leftovers(*{self.path.parent / m.group(1) for name in names if (m := _LEFTOVER.fullmatch(name))})

    def save(self, state: TrainingState) -> None:
        """Replace the checkpoint with `state`, atomically (a kill mid-write leaves the previous one), in the
        background. A checkpoint that cannot be written (a full disk, a read-only folder) costs the resume,
        not the run: one warning, and no more checkpoints."""
        self.wait()  # the previous epoch's write, long done unless an epoch is shorter than a write
        if self._broken:
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = self._writer.submit(self._write, state)

    def wait(self) -> None:
        """Until the last checkpoint saved is in place (or its write failed and was reported)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _write(self, state: TrainingState) -> None:
        data = _encode(state)
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(data)
        except OSError as e:
            self._broken = True
            progress.say(f"train: warning: cannot write the checkpoint {self.path} ({e.strerror or e}): "
                         "continuing without checkpoints")

    def remove(self) -> None:
        """The run finished and its outputs are written: nothing is left to resume."""
        self.wait()
        if self._writer is not None:
            self._writer.shutdown()
        self._discard()
        for folder in (self.path.parent, self.path.parent.parent):  # .cache/train-checkpoints, .cache, if empty
            try:
                folder.rmdir()
            except OSError:
                break
