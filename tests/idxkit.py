"""IDX bytes for test inputs: the product only reads IDX files, so writing them is the tests' job."""

from __future__ import annotations

import struct

import numpy as np

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (the IDX format's own constants)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array of images (N, rows, cols) or labels (N,), as the upstream files hold."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
