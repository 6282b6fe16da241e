"""The folder data set: real image files written here with Pillow from real MNIST test digits, read back
by `prepare_folder` (and once through the preprocess stage as a real process)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, skip_unless_ci
from faultkit import error_line, stage_dir
from PIL import Image

from mnist_pipeline.core.config import PreprocessConfig, load_config, with_overrides
from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import SPLITS, spec_path, split_paths
from mnist_pipeline.sources.formats import PICTURE_FORMATS
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.imagefolder import MANIFEST, decode, prepare_folder, split_key, split_of
from mnist_pipeline.sources.splits import scale_images


@pytest.fixture(scope="module")
def digits(mirror_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 200 MNIST test digits (uint8 28x28) and their labels."""
    images = read_idx(mirror_root / "mnist" / TEST_IMAGES, "images")[:200]
    labels = read_idx(mirror_root / "mnist" / TEST_LABELS, "labels")[:200]
    return images, labels


def preprocess_cfg(**overrides: object) -> PreprocessConfig:
    cfg = load_config(PROJECT_ROOT / "params.yaml")
    return with_overrides(cfg, {f"preprocess.{k}": v for k, v in overrides.items()}).preprocess


def write_digits(root: Path, digits: tuple[np.ndarray, np.ndarray], count: int = 40, classes: int = 3,
                 suffix: str = ".png") -> dict[str, np.ndarray]:
    """`count` digits of the first `classes` classes as `<root>/<label>/<i>.png`; {relative path: pixels}."""
    images, labels = digits
    written = {}
    for i in np.flatnonzero(labels < classes)[:count]:
        rel = f"{labels[i]}/{i:03d}{suffix}"
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / rel)
        written[rel] = images[i]
    return written


def manifest(prepared: Path) -> list[dict[str, str]]:
    with open(prepared / MANIFEST, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def arrays(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = split_paths(prepared, split)
    return np.load(x_path), np.load(y_path)


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 8-bit grey pixels, with one tiny compressed row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# Reading: every format and mode gives the digit's pixels.


def test_mnist_pngs_give_exactly_the_idx_pixels_scaled_as_the_idx_path(tmp_path: Path, digits) -> None:
    written = write_digits(tmp_path / "images", digits)
    cfg = preprocess_cfg()
    spec = prepare_folder(str(tmp_path / "images"), tmp_path / "prepared", cfg)
    assert (spec.class_names, spec.image_shape, spec.channels) == (("0", "1", "2"), (28, 28), 1)
    loaded = {split: arrays(tmp_path / "prepared", split) for split in SPLITS}
    for row in manifest(tmp_path / "prepared"):
        x, y = loaded[row["split"]]
        index = int(row["index"])
        expected = scale_images(written[row["path"]][None], cfg.scale, cfg.offset)[0]
        np.testing.assert_array_equal(x[index], expected)
        assert spec.class_names[y[index]] == row["class"]
    assert sum(len(loaded[s][1]) for s in SPLITS) == len(written)


LOSSLESS = {
    "L PNG": lambda d: encoded(d, "PNG"),
    "16-bit PNG": lambda d: encoded(d.astype(np.uint16) * 257, "PNG"),
    "RGB PNG": lambda d: encoded(np.stack([d] * 3, axis=-1), "PNG"),
    "RGBA PNG, opaque": lambda d: encoded(np.dstack([d, d, d, np.full_like(d, 255)]), "PNG"),
    "LA PNG, opaque": lambda d: encoded(np.dstack([d, np.full_like(d, 255)]), "PNG"),
    "palette PNG": lambda d: _palette(d, "PNG"),
    "palette GIF": lambda d: encoded(d, "GIF"),
    "BMP": lambda d: encoded(d, "BMP"),
    "TIFF": lambda d: encoded(d, "TIFF"),
    "16-bit TIFF": lambda d: encoded(d.astype(np.uint16) * 257, "TIFF"),
    "compressed TIFF": lambda d: encoded(d, "TIFF", compression="tiff_lzw"),
}


def _palette(pixels: np.ndarray, fmt: str) -> bytes:
    image = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("kind", LOSSLESS)
def test_lossless_formats_and_modes_decode_to_the_original_grey_pixels(tmp_path: Path, digits, kind: str) -> None:
    digit = digits[0][0]
    data = LOSSLESS[kind](digit)
    Image.open(io.BytesIO(data)).verify()  # a real file of that format
    np.testing.assert_array_equal(decode(io.BytesIO(data), preprocess_cfg()), digit)


def test_rgb_jpeg_decodes_close_to_the_digit(digits) -> None:
    digit = digits[0][0]
    data = encoded(np.stack([digit] * 3, axis=-1), "JPEG", quality=95)
    decoded = decode(io.BytesIO(data), preprocess_cfg()).astype(int)
    assert np.abs(decoded - digit).mean() < 3.0
    assert np.abs(decoded - digit).max() < 64


def test_gif_gives_its_first_frame(digits) -> None:
    first, second = (Image.fromarray(d).convert("P") for d in digits[0][:2])
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=[second])
    np.testing.assert_array_equal(decode(io.BytesIO(out.getvalue()), preprocess_cfg()), digits[0][0])


def test_one_bit_image_decodes_to_black_and_white(digits) -> None:
    data = encoded(digits[0][0] > 127, "PNG")
    np.testing.assert_array_equal(decode(io.BytesIO(data), preprocess_cfg()), np.where(digits[0][0] > 127, 255, 0))


def test_transparent_pixels_become_black_and_partial_alpha_scales_the_colour(digits) -> None:
    digit = digits[0][0]
    alpha = np.where(np.arange(28)[None, :] < 14, 0, 128).astype(np.uint8).repeat(28, axis=0)
    white = np.full_like(digit, 255)
    decoded = decode(io.BytesIO(encoded(np.dstack([white, white, white, alpha]), "PNG")), preprocess_cfg())
    assert (decoded[:, :14] == 0).all()  # fully transparent: black, the background of MNIST's light digits
    assert (decoded[:, 14:] == 128).all()  # half transparent white: half-bright


def test_palette_with_a_transparent_entry_composites_on_black(digits) -> None:
    image = Image.fromarray(digits[0][0]).convert("P")
    image.info["transparency"] = int(image.getpixel((0, 0)))  # the background's palette entry
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=image.info["transparency"])
    decoded = decode(io.BytesIO(out.getvalue()), preprocess_cfg())
    assert decoded[0, 0] == 0
    assert decoded.max() == digits[0][0].max()


def test_rgb_colour_gives_three_channels_and_grayscale_uses_luma(tmp_path: Path) -> None:
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 200
    data = encoded(red, "PNG")
    np.testing.assert_array_equal(decode(io.BytesIO(data), preprocess_cfg(color="rgb")), red)
    assert (decode(io.BytesIO(data), preprocess_cfg()) == round(200 * 299 / 1000)).all()  # ITU-R 601-2 luma


def test_rgb_folder_is_prepared_with_three_channels_per_pixel(tmp_path: Path, digits) -> None:
    write_digits(tmp_path / "images", digits, count=20)
    spec = prepare_folder(str(tmp_path / "images"), tmp_path / "prepared", preprocess_cfg(color="rgb"))
    x, _ = arrays(tmp_path / "prepared", "train")
    assert spec.channels == 3 and spec.array_shape == (28, 28, 3)
    assert x.shape[1] == 28 * 28 * 3
    channels = x.reshape(-1, 28, 28, 3)
    np.testing.assert_array_equal(channels[..., 0], channels[..., 2])  # grey digits: equal channels


def test_images_of_mixed_sizes_are_resized_to_image_size(tmp_path: Path, digits) -> None:
    images, labels = digits
    root = tmp_path / "images"
    for i, size in enumerate([(28, 28), (56, 56), (20, 30), (100, 40)] * 4):
        (root / str(labels[i] % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).resize(size).save(root / str(labels[i] % 2) / f"{i}.png")
    spec = prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(image_size=32, test_fraction=0.3))
    assert spec.image_shape == (32, 32)
    total = 0
    for split in SPLITS:
        x, _ = arrays(tmp_path / "prepared", split)
        assert x.shape[1] == 32 * 32
        total += len(x)
    assert total == 16


def test_large_image_shrinks_to_the_digit_it_was_made_from(digits) -> None:
    digit = digits[0][0]
    big = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.NEAREST))
    decoded = decode(io.BytesIO(encoded(big, "PNG")), preprocess_cfg()).astype(int)
    assert np.abs(decoded - digit).mean() < 12  # bilinear over 4x4 blocks: edges blur, the digit stays


def test_same_folder_gives_byte_identical_outputs(tmp_path: Path, digits) -> None:
    write_digits(tmp_path / "images", digits, count=30)
    for out in ("a", "b"):
        prepare_folder(str(tmp_path / "images"), tmp_path / out, preprocess_cfg(val_fraction=0.2))
    for name in sorted(os.listdir(tmp_path / "a")):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# Splits, manifest, duplicates.


def test_adding_images_moves_no_existing_image_to_another_split(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    prepare_folder(str(root), tmp_path / "before", preprocess_cfg(val_fraction=0.2))
    before = {row["path"]: row["split"] for row in manifest(tmp_path / "before")}
    write_digits(root, digits, count=90)
    prepare_folder(str(root), tmp_path / "after", preprocess_cfg(val_fraction=0.2))
    after = {row["path"]: row["split"] for row in manifest(tmp_path / "after")}
    assert len(after) > len(before)
    assert {path: after[path] for path in before} == before


def test_seed_changes_which_files_are_held_out() -> None:
    cfg = preprocess_cfg()
    names = [f"cat/{i}.png" for i in range(200)]
    first = [split_of(split_key(0, n), cfg) for n in names]
    other = [split_of(split_key(1, n), cfg) for n in names]
    assert first != other


def test_each_class_is_held_out_in_proportion() -> None:
    cfg = preprocess_cfg(test_fraction=0.2, val_fraction=0.1)
    for label in range(10):
        splits = [split_of(split_key(0, f"class{label}/img{i:04d}.png"), cfg) for i in range(400)]
        assert abs(splits.count("test") / 400 - 0.2) < 0.06, label
        assert abs(splits.count("val") / 400 - 0.1) < 0.05, label


def test_manifest_lists_every_file_with_class_split_row_and_content_hash(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    written = write_digits(root, digits, count=24)
    (root / "1" / "notes.txt").write_text("not an image")
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip", val_fraction=0.2))
    rows = manifest(tmp_path / "prepared")
    assert list(rows[0]) == ["path", "class", "split", "index", "sha256"]
    assert [r["path"] for r in rows] == sorted([*written, "1/notes.txt"])
    for row in rows:
        if row["path"] == "1/notes.txt":
            assert (row["class"], row["split"], row["index"], row["sha256"]) == ("1", "skipped", "", "")
            continue
        assert row["class"] == row["path"].split("/")[0]
        assert row["sha256"] == hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
    for split in SPLITS:
        indices = sorted(int(r["index"]) for r in rows if r["split"] == split)
        assert indices == list(range(len(arrays(tmp_path / "prepared", split)[1])))


def test_duplicates_across_splits_are_reported_with_their_count(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    cfg = preprocess_cfg()
    # Copies of one file under names that hash into the other split: two pairs, four images.
    source = sorted((root / "0").iterdir())
    copies = 0
    for original in source:
        original_split = split_of(split_key(cfg.seed, f"0/{original.name}"), cfg)
        for n in range(100):
            name = f"copy{n}-{original.name}"
            if split_of(split_key(cfg.seed, f"0/{name}"), cfg) != original_split:
                (root / "0" / name).write_bytes(original.read_bytes())
                copies += 1
                break
        if copies == 2:
            break
    prepare_folder(str(root), tmp_path / "prepared", cfg)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preprocess: warning")]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "preprocess: warning: 4 images appear in more than one split (exact duplicates by content): ")
    assert warnings[0].count(" = ") == 2


def test_no_duplicate_warning_without_duplicates(tmp_path: Path, digits, capsys) -> None:
    write_digits(tmp_path / "images", digits, count=30)
    prepare_folder(str(tmp_path / "images"), tmp_path / "prepared", preprocess_cfg())
    assert "preprocess: warning" not in capsys.readouterr().err


def test_class_without_a_training_image_is_an_error_naming_it(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=20, classes=2)
    cfg = preprocess_cfg()
    name = next(f"x{n}.png" for n in range(1000) if split_of(split_key(cfg.seed, f"lonely/x{n}.png"), cfg) == "test")
    (root / "lonely").mkdir()
    Image.fromarray(digits[0][0]).save(root / "lonely" / name)
    with pytest.raises(PipelineError, match=r"images/lonely: none of its 1 images falls in the training split"):
        prepare_folder(str(root), tmp_path / "prepared", cfg)


def test_images_in_nested_folders_belong_to_their_class(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=20, classes=2)
    (root / "1" / "deeper" / "still").mkdir(parents=True)
    Image.fromarray(digits[0][0]).save(root / "1" / "deeper" / "still" / "x.png")
    (root / "0" / ".DS_Store").write_bytes(b"\0\1")  # dot files are not data: passed over
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    rows = {r["path"]: r for r in manifest(tmp_path / "prepared")}
    assert rows["1/deeper/still/x.png"]["class"] == "1"
    assert not any(".DS_Store" in path for path in rows)


# ---------------------------------------------------------------------------------------------
# Bad data: with `fail` the first one is the error; with `skip` the rest goes through and one line lists it.


def _fifo(path: Path) -> None:
    os.mkfifo(path)


BAD_FILES = {
    "truncated PNG": ("0/bad.png", lambda d: truncated(encoded(d, "PNG")), "truncated image"),
    "truncated JPEG": ("0/bad.jpg", lambda d: truncated(encoded(d, "JPEG")), "truncated image"),
    "text file": ("0/notes.txt", lambda d: b"just some notes\n", "not an image"),
    "empty file": ("0/empty.png", lambda d: b"", "not an image"),
    "pixel bomb": ("0/bomb.png", lambda d: bomb_png(50_000, 50_000), "too many pixels"),
    "file outside a class folder": ("stray.png", lambda d: encoded(d, "PNG"), "not in a class folder"),
}


def _make_bad(root: Path, rel: str, make, digit: np.ndarray) -> None:
    (root / rel).write_bytes(make(digit))


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_fails_on_a_line_naming_it(tmp_path: Path, digits, case: str) -> None:
    rel, make, reason = BAD_FILES[case]
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    _make_bad(root, rel, make, digits[0][0])
    with pytest.raises(PipelineError) as raised:
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    assert str(raised.value).startswith(f"{root}/{rel}: {reason}")
    assert str(raised.value).endswith("or set preprocess.bad_images: skip to leave such files out")
    assert not (tmp_path / "prepared" / MANIFEST).exists()


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_skipped_and_listed_on_one_line(tmp_path: Path, digits, capsys, case: str) -> None:
    rel, make, reason = BAD_FILES[case]
    root = tmp_path / "images"
    written = write_digits(root, digits, count=30)
    _make_bad(root, rel, make, digits[0][0])
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preprocess: skipped")]
    assert lines == [f"preprocess: skipped 1 file in {root} (preprocess.bad_images: skip; listed in manifest.csv): "
                     f"{rel} ({reason})"]
    assert sum(len(arrays(tmp_path / "prepared", s)[1]) for s in SPLITS) == len(written)


def test_pixel_limit_is_read_from_the_header_before_decoding(tmp_path: Path, digits) -> None:
    big = np.zeros((100, 100), np.uint8)
    with pytest.raises(Exception) as raised:
        decode(io.BytesIO(encoded(big, "PNG")), preprocess_cfg(max_image_pixels=9999))
    assert str(raised.value) == "too many pixels"
    assert raised.value.detail == "100x100, over preprocess.max_image_pixels = 9,999"
    # A header claiming 2.5 billion pixels is refused at once: decoding would need 2.5 GB.
    with pytest.raises(Exception, match="too many pixels"):
        decode(io.BytesIO(bomb_png(50_000, 50_000)), preprocess_cfg())
    assert decode(io.BytesIO(encoded(big, "PNG")), preprocess_cfg(max_image_pixels=10_000)).shape == (28, 28)


def test_link_leaving_the_folder_fails_or_is_skipped(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    outside = tmp_path / "secret.png"
    Image.fromarray(digits[0][0]).save(outside)
    (root / "0" / "link.png").symlink_to(outside)
    with pytest.raises(PipelineError, match=rf"^{root}/0/link.png: link leaving the folder \(it points to "):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))
    assert "0/link.png (link leaving the folder)" in capsys.readouterr().err


def test_link_inside_the_folder_is_read(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    (root / "1" / "alias.png").symlink_to(next((root / "0").iterdir()))
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    assert any(r["path"] == "1/alias.png" and r["split"] != "skipped" for r in manifest(tmp_path / "prepared"))


def test_link_loop_fails_or_is_skipped(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    (root / "0" / "again").symlink_to(root / "0")
    with pytest.raises(PipelineError, match=rf"^{root}/0/again: link loop"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))
    assert "0/again (link loop)" in capsys.readouterr().err


def test_class_folder_linking_outside_the_folder_is_an_error(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    write_digits(tmp_path / "elsewhere", digits, count=30)
    (root / "9").symlink_to(tmp_path / "elsewhere" / "0")
    with pytest.raises(PipelineError, match=rf"^{root}/9: a link to .*, outside {root}: expected class folders"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))


def test_fifo_is_not_read_but_fails_or_is_skipped(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    _fifo(root / "0" / "pipe.png")
    with pytest.raises(PipelineError, match=rf"^{root}/0/pipe.png: not a regular file \(a FIFO\)"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))
    assert "0/pipe.png (not a regular file)" in capsys.readouterr().err


def test_file_name_that_is_not_utf8_fails_or_is_skipped(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    try:
        with open(os.path.join(os.fsencode(root / "0"), b"caf\xe9.png"), "wb") as f:
            f.write(encoded(digits[0][0], "PNG"))
    except OSError as e:
        skip_unless_ci(f"this file system refuses names that are not UTF-8 ({e})")
    with pytest.raises(PipelineError, match=rf"^{root}/0/caf\\xe9.png: name not UTF-8"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg())
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))
    assert "0/caf\\xe9.png (name not UTF-8)" in capsys.readouterr().err
    assert any(r["path"] == "0/caf\\xe9.png" for r in manifest(tmp_path / "prepared"))


def test_class_folder_name_that_is_not_utf8_is_an_error(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    try:
        os.rename(root / "2", os.path.join(os.fsencode(root), b"caf\xe9"))
    except OSError as e:
        skip_unless_ci(f"this file system refuses names that are not UTF-8 ({e})")
    with pytest.raises(PipelineError, match=rf"^{root}/caf\\xe9: folder name is not UTF-8"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))


def test_skip_summary_names_ten_files_and_counts_the_rest(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    for i in range(13):
        (root / "1" / f"note{i:02d}.txt").write_text("x")
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preprocess: skipped")]
    assert line.startswith(f"preprocess: skipped 13 files in {root} ")
    assert line.count("(not an image)") == 10
    assert line.endswith("1/note09.txt (not an image), and 3 more")


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_empty_class_folder_is_an_error(tmp_path: Path, digits, policy: str) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    (root / "empty").mkdir()
    with pytest.raises(PipelineError, match=rf"^{root}/empty: empty class folder: expected at least one image"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images=policy))


def test_class_left_empty_by_skipping_is_an_error(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=30)
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(truncated(encoded(digits[0][0], "PNG")))
    with pytest.raises(PipelineError, match=rf"^{root}/broken: no readable images left after skipping"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images="skip"))


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_single_class_is_an_error(tmp_path: Path, digits, policy: str) -> None:
    root = tmp_path / "images"
    write_digits(root, digits, count=10, classes=1)
    with pytest.raises(PipelineError, match=rf"^{root}: only one class folder \(0\): expected at least 2 classes"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(bad_images=policy))


def test_folder_without_class_folders_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(PipelineError, match="images: no class folders: expected one subfolder per class"):
        prepare_folder(str(tmp_path / "images"), tmp_path / "prepared", preprocess_cfg())


def test_missing_folder_is_an_error_naming_the_param(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"nope: folder not found: .*\(params.yaml: data.folder\)"):
        prepare_folder(str(tmp_path / "nope"), tmp_path / "prepared", preprocess_cfg())


def test_more_than_1000_classes_is_an_error(tmp_path: Path) -> None:
    for i in range(1001):
        (tmp_path / "images" / f"c{i:04d}").mkdir(parents=True)
    with pytest.raises(PipelineError, match="images: 1001 class folders: expected at most 1000"):
        prepare_folder(str(tmp_path / "images"), tmp_path / "prepared", preprocess_cfg())


# ---------------------------------------------------------------------------------------------
# The preprocess stage, as dvc.yaml runs it.


def _stage(tmp_path: Path, folder: str) -> subprocess.CompletedProcess[str]:
    project = stage_dir(tmp_path / "project", params={"data.dataset": "folder", "data.folder": folder})
    return subprocess.run([sys.executable, "-m", "stages.preprocess", folder, "data/prepared"],
                          cwd=project.path, env=project.env, capture_output=True, text=True, timeout=120)


def test_stage_prepares_a_folder_and_describes_it(tmp_path: Path, digits) -> None:
    write_digits(tmp_path / "project" / "images", digits, count=30)
    result = _stage(tmp_path, "images")
    assert result.returncode == 0, result.stderr
    prepared = tmp_path / "project" / "data" / "prepared"
    assert spec_path(prepared).is_file() and (prepared / MANIFEST).is_file()
    assert '"class_names": [\n    "0",\n    "1",\n    "2"\n  ]' in spec_path(prepared).read_text()


def _outside_link(root: Path, digit: np.ndarray) -> None:
    Image.fromarray(digit).save(root.parent / "secret.png")
    (root / "0" / "link.png").symlink_to(root.parent / "secret.png")


def _non_utf8_name(root: Path, digit: np.ndarray) -> None:
    try:
        Path(os.fsdecode(os.path.join(os.fsencode(root / "0"), b"caf\xe9.png"))).write_bytes(encoded(digit, "PNG"))
    except OSError as e:
        skip_unless_ci(f"this file system refuses names that are not UTF-8 ({e})")


def _one_class(root: Path, digit: np.ndarray) -> None:
    for name in ("1", "2"):
        shutil.rmtree(root / name)


STAGE_FAULTS = {
    "truncated image": (lambda root, d: (root / "0" / "bad.png").write_bytes(truncated(encoded(d, "PNG"))),
                        "error: images/0/bad.png: truncated image (image file is truncated): fix or remove it, or "
                        "set preprocess.bad_images: skip to leave such files out"),
    "truncated JPEG": (lambda root, d: (root / "2" / "photo.jpg").write_bytes(truncated(encoded(d, "JPEG"))),
                       "error: images/2/photo.jpg: truncated image (image file is truncated (19 bytes not "
                       "processed)): fix or remove it, or set preprocess.bad_images: skip to leave such files out"),
    "link leaving the folder": (_outside_link, "error: images/0/link.png: link leaving the folder (it points to "),
    "name not UTF-8": (_non_utf8_name, "error: images/0/caf\\xe9.png: name not UTF-8 (file names must be UTF-8 "
                       "text to be listed in the manifest): fix or remove it, or set preprocess.bad_images: skip to "
                       "leave such files out"),
    "file outside the class folders": (lambda root, d: (root / "README.txt").write_text("my digits"),
                                       "error: images/README.txt: not in a class folder (expected every image "
                                       "inside a subfolder named after its class): fix or remove it, or set "
                                       "preprocess.bad_images: skip to leave such files out"),
    "a single class": (_one_class, "error: images: only one class folder (0): expected at least 2 classes to tell "
                       "apart"),
    "not an image": (lambda root, d: (root / "1" / "notes.txt").write_text("notes"),
                     "error: images/1/notes.txt: not an image (expected PNG, JPEG, BMP, TIFF, GIF or WEBP): fix or "
                     "remove it, or set preprocess.bad_images: skip to leave such files out"),
    "pixel bomb": (lambda root, d: (root / "0" / "bomb.png").write_bytes(bomb_png(50_000, 50_000)),
                   "error: images/0/bomb.png: too many pixels (50000x50000, over preprocess.max_image_pixels = "
                   "40,000,000): fix or remove it, or set preprocess.bad_images: skip to leave such files out"),
    "empty class": (lambda root, d: (root / "7").mkdir(),
                    "error: images/7: empty class folder: expected at least one image (remove the folder to drop "
                    "the class)"),
}


@pytest.mark.parametrize("case", STAGE_FAULTS)
def test_stage_refuses_bad_folder_in_one_line(tmp_path: Path, digits, case: str) -> None:
    make, expected = STAGE_FAULTS[case]
    root = tmp_path / "project" / "images"
    write_digits(root, digits, count=30)
    make(root, digits[0][0])
    line = error_line(_stage(tmp_path, "images"))
    assert line.startswith(expected)


def test_stage_on_the_download_folder_says_to_set_data_folder(tmp_path: Path) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "mnist"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    line = error_line(_stage(tmp_path, "data/raw"))
    assert line == ("error: data/raw: holds the download stage's IDX files (mnist/), not images in class folders: "
                    "with data.dataset: folder, set data.folder to your images folder")


def test_stage_skips_bad_files_with_one_summary_line(tmp_path: Path, digits) -> None:
    root = tmp_path / "project" / "images"
    write_digits(root, digits, count=30)
    (root / "0" / "bad.png").write_bytes(truncated(encoded(digits[0][0], "PNG")))
    (root / "1" / "notes.txt").write_text("notes")
    project = stage_dir(tmp_path / "project", params={"data.dataset": "folder", "data.folder": "images",
                                                       "preprocess.bad_images": "skip"})
    result = subprocess.run([sys.executable, "-m", "stages.preprocess", "images", "data/prepared"],
                            cwd=project.path, env=project.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("preprocess: skipped")]
    assert skipped == ["preprocess: skipped 2 files in images (preprocess.bad_images: skip; listed in manifest.csv): "
                       "0/bad.png (truncated image), 1/notes.txt (not an image)"]


# ---------------------------------------------------------------------------------------------
# A folder that comes split already (preprocess.split: folders).


def write_split_digits(root: Path, digits: tuple[np.ndarray, np.ndarray],
                       splits: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Digits of the first classes as `<root>/<split>/<label>/<i>.png`, {split: (count, classes)}; no image is
    in two splits. Returns {relative path: pixels}."""
    images, labels = digits
    written: dict[str, np.ndarray] = {}
    used: set[int] = set()
    for split, (count, classes) in splits.items():
        chosen = [i for i in np.flatnonzero(labels < classes) if i not in used][:count]
        used.update(chosen)
        for i in chosen:
            rel = f"{split}/{labels[i]}/{i:03d}.png"
            (root / split / str(labels[i])).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(root / rel)
            written[rel] = images[i]
    return written


def test_split_folders_keep_every_file_in_its_folders_split(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    written = write_split_digits(root, digits, {"train": (30, 3), "val": (10, 3), "test": (12, 3)})
    cfg = preprocess_cfg(split="folders")
    spec = prepare_folder(str(root), tmp_path / "prepared", cfg)
    assert spec.class_names == ("0", "1", "2")
    rows = manifest(tmp_path / "prepared")
    assert sorted(row["path"] for row in rows) == sorted(written)
    assert all(row["split"] == row["path"].split("/")[0] and row["class"] == row["path"].split("/")[1] for row in rows)
    loaded = {split: arrays(tmp_path / "prepared", split) for split in SPLITS}
    assert {split: len(loaded[split][1]) for split in SPLITS} == {"train": 30, "val": 10, "test": 12}
    for row in rows:
        x, y = loaded[row["split"]]
        expected = scale_images(written[row["path"]][None], cfg.scale, cfg.offset)[0]
        np.testing.assert_array_equal(x[int(row["index"])], expected)
        assert spec.class_names[y[int(row["index"])]] == row["class"]


def test_split_folders_ignore_the_split_fractions(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_split_digits(root, digits, {"train": (30, 3), "test": (12, 3)})
    outputs = []
    for name, fractions in {"a": (0.2, 0.0), "b": (0.5, 0.3)}.items():
        cfg = preprocess_cfg(split="folders", test_fraction=fractions[0], val_fraction=fractions[1])
        prepare_folder(str(root), tmp_path / name, cfg)
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert outputs[0] == outputs[1]
    assert len(arrays(tmp_path / "a", "val")[1]) == 0  # no val/ folder: no validation images


def test_split_folders_may_lack_a_class_in_test(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_split_digits(root, digits, {"train": (30, 3), "test": (12, 2)})
    spec = prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(split="folders"))
    assert spec.class_names == ("0", "1", "2")
    assert set(arrays(tmp_path / "prepared", "test")[1].tolist()) == {0, 1}


SPLIT_FOLDER_FAULTS = {
    "no test folder": (lambda root: shutil.rmtree(root / "test"),
                       "error: images: no test/ folder: with preprocess.split: folders, expected train/, test/ and "
                       "optionally val/, each with one subfolder per class (or preprocess.split: hash for one folder "
                       "per class)"),
    "class folders at the top": (lambda root: (root / "7").mkdir(),
                                 "error: images/7: a folder beside the split folders: with preprocess.split: folders, "
                                 "expected only train/, test/ and optionally val/ at the top, each with one subfolder "
                                 "per class"),
    "a file beside the split folders": (lambda root: (root / "README.txt").write_text("my digits"),
                                        "error: images/README.txt: a file beside the split folders: with "
                                        "preprocess.split: folders, expected only train/, test/ and optionally val/ "
                                        "at the top, each with one subfolder per class"),
    "a test class train lacks": (lambda root: shutil.copytree(root / "test" / "0", root / "test" / "cat"),
                                 "error: images/test/cat: a class train/ does not have: expected the class folders of "
                                 "images/train (0, 1, 2), as a model learns only those"),
    "an empty test folder": (lambda root: [shutil.rmtree(p) for p in (root / "test").iterdir()],
                             "error: images/test: no test images: expected at least one image in a class folder there"),
}


@pytest.mark.parametrize("case", SPLIT_FOLDER_FAULTS)
def test_stage_refuses_a_bad_split_layout_in_one_line(tmp_path: Path, digits, case: str) -> None:
    make, expected = SPLIT_FOLDER_FAULTS[case]
    root = tmp_path / "project" / "images"
    write_split_digits(root, digits, {"train": (30, 3), "test": (12, 3)})
    make(root)
    project = stage_dir(tmp_path / "project", params={"data.dataset": "folder", "data.folder": "images",
                                                       "preprocess.split": "folders"})
    result = subprocess.run([sys.executable, "-m", "stages.preprocess", "images", "data/prepared"],
                            cwd=project.path, env=project.env, capture_output=True, text=True, timeout=120)
    assert error_line(result) == expected


def test_split_folders_skip_bad_files_with_their_class_in_the_manifest(tmp_path: Path, digits, capsys) -> None:
    root = tmp_path / "images"
    write_split_digits(root, digits, {"train": (30, 3), "test": (12, 3)})
    (root / "test" / "1" / "bad.png").write_bytes(truncated(encoded(digits[0][0], "PNG")))
    prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(split="folders", bad_images="skip"))
    skipped = [row for row in manifest(tmp_path / "prepared") if row["split"] == "skipped"]
    assert [(row["path"], row["class"]) for row in skipped] == [("test/1/bad.png", "1")]
    assert "test/1/bad.png (truncated image)" in capsys.readouterr().err


def test_split_folders_need_two_classes_in_train(tmp_path: Path, digits) -> None:
    root = tmp_path / "images"
    write_split_digits(root, digits, {"train": (10, 1), "test": (12, 1)})
    with pytest.raises(PipelineError, match=rf"^{root}/train: only one class folder \(0\): expected at least 2"):
        prepare_folder(str(root), tmp_path / "prepared", preprocess_cfg(split="folders"))


def test_camera_orientation_tag_is_applied(digits) -> None:
    digit = digits[0][0]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the file holds the digit turned the other way
    out = io.BytesIO()
    Image.fromarray(np.rot90(digit)).save(out, format="PNG", exif=exif)
    np.testing.assert_array_equal(decode(io.BytesIO(out.getvalue()), preprocess_cfg()), digit)


@pytest.mark.parametrize("kind", list(PICTURE_FORMATS))
def test_every_listed_format_is_read_alike_by_folders_and_by_mnist_predict(kind: str) -> None:
    """The one list of formats: a folder data set and mnist-predict's reader both take each, to the same pixels
    (losslessly saved, so both must give exactly the digit drawn)."""
    from mnist_pipeline.inference.imageprep import read_image
    from mnist_pipeline.sources.imagefolder import decode, pixel_limit

    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255  # a "1"
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format=kind, **({"lossless": True} if kind == "WEBP" else {}))
    if kind != "JPEG":  # JPEG is lossy: read, but not to the same bytes
        buffer.seek(0)
        with pixel_limit():
            np.testing.assert_array_equal(decode(buffer, preprocess_cfg()), digit)
        np.testing.assert_array_equal(read_image(io.BytesIO(buffer.getvalue()), kind), digit.astype(np.float64))
    else:
        buffer.seek(0)
        with pixel_limit():
            assert decode(buffer, preprocess_cfg()).shape == (28, 28)
        assert read_image(io.BytesIO(buffer.getvalue()), kind).shape == (28, 28)
