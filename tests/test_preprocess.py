"""Preprocessing on real MNIST: exact tutorial values, dtypes, shapes, and an honest validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT
from idxkit import encode_idx

from mnist_pipeline.core.config import PreprocessConfig, load_config
from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, raw_name
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import idx_spec, load_split
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.splits import load_raw, scale_images, stratified_split, write_splits

NAMES = {"train_images": TRAIN_IMAGES, "train_labels": TRAIN_LABELS,
         "test_images": TEST_IMAGES, "test_labels": TEST_LABELS}
MNIST = idx_spec(DATASETS["mnist"])


def settings(val_size: int = 0, seed: int = 0, train_limit: int = 0, test_limit: int = 0,
             scale: float = 255.0, offset: float = 0.5) -> PreprocessConfig:
    return load_config(PROJECT_ROOT / "params.yaml").preprocess.model_copy(update={
        "scale": scale, "offset": offset, "val_size": val_size, "seed": seed,
        "train_limit": train_limit, "test_limit": test_limit})


@pytest.fixture(scope="module")
def raw(mirror_root: Path) -> dict[str, np.ndarray]:
    """The four real MNIST arrays, read straight from the mirror's .gz files."""
    return {key: read_idx(mirror_root / "mnist" / name, key.split("_")[1]) for key, name in NAMES.items()}


Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def preprocess(raw: dict[str, np.ndarray], cfg: PreprocessConfig, prepared_dir: Path) -> Splits:
    """What the preprocess stage writes for these arrays (its `write_splits`), read back as the train stage reads it."""
    write_splits(raw, cfg, prepared_dir, MNIST)
    return {split: load_split(prepared_dir, split, MNIST, min_images=0) for split in ("train", "val", "test")}


def tutorial(images: np.ndarray) -> np.ndarray:
    """The tutorial's own arithmetic: float64 `x / 255 - 0.5`, then float32 as Keras casts it."""
    return (images.astype(np.float64) / 255 - 0.5).astype(np.float32).reshape(len(images), 784)


def test_values_equal_the_tutorial_bit_for_bit(raw: dict[str, np.ndarray]) -> None:
    scaled = scale_images(raw["test_images"], 255.0, 0.5)
    expected = tutorial(raw["test_images"])
    assert scaled.dtype == np.float32 and scaled.shape == (10000, 784)
    assert scaled.tobytes() == expected.tobytes()
    assert scaled.min() == np.float32(-0.5) and scaled.max() == np.float32(0.5)


def test_every_byte_value_scales_exactly() -> None:
    images = np.arange(256, dtype=np.uint8).repeat(4).reshape(1, 32, 32)[:, :28, :28]
    for scale, offset in [(255.0, 0.5), (127.5, 1.0), (1.0, 0.0), (3.0, -2.25)]:
        expected = (images.astype(np.float64) / scale - offset).astype(np.float32).reshape(1, 784)
        assert scale_images(images, scale, offset).tobytes() == expected.tobytes()


def test_val_size_zero_is_the_tutorials_training_set(raw: dict[str, np.ndarray], tmp_path: Path) -> None:
    splits = preprocess(raw, settings(), tmp_path / "prepared")
    x_train, y_train = splits["train"]
    x_val, y_val = splits["val"]
    x_test, y_test = splits["test"]
    assert x_train.shape == (60000, 784) and x_train.dtype == np.float32
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10000, 784) and y_test.dtype == np.uint8
    assert x_val.shape == (0, 784) and x_val.dtype == np.float32
    assert y_val.shape == (0,) and y_val.dtype == np.uint8
    # The original order, exactly: the tutorial's fit sees the same sequence.
    for start in range(0, 60000, 10000):  # in slices: a float64 copy of all 60,000 costs seconds
        rows = slice(start, start + 10000)
        assert x_train[rows].tobytes() == tutorial(raw["train_images"][rows]).tobytes()
    np.testing.assert_array_equal(y_train, raw["train_labels"])
    np.testing.assert_array_equal(y_test, raw["test_labels"])
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_split_is_stratified_disjoint_and_complete(raw: dict[str, np.ndarray]) -> None:
    labels = raw["train_labels"]
    train, val = stratified_split(labels, 6000, seed=0)
    assert len(val) == 6000 and len(train) == 54000
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(60000))  # disjoint, covering all
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # each keeps the original order
    # Each class is held out in proportion: within one image of its exact share.
    share = np.bincount(labels, minlength=10) * 6000 / 60000
    assert np.all(np.abs(np.bincount(labels[val], minlength=10) - share) < 1)


def test_split_is_reproducible_and_depends_on_the_seed(raw: dict[str, np.ndarray], tmp_path: Path) -> None:
    first = preprocess(raw, settings(val_size=6000, seed=0, train_limit=10000, test_limit=10), tmp_path / "first")
    again = preprocess(raw, settings(val_size=6000, seed=0, train_limit=10000, test_limit=10), tmp_path / "again")
    other = preprocess(raw, settings(val_size=6000, seed=1, train_limit=10000, test_limit=10), tmp_path / "other")
    for split in ("train", "val"):
        for a, b in zip(first[split], again[split], strict=True):
            assert a.tobytes() == b.tobytes()
    assert first["val"][0].tobytes() != other["val"][0].tobytes()
    assert first["val"][0].shape == (6000, 784) and first["train"][0].shape == (4000, 784)


def test_split_rows_keep_their_labels(raw: dict[str, np.ndarray], tmp_path: Path) -> None:
    images, labels = raw["train_images"][:3000], raw["train_labels"][:3000]
    train, val = stratified_split(labels, 500, seed=3)
    splits = preprocess(raw, settings(val_size=500, seed=3, train_limit=3000), tmp_path / "prepared")
    assert splits["val"][0].tobytes() == tutorial(images[val]).tobytes()
    np.testing.assert_array_equal(splits["val"][1], labels[val])
    assert splits["train"][0].tobytes() == tutorial(images[train]).tobytes()
    np.testing.assert_array_equal(splits["train"][1], labels[train])


def test_limits_take_the_first_images(raw: dict[str, np.ndarray], tmp_path: Path) -> None:
    splits = preprocess(raw, settings(train_limit=1000, test_limit=200), tmp_path / "prepared")
    assert splits["train"][0].tobytes() == tutorial(raw["train_images"][:1000]).tobytes()
    np.testing.assert_array_equal(splits["test"][1], raw["test_labels"][:200])
    assert splits["test"][0].shape == (200, 784)


@pytest.mark.parametrize(("val_size", "train_limit", "count"), [(60000, 0, 60000), (1000, 1000, 1000),
                                                                (5000, 1000, 1000)])
def test_val_size_must_leave_training_images(raw: dict[str, np.ndarray], val_size: int, train_limit: int,
                                             count: int, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        preprocess(raw, settings(val_size=val_size, train_limit=train_limit), tmp_path / "prepared")
    assert str(info.value) == (
        f"params.yaml: preprocess.val_size = {val_size}: expected fewer than the {count} training images"
    )
    assert not (tmp_path / "prepared").exists()  # refused before any split is written


def test_load_raw_reads_the_download_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "raw" / "mnist"
    folder.mkdir(parents=True)
    arrays = {"train_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 5, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 3, dtype=np.uint8)}  # one label too many
    for key, name in NAMES.items():
        (folder / raw_name(name)).write_bytes(encode_idx(arrays[key]))
    with pytest.raises(PipelineError) as info:
        load_raw(tmp_path / "raw", MNIST)
    assert str(info.value) == f"{folder}: test set has 2 images but 3 labels"
    (folder / raw_name(TEST_LABELS)).write_bytes(encode_idx(arrays["test_labels"][:2]))
    loaded = load_raw(tmp_path / "raw", MNIST)
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded[key], array[: len(loaded[key])])


def test_labels_outside_the_data_sets_classes_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "mnist"
    folder.mkdir(parents=True)
    arrays = {"train_images": np.zeros((3, 28, 28), np.uint8), "train_labels": np.array([3, 12, 9], np.uint8),
              "test_images": np.zeros((1, 28, 28), np.uint8), "test_labels": np.array([1], np.uint8)}
    for key, name in NAMES.items():
        (folder / raw_name(name)).write_bytes(encode_idx(arrays[key]))
    with pytest.raises(PipelineError) as info:
        load_raw(tmp_path / "raw", MNIST)
    assert str(info.value) == "train-labels-idx1-ubyte: expected labels 0-9, found 12"
