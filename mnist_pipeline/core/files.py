"""Atomic writes and checked reads of the files stages exchange.

Every output is written to a temporary file in its own directory and renamed into place, so a
stage killed mid-write leaves the previous file or none, never a truncated one. A kill that no code
can see (SIGKILL, power loss) leaves the temporary file itself behind: the next write of the same
output removes it first (`sweep_leftovers`), so it never becomes part of an output or of a report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from mnist_pipeline.core.errors import PipelineError

NPY_MAGIC = b"\x93NUMPY"
# The temporary names beside an output `<name>`: `.tmp-<12 hex>-<name>` (atomic_path), `.tmp-<8 of
# [a-z0-9_]>-<name>` (atomic_dir's new folder) and `.tmp-old-<12 hex>-<name>` (its old one set aside).
_LEFTOVER = r"\.tmp-(?:old-)?[a-z0-9_]{8,12}-"


# How a reader that expected a plain data file words a FIFO, device or socket in its one-line error.
NOT_REGULAR = "not a regular file (a FIFO, device or socket): expected a regular file"


class NotRegularFile(Exception):
    """A path that is a FIFO, device, socket or folder: refused before a byte of it is read."""

    def __init__(self, path: str | os.PathLike[str], mode: int) -> None:
        self.path, self.mode, self.kind = path, mode, file_kind(mode)
        super().__init__(f"{path}: not a regular file ({self.kind})")


def file_kind(mode: int) -> str:
    """What a stat mode says a path is, for messages: 'a FIFO', 'a character device', ..."""
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """The one way the pipeline opens a file it reads: only a regular file, checked on the open file.

    A FIFO would block `open()` until a writer comes and /dev/zero never ends. O_NONBLOCK makes the
    open of a FIFO return at once, and fstat of the opened file leaves no gap for a swap in between.
    Raises NotRegularFile, or the OSError of the open (FileNotFoundError, PermissionError, ...).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def md5_of(path: str | os.PathLike[str]) -> str:
    """The md5 DVC records for a file (DVC 3 hashes a file's bytes as they are)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block take effect right after it.

    For steps that must not stop halfway, like the two renames that swap a directory.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in caught[:1]:
            signal.raise_signal(signum)


def sweep_leftovers(*outputs: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders that writes of these outputs left beside them when the
    process was killed without a chance to clean up (SIGKILL); returns what was removed.

    Only names this module gives an output's temporaries are touched (see _LEFTOVER): never another
    output, nor `.tmp-<x>-x_train.npy` when sweeping for `train.npy`.
    """
    removed = []
    for output in outputs:
        final = Path(output)
        pattern = re.compile(_LEFTOVER + re.escape(final.name))
        try:
            entries = list(os.scandir(final.parent))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to `final`; renamed onto it only if the block succeeds.

    Leftovers of an earlier write of `final` that was killed outright are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final)
    # The temporary name keeps the final suffix: Keras insists on `.keras` and `.weights.h5`.
    tmp_path = final.parent / f".tmp-{uuid.uuid4().hex[:12]}-{final.name}"
    try:
        with open(tmp_path, "xb"):  # created with the umask's permissions, like any output
            pass
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.filename is None:  # EFBIG under `ulimit -f`, a full disk in a library's write: say which output
            e.filename = str(final)
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_output_paths(*outputs: str | os.PathLike[str]) -> None:
    """Before any work: every output's folder is a folder, or can be made one. A regular file named
    `models` or `.cache` would otherwise fail the stage after all its epochs, and on every rerun."""
    for output in outputs:
        final = Path(output)
        for folder in reversed([final.parent, *final.parent.parents]):
            try:
                mode = os.stat(folder).st_mode
            except FileNotFoundError:
                break  # made when the output is written
            except OSError as e:
                raise PipelineError(f"{folder}: cannot use it as the folder of {final} "
                                    f"({(e.strerror or str(e)).lower()})") from None
            if not stat.S_ISDIR(mode):
                raise PipelineError(f"{folder}: {file_kind(mode)}, not a folder: expected a folder for {final} "
                                    "(move it away, then rerun)")
        if final.is_dir() and not final.is_symlink() and final.suffix:
            raise PipelineError(f"{final}: a folder: expected the file written there (move it away, then rerun)")


@contextlib.contextmanager
def output_group(*outputs: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Temporary paths for several outputs that must change together (a stage's metrics and plots).

    The block writes each temporary; only when it succeeds are the old outputs renamed aside, the new
    ones renamed in (signals held off between), and the old ones deleted. A failure or a kill while
    writing leaves every old output as it was; a rename that fails puts back the old ones. A kill that no
    code sees (SIGKILL) leaves temporaries that `sweep_leftovers` removes."""
    finals = [Path(o) for o in outputs]
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(final)
    temps = [f.parent / f".tmp-{uuid.uuid4().hex[:12]}-{f.name}" for f in finals]

    def final_names(text: str) -> str:  # a message names the output, not its temporary name
        for tmp, final in zip(temps, finals, strict=True):
            text = text.replace(str(tmp), str(final))
        return text

    try:
        try:
            yield temps
        except OSError as e:
            if e.filename:
                e.filename = final_names(str(e.filename))
            else:  # a library's or a file object's write (EFBIG, ENOSPC): the output written last
                written = [(t.stat().st_mtime_ns, i) for i, t in enumerate(temps) if t.exists()]
                e.filename = str(finals[max(written)[1]]) if written else ", ".join(map(str, finals))
            raise
        except PipelineError as e:
            raise PipelineError(final_names(str(e))) from None
        for tmp, final in zip(temps, finals, strict=True):
            if not tmp.is_file():
                raise PipelineError(f"{final}: was not written")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _swap_in(temps, finals)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _swap_in(temps: list[Path], finals: list[Path]) -> None:
    asides: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    with _signals_deferred():
        try:
            for final in finals:
                if final.exists():
                    aside = final.parent / f".tmp-old-{uuid.uuid4().hex[:12]}-{final.name}"
                    os.replace(final, aside)
                    asides.append((final, aside))
            for tmp, final in zip(temps, finals, strict=True):
                os.replace(tmp, final)
                placed.append(final)
        except BaseException:
            for final in placed:
                final.unlink(missing_ok=True)
            for final, aside in asides:
                os.replace(aside, final)
            raise
    for _, aside in asides:
        aside.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """`open()` for writing, with the rename-into-place guarantee of `atomic_path`."""
    with atomic_path(final) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary directory next to `final` that replaces it whole when the block succeeds.

    The old directory is renamed aside and the new one renamed in, with signals held off between
    the two renames; only then is the old one deleted. Deleting first would leave a half-deleted
    directory if the stage were killed during the deletion. Leftovers of an earlier write of `final`
    that was killed outright are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", suffix=f"-{final.name}", dir=final.parent))
    old = final.parent / f".tmp-old-{uuid.uuid4().hex[:12]}-{final.name}"
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        with _signals_deferred():
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _naming_the_file(final: Path) -> contextlib.AbstractContextManager[None]:
    """A write fault (a full disk, a read-only folder) becomes one line naming the output it was for:
    numpy, for one, says only "Not enough free space to write 188160000 bytes"."""

    @contextlib.contextmanager
    def named() -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise PipelineError(f"{final}: cannot write ({e.strerror or e}); the previous file, if any, "
                                "is unchanged") from None

    return named()


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    with _naming_the_file(Path(path)), atomic_open(path) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def save_json(path: str | os.PathLike[str], data: Any) -> None:
    """Standard JSON (no NaN or Infinity, which JSON has no words for), sorted keys, a trailing newline:
    equal data gives equal bytes, and git diffs stay small."""
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise PipelineError(f"{path}: refusing to write a value that is not finite (NaN or infinity): "
                            "JSON cannot hold it, and the result it stands for is meaningless") from None
    with _naming_the_file(Path(path)), atomic_open(path, "w") as f:
        f.write(text)


def _header(f: IO[bytes], path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order from a .npy header, read before any data: a bad file is refused
    without loading it."""
    magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        found = "an empty file" if not magic else f"a file starting {magic!r}"
        raise PipelineError(f"{path}: not a .npy array: expected the .npy header, found {found}")
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f, max_header_size=10_000)
    return tuple(shape), dtype, fortran


# TensorFlow's alignment: it can use an array's memory for a tensor without copying it only at a multiple of this.
TENSOR_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-order array whose data start at a multiple of TENSOR_ALIGNMENT bytes.

    numpy aligns its arrays to 16 bytes; TensorFlow copies those when it makes a tensor of one, which for
    MNIST's training set costs half a second of the train stage and as much memory again (`loop.as_tensor`).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def load_npy(
    path: str | os.PathLike[str],
    dtype: np.dtype | type,
    ndim: int,
    trailing: tuple[int, ...] = (),
    mmap: bool = False,
) -> np.ndarray:
    """Load an array without pickle and check dtype and shape, naming the file on any mismatch.

    The header is checked first, against the file's real size too, so a header that claims a huge
    shape is refused in microseconds instead of asking for terabytes. With `mmap` the data stay on
    disk: a read-only memory map, paged in as it is used.
    """
    want = "(N" + "".join(f", {d}" for d in trailing) + ")"
    try:
        try:
            opened = open_regular(path)
        except NotRegularFile as e:
            kind = "a folder" if stat.S_ISDIR(e.mode) else "not a regular file (a FIFO, device or socket)"
            raise PipelineError(f"{path}: {kind}: expected a .npy array") from None
        with opened as f:
            shape, found, fortran = _header(f, path)
            if found.hasobject:
                raise PipelineError(
                    f"{path}: holds Python objects, which are never unpickled (allow_pickle=False): "
                    "expected a plain numeric array"
                )
            if found != np.dtype(dtype):
                raise PipelineError(f"{path}: expected dtype {np.dtype(dtype)}, found {found}")
            if len(shape) != ndim or tuple(shape[1:]) != trailing:
                raise PipelineError(f"{path}: expected shape {want}, found {shape}")
            expected = math.prod(shape) * found.itemsize
            available = os.fstat(f.fileno()).st_size - f.tell()
            if available != expected:
                raise PipelineError(f"{path}: truncated or corrupt .npy array: its header says shape {shape}, "
                                    f"{expected} bytes, the file holds {available}")
            if mmap:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            if fortran:
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            array = aligned_empty(shape, found)
            got = f.readinto(memoryview(array.reshape(-1)).cast("B")) if expected else 0
            if got != expected:
                raise PipelineError(f"{path}: ended after {got} of its {expected} bytes: the file changed while "
                                    "it was being read (rerun the stage)")
            return array
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run the stage that writes it: dvc repro)") from None
    except ValueError as e:
        raise PipelineError(f"{path}: truncated or corrupt .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise PipelineError(f"{path}: not a readable .npy array ({getattr(e, 'strerror', None) or e})") from None
