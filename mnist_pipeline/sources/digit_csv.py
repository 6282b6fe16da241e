"""Kaggle's digit CSV (the "Digit Recognizer" competition's train.csv) made into the prepared splits.

The format: a header row `label,pixel0,...,pixel783`, then one image a row, its digit 0-9 and its 784
grayscale pixels 0-255, row by row of a 28x28 image (MNIST's own frame and values). Kaggle's test.csv
has no label column: it cannot train or test a model, and its header is refused in one line saying so.

The file has no test split of its own, so each row goes to train, val or test by a hash of
(preprocess.seed, the row's text), by `preprocess.test_fraction` and `val_fraction` as a folder's files
do: the same every run, stratified in expectation, an exact duplicate row always in the same split as its
twin, and adding or removing rows never moves another. Each split keeps the file's row order.

A row that is not an image (a wrong column count, a label that is not an integer 0-9, a pixel that is not
an integer 0-255, bytes that are not text, a line longer than any row can be) stops the stage at the first
(`preprocess.bad_images: fail`) or is left out and listed in one summary line (`skip`), the policy of the
folder source. Blank lines are passed over. A missing or wrong header, an empty file, or a split left
without rows always stops it.

The file is read once, a line at a time: each row's pixels are parked as bytes in one unnamed temporary
file per split beside the outputs (a quarter of the float32 output; the system removes it however the
process ends), then scaled chunk by chunk into `split_writer`. Memory holds one line and one chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from mnist_pipeline.core import progress
from mnist_pipeline.core.config import DIGIT_CSV, PreprocessConfig
from mnist_pipeline.core.datasets import DATASETS, MNIST_FRAME
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, open_regular
from mnist_pipeline.prepared import SPLITS, PreparedSpec, split_paths, split_writer
from mnist_pipeline.sources.imagefolder import first_few, split_of
from mnist_pipeline.sources.splits import chunk_rows, pixel_range, scale_images

N_PIXELS = MNIST_FRAME * MNIST_FRAME
HEADER = ("label", *(f"pixel{i}" for i in range(N_PIXELS)))
HEADER_TEXT = f"label,pixel0,...,pixel{N_PIXELS - 1}"
CLASS_NAMES = DATASETS["mnist"].class_names  # the ten digits
MAX_LABEL = len(CLASS_NAMES) - 1
# The longest line read as a row: a row of 785 fields of up to 3 digits is under 3.2 KB. A longer line (a
# file with no line breaks) is a bad row, read past in pieces, never held whole.
MAX_LINE = 64 << 10
# Bad rows named in the skip summary before "and N more".
SHOWN = 10
# What a field of a bad row shows at most: a 60 KB field must not make a 60 KB error line.
SHOWN_FIELD = 20
_SHORT_NUMBERS = re.compile(rb"[0-9]{1,3}(?:,[0-9]{1,3})*")
WHAT = f"Kaggle's digit CSV: a header row {HEADER_TEXT}, then one 28x28 image a row"


class BadRow(Exception):
    """A line that is not an image row; the message says what was expected."""


@dataclass
class BadRows:
    """The rows left out, or with `fail`, the first one raised as the stage's error."""

    path: str
    fail: bool
    found: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def add(self, line: int, problem: BadRow) -> None:
        if self.fail:
            raise PipelineError(f"{self.path}: line {line}: {problem}: fix or remove the row, or set "
                                "preprocess.bad_images: skip to leave such rows out")
        self.found.append((line, str(problem)))

    def summary(self) -> str | None:
        if not self.found:
            return None
        count = len(self.found)
        listed = first_few([f"line {line} ({reason})" for line, reason in self.found], SHOWN)
        return (f"preprocess: skipped {count} row{'s' * (count != 1)} of {self.path} (preprocess.bad_images: "
                f"skip): {listed}")


def shown(text: bytes) -> str:
    """A field as the error line quotes it: text, bytes that are not UTF-8 as \\xNN, cut to SHOWN_FIELD."""
    cut = text[:SHOWN_FIELD].decode("utf-8", "backslashreplace")
    return repr(cut + "..." if len(text) > SHOWN_FIELD else cut)


def lines(f: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its line break) of each line; None for a line longer than MAX_LINE,
    which is read past in pieces."""
    number = 0
    while line := f.readline(MAX_LINE + 1):
        number += 1
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (more := f.readline(MAX_LINE)) and not more.endswith(b"\n"):
                pass
            yield number, None
            continue
        yield number, line.rstrip(b"\r\n")


def check_header(path: str, line: bytes | None) -> None:
    """The first line names the label and the 784 pixel columns in order; otherwise one line says how not."""
    if line is None:
        raise PipelineError(f"{path}: line 1: longer than {MAX_LINE:,} bytes: expected the header {HEADER_TEXT}")
    names = tuple(name.strip().strip('"') for name in line.decode("utf-8", "replace").removeprefix("\ufeff")
                  .split(","))
    if names == HEADER:
        return
    if names[0].isdigit():
        raise PipelineError(f"{path}: line 1: a row of numbers where the header belongs: expected the header "
                            f"{HEADER_TEXT} first")
    if names[0] == "pixel0":
        raise PipelineError(f"{path}: line 1: no label column (Kaggle's test.csv has none, so it can neither train "
                            f"nor test a model): expected the header {HEADER_TEXT}, as train.csv has")
    if len(names) != len(HEADER):
        raise PipelineError(f"{path}: line 1: a header of {len(names)} columns: expected {len(HEADER)}, "
                            f"{HEADER_TEXT}")
    column = next(i for i, (name, want) in enumerate(zip(names, HEADER, strict=True)) if name != want)
    raise PipelineError(f"{path}: line 1: column {column + 1} of the header is {shown(names[column].encode())}: "
                        f"expected {HEADER[column]!r} ({HEADER_TEXT})")


def integer(field: bytes, high: int) -> int | None:
    """The field's value when it is a plain decimal integer 0..high (leading zeros allowed), else None;
    a field of thousands of digits is refused by its length, never converted."""
    digits = field.lstrip(b"0")
    if not field.isdigit() or len(digits) > len(str(high)):
        return None
    value = int(digits or b"0")
    return value if value <= high else None


def parse_row(line: bytes | None) -> tuple[int, bytes]:
    """A row's label and its 784 pixels as bytes; BadRow says what is wrong with the first bad field."""
    if line is None:
        raise BadRow(f"longer than {MAX_LINE:,} bytes: expected {len(HEADER)} columns ({HEADER_TEXT})")
    fields = line.split(b",")
    if len(fields) != len(HEADER):
        raise BadRow(f"{len(fields)} columns: expected {len(HEADER)} ({HEADER_TEXT})")
    label = integer(fields[0], MAX_LABEL)
    if label is None:
        raise BadRow(f"label {shown(fields[0])}: expected an integer 0-{MAX_LABEL}")
    if _SHORT_NUMBERS.fullmatch(line):  # the usual row: numbers of 1 to 3 digits, converted at once
        pixels = np.fromiter(map(int, fields[1:]), dtype=np.int16, count=N_PIXELS)
        if pixels.max() <= 255:
            return label, pixels.astype(np.uint8).tobytes()
    values = [integer(value, 255) for value in fields[1:]]
    if None in values:
        column = 1 + values.index(None)
        raise BadRow(f"{HEADER[column]} = {shown(fields[column])}: expected an integer 0-255")
    return label, bytes(values)  # type: ignore[arg-type]  # no None left


def row_split(seed: int, line: bytes, cfg: PreprocessConfig) -> str:
    """The split of a row, from the seed and its own text only: other rows never move it."""
    digest = hashlib.sha256(f"{seed}\0".encode() + line).digest()
    return split_of(int.from_bytes(digest[:8], "big") / 2.0**64, cfg)


def check_params(cfg: PreprocessConfig) -> None:
    """The CSV holds 28x28 grayscale digits in one file: the params that would resize, colour or split by
    folders do not apply, and a value that asks for them is refused rather than ignored."""
    if cfg.image_size != MNIST_FRAME or cfg.color != "grayscale":
        raise PipelineError(f"params.yaml: preprocess.image_size = {cfg.image_size}, preprocess.color = {cfg.color}: "
                            f"Kaggle's digit CSV is {MNIST_FRAME}x{MNIST_FRAME} grayscale: expected image_size "
                            f"{MNIST_FRAME} and color grayscale with data.dataset: {DIGIT_CSV}")
    if cfg.split != "hash":
        raise PipelineError(f"params.yaml: preprocess.split = {cfg.split}: a CSV file has no split folders: expected "
                            f"hash with data.dataset: {DIGIT_CSV} (preprocess.test_fraction picks the test rows)")


def open_csv(path: str) -> BinaryIO:
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found: expected {WHAT} (params.yaml: data.folder)") from None
    except NotRegularFile as e:
        raise PipelineError(f"{path}: {e.kind}: expected {WHAT} (params.yaml: data.folder)") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror or e})") from None


def park(rows: dict[str, BinaryIO], labels: dict[str, bytearray], f: BinaryIO, path: str,
         cfg: PreprocessConfig, bad: BadRows) -> None:
    """Pass 1: every row checked, its pixels appended to its split's temporary file, its label kept."""
    numbered = lines(f)
    first = next(numbered, None)
    if first is None:
        raise PipelineError(f"{path}: empty file: expected {WHAT}")
    check_header(path, first[1])
    for number, line in numbered:
        if line == b"":  # a blank line (a last line break too many): no row, as the csv module reads it
            continue
        try:
            label, pixels = parse_row(line)
        except BadRow as problem:
            bad.add(number, problem)
            continue
        split = row_split(cfg.seed, line or b"", cfg)
        rows[split].write(pixels)
        labels[split].append(label)


def check_counts(path: str, counts: dict[str, int], cfg: PreprocessConfig, skipped: int) -> None:
    after = f" after skipping {skipped} bad row{'s' * (skipped != 1)}" if skipped else ""
    if not any(counts.values()):
        raise PipelineError(f"{path}: no image rows{after}: expected at least one row after the header")
    for split, fraction in (("train", f"test_fraction = {cfg.test_fraction:g}, val_fraction = "
                             f"{cfg.val_fraction:g}"), ("test", f"test_fraction = {cfg.test_fraction:g}")):
        if not counts[split]:
            raise PipelineError(f"{path}: none of its {sum(counts.values())} rows{after} falls in the {split} split "
                                f"(preprocess.{fraction}): add rows or change the fractions")


def prepare_csv(path: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
    """Read, check, split and write Kaggle's digit CSV; returns what the prepared arrays hold."""
    check_params(cfg)
    spec = PreparedSpec(DIGIT_CSV, CLASS_NAMES, (MNIST_FRAME, MNIST_FRAME), 1, pixel_range(cfg))
    prepared = Path(prepared_dir)
    prepared.mkdir(parents=True, exist_ok=True)
    bad = BadRows(path, fail=cfg.bad_images == "fail")
    labels = {split: bytearray() for split in SPLITS}
    with open_csv(path) as f, tempfile.TemporaryFile(dir=prepared, prefix=".tmp-rows-") as train, \
            tempfile.TemporaryFile(dir=prepared, prefix=".tmp-rows-") as val, \
            tempfile.TemporaryFile(dir=prepared, prefix=".tmp-rows-") as test:
        rows: dict[str, BinaryIO] = {"train": train, "val": val, "test": test}
        try:
            park(rows, labels, f, path, cfg, bad)
        except OSError as e:  # a read error of the CSV, or a full disk under the temporary files
            raise PipelineError(f"{path}: cannot read into {prepared} ({e.strerror or e})") from None
        if summary := bad.summary():
            progress.say(summary)
        check_counts(path, {split: len(labels[split]) for split in SPLITS}, cfg, len(bad.found))
        chunk = chunk_rows(spec)
        for split in SPLITS:
            split_labels = np.frombuffer(bytes(labels[split]), dtype=np.uint8)
            rows[split].seek(0)
            with split_writer(prepared, split, len(split_labels), spec) as writer:
                for start in range(0, len(split_labels), chunk):
                    count = min(chunk, len(split_labels) - start)
                    raw = np.frombuffer(rows[split].read(count * N_PIXELS), dtype=np.uint8)
                    writer.write(scale_images(raw.reshape(count, N_PIXELS), cfg.scale, cfg.offset),
                                 split_labels[start : start + count])
            progress.say(f"preprocess: {split}: {len(split_labels)} images -> {split_paths(prepared, split)[0]}")
    return spec


class DigitCsvSource:
    """Kaggle's digit CSV at `data.folder` (`data.dataset: digit_csv`)."""

    writes_manifest: ClassVar[bool] = False

    def prepare(self, path: str, prepared_dir: str | os.PathLike[str], cfg: PreprocessConfig) -> PreparedSpec:
        return prepare_csv(path, prepared_dir, cfg)
