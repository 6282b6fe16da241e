"""A folder of the user's own images, one subfolder per class, made into the prepared splits.

The layout is the one most image tools share: `<root>/<class>/<image>`, class names from the sorted
subfolder names. Images may sit deeper inside their class folder (`<root>/cat/2023/a.png`): every file
under a class folder belongs to that class. Names starting with a dot (`.DS_Store`, `.git`) are not data
and are passed over without a word, as `ls` does.

Every file is assigned to train, val or test by a hash of (preprocess.seed, its path relative to the
root), so a split is stratified in expectation, reproducible, and adding images never moves an
existing one. Each split's images are ordered by the same hash: classes come mixed, as in MNIST's own
files, and predict-sample's first images are not all of one class. `<prepared>/manifest.csv` lists
where every file went.

A folder that comes split already (`preprocess.split: folders`) holds `train/`, `test/` and optionally
`val/`, each in the class layout above: every file stays in its folder's split (a published test set
stays the test set), and the classes are those of `train/`: a test class that training never sees is
refused.

Images are read with Pillow and brought to 8 bits per channel (16-bit values rounded to x / 257),
transparent pixels composited onto black (MNIST's digits are light ink on a dark ground, so a
transparent background is dark), converted to `preprocess.color`, stretched to `preprocess.image_size`
square with bilinear resampling (skipped when the image already has that size, so MNIST's own PNGs give
exactly their pixels back), and scaled as the IDX data sets are: `x / scale - offset`.

Files that are not usable images (truncated, not an image, too many pixels, links out of the folder,
names that are not UTF-8, ...) stop the stage at the first (`preprocess.bad_images: fail`) or are left
out and listed in one summary line (`skip`). Problems with the folder itself (no classes, one class, an
empty class) always stop it. Exact duplicates across splits are reported, not removed: which copy to
keep is the user's call, and removing one would make a file's split depend on other files.

Two passes keep memory at one chunk whatever the folder's size: the first reads, hashes and decodes
every file once into an unnamed temporary uint8 file beside the outputs (a quarter of the float32
output's size; the system removes it however the process ends); the second, knowing how many images
each split really holds once bad files are left out, scales them chunk by chunk into `split_writer`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_pipeline.core import progress
from mnist_pipeline.core.config import PreprocessConfig
from mnist_pipeline.core.datasets import DATASETS, TRAIN_IMAGES, raw_name
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, atomic_open, file_kind, open_regular
from mnist_pipeline.prepared import MAX_CLASSES, SPLITS, PreparedSpec, split_paths, split_writer
from mnist_pipeline.sources.formats import FORMAT_NAMES, FORMATS, is_hidden
from mnist_pipeline.sources.splits import chunk_rows, pixel_range, scale_images

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "class", "split", "index", "sha256")
SKIPPED = "skipped"
# Files named in the skip summary and duplicate groups in the duplicates warning before "and N more".
SHOWN = 10
SHOWN_DUPLICATES = 5
# Folders below a class folder that are searched for images (subfolders of a class belong to it).
MAX_DEPTH = 32
HASH_BLOCK = 1 << 20
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


class BadImage(Exception):
    """A file that is not a usable image: `reason` for the summary, `detail` for the fail line."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, slots=True)
class Entry:
    """One file under a class folder: its path relative to the root ('/'-separated) and its class."""

    rel: str
    path: str
    label: int
    key: float  # the hash in [0, 1) that orders it within its split (and with `split: hash` picks the split)
    split: str


@dataclass
class BadFiles:
    """The files left out, or with `fail`, the first one raised as the stage's error."""

    root: str
    fail: bool
    found: list[tuple[str, str]] = field(default_factory=list)  # (rel, reason)

    def add(self, rel: str, problem: BadImage) -> None:
        if self.fail:
            detail = f" ({problem.detail})" if problem.detail else ""
            raise PipelineError(f"{shown_path(self.root, rel)}: {problem.reason}{detail}: fix or remove it, "
                                "or set preprocess.bad_images: skip to leave such files out")
        self.found.append((rel, problem.reason))

    def summary(self) -> str | None:
        if not self.found:
            return None
        listed = first_few([f"{rel} ({reason})" for rel, reason in sorted(self.found)], SHOWN)
        count = len(self.found)
        return (f"preprocess: skipped {count} file{'s' * (count != 1)} in {self.root} (preprocess.bad_images: "
                f"skip; listed in {MANIFEST}): {listed}")


def first_few(texts: list[str], shown: int, unit: str = "") -> str:
    """The first `shown` texts, comma-separated, then `, and N more<unit>`: one line however many there are."""
    more = f", and {len(texts) - shown} more{unit}" if len(texts) > shown else ""
    return ", ".join(texts[:shown]) + more


def shown_path(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if rel else root


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by Python as surrogates) shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_key(seed: int, rel: str) -> float:
    """A file's place in [0, 1), from the seed and its relative path only: other files never move it."""
    digest = hashlib.sha256(f"{seed}\0{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key: float, cfg: PreprocessConfig) -> str:
    """The split a hash key falls in, by preprocess.test_fraction and val_fraction (`split: hash`)."""
    if key < cfg.test_fraction:
        return "test"
    if key < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------------------------------------
# Pass 0: the folder's layout.


def _check_root(root: str, layout: str) -> None:
    """`root` is a folder, and not the download stage's IDX folder."""
    if not os.path.exists(root):
        raise PipelineError(f"{root}: folder not found: expected a folder of images with {layout} "
                            "(params.yaml: data.folder)")
    if not os.path.isdir(root):
        raise PipelineError(f"{root}: not a folder: expected a folder of images with {layout} "
                            "(params.yaml: data.folder)")
    for name in DATASETS:
        if os.path.isfile(os.path.join(root, name, raw_name(TRAIN_IMAGES))):
            raise PipelineError(f"{root}: holds the download stage's IDX files ({name}/), not images in class "
                                "folders: with data.dataset: folder, set data.folder to your images folder")


def _class_folders(root: str, top: str, bad: BadFiles) -> list[str]:
    """The sorted class folder names under `root/top` ('' for the root itself); a file beside them is a bad
    file, a folder problem an error. How many classes are enough is the caller's rule."""
    where = os.path.join(root, top) if top else root
    real_root = os.path.realpath(root)
    classes = []
    for entry in sorted(os.scandir(where), key=lambda e: e.name):
        if is_hidden(entry.name):
            continue
        name = f"{top}/{printable(entry.name)}" if top else printable(entry.name)
        if not entry.is_dir():
            bad.add(name, BadImage("not in a class folder", "expected every image inside a subfolder named "
                                   "after its class"))
            continue
        path = shown_path(root, name)
        if not is_utf8(entry.name):
            raise PipelineError(f"{path}: folder name is not UTF-8: class names come from folder names and "
                                "appear in metrics and pictures; rename the folder")
        if entry.is_symlink() and not _inside(os.path.realpath(entry.path), real_root):
            raise PipelineError(f"{path}: a link to {os.path.realpath(entry.path)}, outside {root}: expected "
                                f"class folders inside {root} (DVC tracks only what is inside)")
        classes.append(entry.name)
    return classes


def _enough_classes(where: str, classes: list[str]) -> None:
    if not classes:
        raise PipelineError(f"{where}: no class folders: expected one subfolder per class, each holding that "
                            "class's images")
    if len(classes) == 1:
        raise PipelineError(f"{where}: only one class folder ({classes[0]}): expected at least 2 classes to "
                            "tell apart")
    if len(classes) > MAX_CLASSES:
        raise PipelineError(f"{where}: {len(classes)} class folders: expected at most {MAX_CLASSES}")


def _split_folders(root: str) -> list[str]:
    """With `split: folders`, the split folders at the top of `root`: train/ and test/, val/ if there."""
    found = {entry.name: entry for entry in os.scandir(root) if not is_hidden(entry.name)}
    for name in sorted(found):
        if name not in SPLITS or not found[name].is_dir():
            kind = "folder" if found[name].is_dir() else "file"
            raise PipelineError(f"{shown_path(root, printable(name))}: a {kind} beside the split folders: with "
                                "preprocess.split: folders, expected only train/, test/ and optionally val/ at the "
                                "top, each with one subfolder per class")
    for name in ("train", "test"):
        if name not in found:
            raise PipelineError(f"{root}: no {name}/ folder: with preprocess.split: folders, expected train/, test/ "
                                "and optionally val/, each with one subfolder per class (or preprocess.split: hash "
                                "for one folder per class)")
    return [split for split in SPLITS if split in found]


def _files(folder: str, rel: str, real_root: str, ancestors: frozenset[str], bad: BadFiles,
           root: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(rel, path) of every file under `folder`, in name order, following links that stay inside the root.

    At most MAX_DEPTH folders below the class folder: deeper nesting is a bad file (one line, or skipped),
    not a RecursionError, and the work per file stays bounded."""
    if depth > MAX_DEPTH:
        bad.add(rel, BadImage("folder nested too deep", f"over {MAX_DEPTH} folders below its class folder: "
                              "expected images at most that deep"))
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_hidden(entry.name):
            continue
        here = f"{rel}/{printable(entry.name)}"
        if not is_utf8(entry.name):
            bad.add(here, BadImage("name not UTF-8", "file names must be UTF-8 text to be listed in the manifest"))
            continue
        if entry.is_symlink() and not _inside(real := os.path.realpath(entry.path), real_root):
            bad.add(here, BadImage("link leaving the folder", f"it points to {real}, outside {root}"))
            continue
        if entry.is_dir():
            if (real := os.path.realpath(entry.path)) in ancestors:
                bad.add(here, BadImage("link loop", "a link to a folder that contains it"))
                continue
            yield from _files(entry.path, here, real_root, ancestors | {real}, bad, root, depth + 1)
        elif entry.is_file():
            yield here, entry.path
        else:
            try:
                kind = file_kind(os.stat(entry.path).st_mode)
            except OSError:
                kind = "a link to nothing"
            bad.add(here, BadImage("not a regular file", kind))


def _class_files(root: str, top: str, name: str, label: int, cfg: PreprocessConfig, bad: BadFiles,
                 split: str | None) -> list[Entry]:
    """Every candidate file under one class folder, in `split`, or (None) in the split its hash picks."""
    rel_folder = f"{top}/{name}" if top else name
    folder = os.path.join(root, rel_folder)
    bad_before = len(bad.found)
    found = []
    for rel, path in _files(folder, printable(rel_folder), os.path.realpath(root),
                            frozenset({os.path.realpath(folder)}), bad, root):
        key = split_key(cfg.seed, rel)
        found.append(Entry(rel, path, label, key, split or split_of(key, cfg)))
    if not found and len(bad.found) == bad_before:
        raise PipelineError(f"{shown_path(root, printable(rel_folder))}: empty class folder: expected at least one "
                            "image (remove the folder to drop the class)")
    return found


def scan(root: str, cfg: PreprocessConfig, bad: BadFiles) -> tuple[list[str], list[Entry]]:
    """Class names and every candidate file, each with its split and order key; nothing is decoded yet."""
    if cfg.split == "hash":
        _check_root(root, "one subfolder per class")
        classes = _class_folders(root, "", bad)
        _enough_classes(root, classes)
        entries = [entry for label, name in enumerate(classes)
                   for entry in _class_files(root, "", name, label, cfg, bad, None)]
        return classes, entries
    _check_root(root, "train/ and test/ folders (preprocess.split: folders)")
    splits = _split_folders(root)
    classes = _class_folders(root, "train", bad)
    _enough_classes(shown_path(root, "train"), classes)
    labels = {name: label for label, name in enumerate(classes)}
    entries = []
    for split in splits:
        names = classes if split == "train" else _class_folders(root, split, bad)
        for name in names:
            if name not in labels:
                known = first_few([printable(c) for c in classes], SHOWN)
                raise PipelineError(
                    f"{shown_path(root, f'{split}/{printable(name)}')}: a class train/ does not have: expected the "
                    f"class folders of {shown_path(root, 'train')} ({known}), as a model learns only those")
            entries.extend(_class_files(root, split, name, labels[name], cfg, bad, split))
    return classes, entries


def _class_of(rel: str, classes: list[str], cfg: PreprocessConfig) -> str:
    """The class of a file left out, for its manifest row: '' when it sits outside every class folder."""
    parts = rel.split("/")
    if cfg.split == "folders":
        parts = parts[1:]
    return parts[0] if len(parts) > 1 and parts[0] in classes else ""


def check_splits(root: str, classes: list[str], labels_splits: list[tuple[int, str]], cfg: PreprocessConfig,
                 after: str = "") -> None:
    """Every class needs a training image, and the test split at least one image."""
    counts = Counter(labels_splits)
    by_folders = cfg.split == "folders"
    for label, name in enumerate(classes):
        total = sum(counts[(label, s)] for s in SPLITS)
        where = shown_path(root, f"train/{name}" if by_folders else name)
        if total == 0:
            raise PipelineError(f"{where}: no readable images left{after}: expected at least one image per class")
        if counts[(label, "train")] == 0 and by_folders:
            raise PipelineError(f"{where}: no readable training images left{after}: expected at least one "
                                "training image per class")
        if counts[(label, "train")] == 0:
            raise PipelineError(
                f"{where}: none of its {total} images{after} falls in the training split "
                f"(preprocess.test_fraction = {cfg.test_fraction:g}, val_fraction = {cfg.val_fraction:g}): "
                "add images to this class or lower the fractions")
    if any(split == "test" for _, split in labels_splits):
        return
    if by_folders:
        raise PipelineError(f"{shown_path(root, 'test')}: no test images{after}: expected at least one image in a "
                            "class folder there")
    raise PipelineError(f"{root}: no image falls in the test split (preprocess.test_fraction = "
                        f"{cfg.test_fraction:g}): add images or raise the fraction")


# ---------------------------------------------------------------------------------------------
# Pass 1: read, hash and decode every file once.


def _sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := f.read(HASH_BLOCK):
        digest.update(block)
    f.seek(0)
    return digest.hexdigest()


def _eight_bit(image: Image.Image) -> np.ndarray:
    """The image as uint8 (H, W) grey or (H, W, 3) colour, 16-bit values rounded and alpha on black."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if image.mode == "F":
        raise BadImage("unsupported pixels", "32-bit floating-point pixels: expected 8- or 16-bit integer images")
    if image.mode.startswith("I"):
        # Signed or 32-bit integers (a TIFF's mode I): no fixed range maps them to 0-255. Clipping at 65535
        # would silently merge grey levels, and stretching each image to its own range would change its
        # contrast against the others: refused, as floating-point pixels are.
        raise BadImage("unsupported pixels", f"{'signed or 32-bit' if image.mode == 'I' else image.mode} integer "
                       "pixels: expected 8- or 16-bit unsigned integer images (save it as 16-bit)")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        image = image.convert("L")
    if image.mode in ALPHA_MODES:
        pair = np.asarray(image.convert("LA" if image.mode in ("LA", "La") else "RGBA"), dtype=np.uint16)
        colour, alpha = pair[..., :-1], pair[..., -1:]
        composited = ((colour * alpha + 127) // 255).astype(np.uint8)
        return composited[..., 0] if composited.shape[-1] == 1 else composited
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK and YCbCr JPEGs, LAB, HSV, RGBX
    return np.asarray(image, dtype=np.uint8)


def _fitted(pixels: np.ndarray, size: int, rgb: bool) -> np.ndarray:
    """uint8 (size, size) or (size, size, 3): the colour asked for, stretched square when not already."""
    mode = "RGB" if pixels.ndim == 3 else "L"
    if pixels.shape[:2] == (size, size) and (mode == "RGB") == rgb:
        return pixels  # already what was asked for: the pixels as they are
    image = Image.fromarray(pixels, mode)
    if rgb and mode == "L":
        image = image.convert("RGB")
    elif not rgb and mode == "RGB":
        image = image.convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode(f: BinaryIO, cfg: PreprocessConfig) -> np.ndarray:
    """One image file as uint8 pixels of the prepared size and colour; BadImage says why not."""
    try:
        image = Image.open(f, formats=FORMATS)
    except UnidentifiedImageError:
        raise BadImage("not an image", f"expected {FORMAT_NAMES}") from None
    except Image.DecompressionBombError as e:
        raise BadImage("too many pixels", f"{e}; preprocess.max_image_pixels = {cfg.max_image_pixels:,}") from None
    except Exception as e:  # a corrupt header: Pillow's parsers raise many types
        raise BadImage("unreadable image", f"{type(e).__name__}: {e}") from None
    with image:
        # Checked from the header, before a pixel is decoded: a small file can declare a huge image.
        if image.width * image.height > cfg.max_image_pixels:
            raise BadImage("too many pixels", f"{image.width}x{image.height}, over preprocess.max_image_pixels = "
                           f"{cfg.max_image_pixels:,}")
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # a camera's orientation tag, as viewers apply it
            pixels = _eight_bit(image)
        except BadImage:
            raise
        except Exception as e:  # truncated or corrupt data after a valid header
            text = str(e) or type(e).__name__
            reason = "truncated image" if "truncated" in text or isinstance(e, EOFError) else "unreadable image"
            raise BadImage(reason, text) from None
    return _fitted(pixels, cfg.image_size, cfg.color == "rgb")


@contextlib.contextmanager
def pixel_limit() -> Iterator[None]:
    """Pillow's fixed bomb limit off: `decode` checks preprocess.max_image_pixels from the header instead,
    right after the header is read and before any pixel is decoded, whether the limit is above or below
    Pillow's."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _read(entry: Entry, cfg: PreprocessConfig) -> tuple[str, np.ndarray]:
    try:
        with open_regular(entry.path) as f:
            return _sha256(f), decode(f, cfg)
    except NotRegularFile as e:  # swapped for a FIFO or a folder since the folder was listed
        raise BadImage("not a regular file", e.kind) from None
    except OSError as e:
        raise BadImage("unreadable file", (e.strerror or str(e)).lower()) from None


# ---------------------------------------------------------------------------------------------
# The whole stage's work for a folder.


def _duplicates_warnings(found: dict[str, list[tuple[str, str, str]]]) -> list[str]:
    """One line naming images whose exact bytes are in more than one split (test images seen in training),
    and one naming those filed under more than one class: the same picture taught as two answers."""
    lines = []
    groups = [files for files in found.values() if len({split for _, split, _ in files}) > 1]
    if groups:
        count = sum(len(files) for files in groups)
        shown = first_few([" = ".join(f"{split}/{rel}" for rel, split, _ in files) for files in groups],
                          SHOWN_DUPLICATES, " groups")
        lines.append(f"preprocess: warning: {count} images appear in more than one split (exact duplicates by "
                     f"content): {shown}")
    conflicts = [files for files in found.values() if len({label for _, _, label in files}) > 1]
    if conflicts:
        count = sum(len(files) for files in conflicts)
        shown = first_few([" = ".join(f"{rel} (class {label})" for rel, _, label in files) for files in conflicts],
                          SHOWN_DUPLICATES, " groups")
        lines.append(f"preprocess: warning: {count} images have the same bytes under different classes "
                     f"(conflicting labels: one picture, two answers): {shown}")
    return lines


def write_manifest(prepared_dir: str | os.PathLike[str], rows: list[tuple[str, str, str, str, str]]) -> Path:
    """`manifest.csv`: every file found, its class, split (or `skipped`), row in the split's arrays, sha256."""
    path = Path(prepared_dir) / MANIFEST
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(sorted(rows))
    return path


def _park(decoded: BinaryIO, pixels: np.ndarray, prepared: Path) -> None:
    """Append one decoded image to the temporary file (buffered: memory holds no stack of images, however
    large they are); a full disk names the folder, not just errno."""
    try:
        decoded.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    except OSError as e:
        raise PipelineError(f"{prepared}: cannot write the decoded images ({e.strerror or e})") from None


@dataclass
class Decoded:
    """What pass 1 learned: the files kept per split (in the temporary file's order), manifest rows,
    and which files share each content hash."""

    kept: dict[str, list[Entry]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    hashes: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # (rel, split, class)


def decode_all(by_split: dict[str, list[Entry]], classes: list[str], cfg: PreprocessConfig, bad: BadFiles,
               decoded: BinaryIO, prepared: Path) -> Decoded:
    """Pass 1: each file read once, hashed and decoded; its pixels appended to `decoded` in split order."""
    found = Decoded()
    total = sum(len(entries) for entries in by_split.values())
    with progress.bar(total, "preprocess: reading images", unit="img") as bar, pixel_limit():
        for split in SPLITS:
            for entry in by_split[split]:
                try:
                    sha, pixels = _read(entry, cfg)
                except BadImage as problem:
                    bad.add(entry.rel, problem)
                    found.rows.append((entry.rel, classes[entry.label], SKIPPED, "", ""))
                else:
                    found.rows.append((entry.rel, classes[entry.label], split, str(len(found.kept[split])), sha))
                    found.hashes.setdefault(sha, []).append((entry.rel, split, classes[entry.label]))
                    found.kept[split].append(entry)
                    _park(decoded, pixels, prepared)
                bar.update()
    listed = {row[0] for row in found.rows}
    found.rows.extend((rel, _class_of(rel, classes, cfg), SKIPPED, "", "") for rel, _ in bad.found
                      if rel not in listed)
    return found


def prepare_folder(root: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
    """Scan, split, decode and write a folder data set; returns what the prepared arrays hold."""
    root = str(root)
    bad = BadFiles(root, fail=cfg.bad_images == "fail")
    classes, entries = scan(root, cfg, bad)
    after = " after skipping unreadable files" if bad.found else ""
    check_splits(root, classes, [(e.label, e.split) for e in entries], cfg, after)
    spec = PreparedSpec(Path(os.path.realpath(root)).name or "folder", tuple(classes),
                        (cfg.image_size, cfg.image_size), 3 if cfg.color == "rgb" else 1, pixel_range(cfg))
    by_split = {split: sorted((e for e in entries if e.split == split), key=lambda e: (e.key, e.rel))
                for split in SPLITS}
    prepared = Path(prepared_dir)
    prepared.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=prepared, prefix=".tmp-decoded-") as decoded:
        found = decode_all(by_split, classes, cfg, bad, decoded, prepared)
        summary = bad.summary()
        if summary:
            progress.say(summary)
        after = " after skipping unreadable files" if bad.found else ""
        check_splits(root, classes, [(e.label, s) for s in SPLITS for e in found.kept[s]], cfg, after)
        for warning in _duplicates_warnings(found.hashes):
            progress.say(warning)
        # Pass 2: the pixels back, a chunk of CHUNK_BYTES of output at a time, scaled and streamed into
        # each split's arrays: 2 images at image_size 1024 in RGB, thousands at 28.
        decoded.seek(0)
        rows = chunk_rows(spec)
        for split in SPLITS:
            labels = np.array([e.label for e in found.kept[split]], dtype=np.int64)
            with split_writer(prepared, split, len(labels), spec) as writer:
                for start in range(0, len(labels), rows):
                    count = min(rows, len(labels) - start)
                    raw = np.frombuffer(decoded.read(count * spec.n_pixels), dtype=np.uint8)
                    writer.write(scale_images(raw.reshape(count, spec.n_pixels), cfg.scale, cfg.offset),
                                 labels[start : start + count])
            progress.say(f"preprocess: {split}: {len(labels)} images -> {split_paths(prepared, split)[0]}")
    write_manifest(prepared, found.rows)
    return spec


class FolderSource:
    """The user's images at `data.folder`, one subfolder per class (`data.dataset: folder`)."""

    writes_manifest: ClassVar[bool] = True

    def prepare(self, path: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
        return prepare_folder(path, prepared_dir, cfg)
