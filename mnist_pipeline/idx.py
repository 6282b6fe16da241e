"""Read MNIST-format IDX files (raw or gzip) and say exactly what is wrong with a bad one."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from mnist_pipeline.errors import PipelineError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The IDX payload, decompressing when the file starts with the gzip magic."""
    name = Path(path).name
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise PipelineError(f"{name}: corrupt gzip data ({e})") from None
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

