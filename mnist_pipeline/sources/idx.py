"""Read MNIST-format IDX files (raw or gzip) and say exactly what is wrong with a bad one."""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NOT_REGULAR, NotRegularFile, open_regular

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"
# The most bytes one IDX file may hold here: MNIST's largest is 47 MB; a header may claim terabytes.
MAX_IDX_BYTES = 1 << 30


def declared_size(header: bytes) -> tuple[int, str] | None:
    """The whole file's size as its IDX header states it, and what its items are; None if the header
    is short or its magic unknown (parse_idx then names the fault)."""
    if len(header) >= 8 and header[:4] == struct.pack(">I", LABELS_MAGIC):
        return 8 + struct.unpack(">I", header[4:8])[0], "label"
    if len(header) >= 16 and header[:4] == struct.pack(">I", IMAGES_MAGIC):
        count, rows, cols = struct.unpack(">III", header[4:16])
        return 16 + count * rows * cols, "image"
    return None


def _open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """The file, opened only when it is a regular file: a FIFO would block, /dev/zero never end."""
    try:
        return open_regular(path)
    except NotRegularFile as e:
        if stat.S_ISDIR(e.mode):
            raise PipelineError(f"{path}: a folder: expected a regular file") from None
        raise PipelineError(f"{path}: {NOT_REGULAR}") from None
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The IDX payload, decompressing when the file starts with the gzip magic.

    Reads no more than the header declares (plus one byte, to see a longer file), and never more
    than MAX_IDX_BYTES: a long file or a gzip bomb costs no memory.
    """
    name = Path(path).name
    with _open_regular(path) as raw:
        packed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        try:
            with gzip.GzipFile(fileobj=raw) if packed else contextlib.nullcontext(raw) as source:
                header = source.read(16)
                declared = declared_size(header)
                if declared is None:
                    return header  # a short header or an unknown magic: these bytes show which
                size, what = declared
                if size > MAX_IDX_BYTES:
                    raise PipelineError(f"{name}: its IDX header declares {size} bytes: "
                                        f"expected at most {MAX_IDX_BYTES}")
                data = header + source.read(max(0, size - len(header) + 1))
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise PipelineError(f"{name}: corrupt gzip data ({e})") from None
        except OSError as e:
            raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
        if len(data) > size:
            header_len = 16 if what == "image" else 8
            # A plain file's length is known without reading it; a gzip stream's only by inflating it all.
            found = "more (stopped reading there)" if packed else os.fstat(raw.fileno()).st_size - header_len
            raise PipelineError(f"{name}: expected {size - header_len} {what} bytes, found {found}")
    return data


def parse_idx(data: bytes, name: str, kind: str, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Images as (N, rows, cols) uint8 or labels as (N,) uint8, validated against the header.

    `image_shape` is the data set's (rows, cols) when known; None accepts any size.
    """
    magic = IMAGES_MAGIC if kind == "images" else LABELS_MAGIC
    header_len = 16 if kind == "images" else 8
    # The magic first: a labels file given as images is "wrong magic", not "short header".
    if len(data) >= 4 and (found_magic := struct.unpack(">I", data[:4])[0]) != magic:
        raise PipelineError(f"{name}: expected IDX magic 0x{magic:08x} ({kind}), found 0x{found_magic:08x}")
    if len(data) < header_len:
        raise PipelineError(f"{name}: expected a {header_len}-byte IDX {kind} header, found {len(data)} bytes")
    dims = struct.unpack(">III" if kind == "images" else ">I", data[4:header_len])
    if kind == "images" and image_shape is not None and (dims[1], dims[2]) != tuple(image_shape):
        raise PipelineError(f"{name}: expected {image_shape[0]}x{image_shape[1]} images, found {dims[1]}x{dims[2]}")
    expected = int(np.prod(dims))
    payload = len(data) - header_len
    if payload != expected:
        what = "image" if kind == "images" else "label"
        raise PipelineError(f"{name}: expected {expected} {what} bytes, found {payload}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
    return array


def read_idx(path: str | os.PathLike[str], kind: str, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """`kind` is "images" or "labels"; errors name the file and the problem."""
    return parse_idx(read_bytes(path), Path(path).name, kind, image_shape)



@dataclass(frozen=True)
class IdxItems:
    """The items of an uncompressed IDX file whose header and size check out, read a range at a time:
    a data set larger than memory is scaled and written chunk by chunk, never held whole."""

    path: Path
    dims: tuple[int, ...]
    header_len: int

    def __len__(self) -> int:
        return self.dims[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Items [start, stop) as uint8, shaped like `read_idx`'s."""
        stop = max(0, min(stop, len(self)))
        start = max(0, min(start, stop))
        item = math.prod(self.dims[1:])
        with _open_regular(self.path) as f:
            f.seek(self.header_len + start * item)
            data = f.read((stop - start) * item)
        if len(data) != (stop - start) * item:
            raise PipelineError(f"{self.path.name}: ended early: the file changed while it was being read")
        return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, *self.dims[1:])


def open_idx(
    path: str | os.PathLike[str], kind: str, image_shape: tuple[int, int] | None = None
) -> IdxItems | np.ndarray:
    """An uncompressed IDX file whose header and length agree: its items to read on demand (`IdxItems`),
    whatever its size. Anything else, a gzip file or a faulty one, goes through `read_idx`: its array, or
    its error line, exactly as `read_idx` says it."""
    with _open_regular(path) as f:
        header, size = f.read(16), os.fstat(f.fileno()).st_size
    declared = declared_size(header) if header[:2] != GZIP_MAGIC else None
    if declared is not None and declared == (size, "image" if kind == "images" else "label"):
        header_len = 16 if kind == "images" else 8
        dims = struct.unpack(">III" if kind == "images" else ">I", header[4:header_len])
        if kind != "images" or image_shape is None or (dims[1], dims[2]) == tuple(image_shape):
            return IdxItems(Path(path), dims, header_len)
    return read_idx(path, kind, image_shape)
