"""`python -m mnist_pipeline.sources.export_folder`: an IDX data set as class subfolders, run as a user runs it."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, subprocess_env
from faultkit import write_raw
from PIL import Image

from mnist_pipeline.core.config import load_config, with_overrides
from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, raw_name
from mnist_pipeline.prepared import split_paths
from mnist_pipeline.sources.idx import parse_idx, read_idx
from mnist_pipeline.sources.imagefolder import prepare_folder


def export(cwd: Path, *args: str, mirror: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(**({"DATASET_MIRROR": str(mirror)} if mirror else {}))
    if not mirror:
        env.pop("DATASET_MIRROR", None)
    return subprocess.run([sys.executable, "-m", "mnist_pipeline.sources.export_folder", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def mirror_idx(mirror: Path, folder: str, name: str, kind: str) -> np.ndarray:
    return parse_idx(gzip.decompress((mirror / folder / name).read_bytes()), name, kind)


def files_by_class(out: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(out.iterdir())}


def test_fashion_test_images_become_ten_class_folders_of_the_exact_idx_pixels(tmp_path: Path,
                                                                              mirror_root: Path) -> None:
    (tmp_path / "params.yaml").write_bytes((PROJECT_ROOT / "params.yaml").read_bytes())
    result = export(tmp_path, "--dataset", "fashion_mnist", "--split", "test", "--limit", "30",
                    "--out", "data/images", mirror=mirror_root)
    assert result.returncode == 0, result.stderr
    assert "30 images in 10 class folders" in result.stderr

    out = tmp_path / "data/images"
    names = [name.replace("/", "-") for name in DATASETS["fashion_mnist"].class_names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert "T-shirt-top" in names
    images = mirror_idx(mirror_root, "fashion-mnist", TEST_IMAGES, "images")
    labels = mirror_idx(mirror_root, "fashion-mnist", TEST_LABELS, "labels")
    seen = []
    for folder, files in files_by_class(out).items():
        for name in files:
            index = int(name.removeprefix("test-").removesuffix(".png"))
            seen.append(index)
            assert names[labels[index]] == folder, name
            with Image.open(out / folder / name) as image:
                assert image.format == "PNG" and image.mode == "L"
                np.testing.assert_array_equal(np.asarray(image), images[index], err_msg=name)
    assert sorted(seen) == list(range(30))
    assert not [p for p in tmp_path.joinpath("data").iterdir() if p.name != "images"]  # no temporary left


def test_split_all_reads_data_raw_without_a_mirror_and_names_train_and_test_apart(tmp_path: Path) -> None:
    raw = tmp_path / "data/raw"
    write_raw(raw / "mnist", train=12, test=8)
    result = export(tmp_path, "--split", "all", "--limit", "5", "--format", "jpeg")
    assert result.returncode == 0, result.stderr

    out = tmp_path / "data/images"
    train_labels = read_idx(raw / "mnist" / raw_name(TRAIN_LABELS), "labels")[:5]
    test_labels = read_idx(raw / "mnist" / raw_name(TEST_LABELS), "labels")[:5]
    expected: dict[str, list[str]] = {}
    for split, labels in (("train", train_labels), ("test", test_labels)):
        for index, label in enumerate(labels):
            expected.setdefault(str(label), []).append(f"{split}-{index:05d}.jpg")
    assert files_by_class(out) == {k: sorted(v) for k, v in sorted(expected.items())}
    train_images = read_idx(raw / "mnist" / raw_name(TRAIN_IMAGES), "images")
    with Image.open(out / str(train_labels[0]) / "train-00000.jpg") as image:
        assert image.format == "JPEG" and image.size == (28, 28)
        # Lossy, and the test images are noise (JPEG's worst case): close on average, not exact.
        error = np.abs(np.asarray(image, dtype=np.int16) - train_images[0]).mean()
        assert error < 40, error


def test_split_layout_puts_each_split_in_its_own_folder_that_preprocess_reads_as_its_splits(tmp_path: Path) -> None:
    raw = tmp_path / "data/raw"
    write_raw(raw / "mnist", train=12, test=8)
    result = export(tmp_path, "--split", "all", "--layout", "splits", "--out", "data/images")
    assert result.returncode == 0, result.stderr
    assert "export: 20 images in 10 classes, under train/ and test/: data/images" in result.stderr

    out = tmp_path / "data/images"
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    for split, count in (("train", 12), ("test", 8)):
        labels = read_idx(raw / "mnist" / raw_name(TRAIN_LABELS if split == "train" else TEST_LABELS), "labels")
        expected: dict[str, list[str]] = {}
        for index, label in enumerate(labels[:count]):
            expected.setdefault(str(label), []).append(f"{split}-{index:05d}.png")
        assert files_by_class(out / split) == {k: sorted(v) for k, v in sorted(expected.items())}
    cfg = with_overrides(load_config(PROJECT_ROOT / "params.yaml"), {"preprocess.split": "folders"})
    prepare_folder(str(out), tmp_path / "prepared", cfg.preprocess)
    sizes = {split: len(np.load(split_paths(tmp_path / "prepared", split)[1])) for split in ("train", "val", "test")}
    assert sizes == {"train": 12, "val": 0, "test": 8}


def test_a_repeated_export_is_byte_identical_and_a_full_folder_needs_force(tmp_path: Path) -> None:
    write_raw(tmp_path / "data/raw/mnist", train=4, test=20)
    assert export(tmp_path, "--out", "first").returncode == 0
    first = {p.relative_to(tmp_path / "first"): p.read_bytes() for p in (tmp_path / "first").rglob("*.png")}
    assert len(first) == 20

    refused = export(tmp_path, "--out", "first")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "error: first: folder is not empty: expected a new or empty folder (--force replaces it)"
    ]
    (tmp_path / "first" / "stray.txt").write_text("not an image")
    assert export(tmp_path, "--out", "first", "--force").returncode == 0
    again = {p.relative_to(tmp_path / "first"): p.read_bytes() for p in (tmp_path / "first").rglob("*")
             if p.is_file()}
    assert again == first  # same bytes, and --force replaced the folder whole (stray.txt is gone)


def test_no_idx_files_and_no_params_is_one_line_and_no_folder(tmp_path: Path) -> None:
    result = export(tmp_path, "--dataset", "mnist")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data/raw/mnist: no IDX files there"), result.stderr
    assert "params.yaml: file not found" in lines[0]
    assert not (tmp_path / "data/images").exists()


@pytest.mark.parametrize("limit", ["-1", "x"])
def test_a_bad_limit_is_refused_before_any_work(tmp_path: Path, limit: str) -> None:
    result = export(tmp_path, "--limit", limit)
    assert result.returncode == 2
    assert "--limit" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "data").exists()
