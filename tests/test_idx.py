"""The IDX reader: good files load exactly; every malformed file fails with one line naming it and the fault."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from idxkit import encode_idx

from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.sources.idx import IMAGES_MAGIC, LABELS_MAGIC, MAX_IDX_BYTES, read_idx


def sample(n: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images covering every byte value, and labels 0-9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def error_of(path: Path, kind: str) -> str:
    with pytest.raises(PipelineError) as info:
        read_idx(path, kind, DATASETS["mnist"].image_shape if kind == "images" else None)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_good_files_round_trip(tmp_path: Path, compress: bool) -> None:
    images, labels = sample()
    suffix = ".gz" if compress else ""
    img = read_idx(write(tmp_path / f"images{suffix}", encode_idx(images), compress), "images")
    lab = read_idx(write(tmp_path / f"labels{suffix}", encode_idx(labels), compress), "labels")
    assert img.dtype == np.uint8 and img.shape == (7, 28, 28)
    assert lab.dtype == np.uint8 and lab.shape == (7,)
    np.testing.assert_array_equal(img, images)
    np.testing.assert_array_equal(lab, labels)


def test_encode_idx_writes_the_standard_header() -> None:
    images, labels = sample(3)
    assert encode_idx(images)[:16] == struct.pack(">IIII", IMAGES_MAGIC, 3, 28, 28)
    assert encode_idx(labels)[:8] == struct.pack(">II", LABELS_MAGIC, 3)


def test_empty_sets_are_valid(tmp_path: Path) -> None:
    empty = read_idx(write(tmp_path / "labels", encode_idx(np.zeros(0, np.uint8)), False), "labels")
    assert empty.shape == (0,)


def test_real_mnist_test_labels(mirror_root: Path) -> None:
    labels = read_idx(mirror_root / "mnist" / "t10k-labels-idx1-ubyte.gz", "labels")
    assert labels.shape == (10000,)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_wrong_magic_names_file_and_both_magics(tmp_path: Path) -> None:
    _, labels = sample()
    path = write(tmp_path / "train-images-idx3-ubyte", encode_idx(labels), False)
    assert error_of(path, "images") == (
        "train-images-idx3-ubyte: expected IDX magic 0x00000803 (images), found 0x00000801"
    )
    images, _ = sample()
    path = write(tmp_path / "train-labels-idx1-ubyte.gz", encode_idx(images), True)
    assert error_of(path, "labels") == (
        "train-labels-idx1-ubyte.gz: expected IDX magic 0x00000801 (labels), found 0x00000803"
    )


def test_wrong_image_dimensions(tmp_path: Path) -> None:
    data = struct.pack(">IIII", IMAGES_MAGIC, 2, 32, 32) + bytes(2 * 32 * 32)
    path = write(tmp_path / "t10k-images-idx3-ubyte", data, False)
    assert error_of(path, "images") == "t10k-images-idx3-ubyte: expected 28x28 images, found 32x32"


def test_truncated_payload_says_expected_and_found(tmp_path: Path) -> None:
    data = struct.pack(">IIII", IMAGES_MAGIC, 10000, 28, 28) + bytes(512)
    path = write(tmp_path / "t10k-images-idx3-ubyte.gz", data, True)
    assert error_of(path, "images") == "t10k-images-idx3-ubyte.gz: expected 7840000 image bytes, found 512"


def test_payload_longer_than_header_says(tmp_path: Path) -> None:
    _, labels = sample(5)
    path = write(tmp_path / "t10k-labels-idx1-ubyte", encode_idx(labels) + b"\x00\x01", False)
    assert error_of(path, "labels") == "t10k-labels-idx1-ubyte: expected 5 label bytes, found 7"


@pytest.mark.parametrize(("kind", "size", "header"), [("images", 10, 16), ("labels", 6, 8), ("labels", 3, 8)])
def test_short_header(tmp_path: Path, kind: str, size: int, header: int) -> None:
    magic = IMAGES_MAGIC if kind == "images" else LABELS_MAGIC
    path = write(tmp_path / "short", (struct.pack(">I", magic) + bytes(16))[:size], False)
    assert error_of(path, kind) == f"short: expected a {header}-byte IDX {kind} header, found {size} bytes"


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    images, _ = sample()
    packed = bytearray(gzip.compress(encode_idx(images), mtime=0))
    if damage == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed[-6] ^= 0xFF  # inside the CRC32 / size trailer: the deflate stream still decodes
    path = write(tmp_path / "train-images-idx3-ubyte.gz", bytes(packed), False)
    message = error_of(path, "images")
    assert message.startswith("train-images-idx3-ubyte.gz: corrupt gzip data (")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "t10k-labels-idx1-ubyte"
    assert error_of(path, "labels") == f"{path}: file not found"


def test_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.mkdir()
    assert error_of(path, "images") == f"{path}: a folder: expected a regular file"


def test_gzip_bomb_is_read_no_further_than_its_header_declares(tmp_path: Path) -> None:
    # A labels header declaring 3 labels, followed by 64 MiB of zeros: reading stops one byte past the 3.
    packed = gzip.compress(struct.pack(">II", LABELS_MAGIC, 3) + bytes(64 << 20), compresslevel=1, mtime=0)
    path = write(tmp_path / "t10k-labels-idx1-ubyte.gz", packed, False)
    assert error_of(path, "labels") == (
        "t10k-labels-idx1-ubyte.gz: expected 3 label bytes, found more (stopped reading there)")


def test_header_declaring_more_than_any_idx_file_is_refused(tmp_path: Path) -> None:
    header = struct.pack(">IIII", IMAGES_MAGIC, 2_000_000, 28, 28)
    path = write(tmp_path / "train-images-idx3-ubyte", header, False)
    assert error_of(path, "images") == (
        "train-images-idx3-ubyte: its IDX header declares 1568000016 bytes: expected at most 1073741824")
    assert MAX_IDX_BYTES > 47_040_016  # MNIST's training images fit, with room to spare


def test_unknown_magic_in_a_long_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "train-images-idx3-ubyte", b"GIF89a" + bytes(10_000), False)
    assert error_of(path, "images") == (
        "train-images-idx3-ubyte: expected IDX magic 0x00000803 (images), found 0x47494638")
