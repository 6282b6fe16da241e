"""Kaggle's digit CSV as a data source, and the one Source interface preprocess dispatches through.

The CSV files are written here from real MNIST test digits (read with the project's own IDX reader) in
Kaggle's train.csv layout, then read by the real preprocess stage as a process (each bad-row line is the
stage's own stderr), by the library, and once through the whole pipeline with `dvc repro`, `mnist-predict`
and `mnist-serve`.
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import PROJECT_ROOT, make_project, subprocess_env
from faultkit import error_line, last_error_line, stage_dir
from PIL import Image
from servekit import serving

from mnist_pipeline.core.config import DATASET_NAMES, load_config, with_overrides
from mnist_pipeline.core.datasets import DATASETS, TEST_IMAGES, TEST_LABELS, raw_name
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.prepared import SPLITS, load_spec, save_spec, split_paths
from mnist_pipeline.sources.digit_csv import MAX_LINE, prepare_csv, row_split
from mnist_pipeline.sources.idx import read_idx
from mnist_pipeline.sources.imagefolder import MANIFEST, prepare_folder
from mnist_pipeline.sources.registry import SOURCES, Source, prepare
from mnist_pipeline.sources.splits import open_raw, prepared_spec, scale_images, write_splits

HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
CSV_PARAMS = {"data.dataset": "digit_csv", "data.folder": "train.csv"}
FIX = "fix or remove the row, or set preprocess.bad_images: skip to leave such rows out"


@pytest.fixture(scope="module")
def digits(mirror_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 300 MNIST test digits (uint8 28x28) and their labels, by the project's IDX reader."""
    images = read_idx(mirror_root / "mnist" / TEST_IMAGES, "images")[:300]
    labels = read_idx(mirror_root / "mnist" / TEST_LABELS, "labels")[:300]
    return images, labels


def row(label: object, pixels: np.ndarray | list[object]) -> str:
    return f"{label}," + ",".join(str(int(p)) if isinstance(p, np.integer) else str(p)
                                  for p in np.asarray(pixels).reshape(-1).tolist())


def csv_text(digits: tuple[np.ndarray, np.ndarray], count: int, header: str = HEADER) -> str:
    images, labels = digits
    return header + "\n" + "".join(row(labels[i], images[i]) + "\n" for i in range(count))


def preprocess_cfg(**overrides: object):
    cfg = load_config(PROJECT_ROOT / "params.yaml")
    return with_overrides(cfg, {f"preprocess.{k}": v for k, v in overrides.items()}).preprocess


def run_stage(tmp_path: Path, text: str | bytes, **params: object) -> subprocess.CompletedProcess[str]:
    """The preprocess stage, as dvc.yaml runs it, on `text` as train.csv."""
    project = stage_dir(tmp_path / "project", params={**CSV_PARAMS, **{f"preprocess.{k}": v for k, v in
                                                                       params.items()}})
    path = project.path / "train.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return subprocess.run([sys.executable, "-m", "stages.preprocess", "--", "train.csv", "data/prepared"],
                          cwd=project.path, env=project.env, capture_output=True, text=True, timeout=120)


def arrays(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = split_paths(prepared, split)
    return np.load(x_path), np.load(y_path)


# ---------------------------------------------------------------------------------------------
# Good files


def test_csv_rows_become_the_splits_scaled_as_idx_images_in_file_order(tmp_path: Path, digits) -> None:
    text = csv_text(digits, 200)
    result = run_stage(tmp_path, text, val_fraction=0.1)
    assert result.returncode == 0, result.stderr
    prepared = tmp_path / "project" / "data" / "prepared"
    images, labels = digits
    cfg = preprocess_cfg(val_fraction=0.1)
    lines = text.encode().splitlines()[1:]
    for split in SPLITS:
        rows = [i for i, line in enumerate(lines) if row_split(cfg.seed, line, cfg) == split]
        x, y = arrays(prepared, split)
        assert len(rows) > 5, split  # 200 rows at 0.2 / 0.1 / 0.7
        assert np.array_equal(y, labels[rows])
        assert np.array_equal(x, scale_images(images[rows], cfg.scale, cfg.offset))
    spec = load_spec(prepared)
    assert spec.class_names == DATASETS["mnist"].class_names and spec.image_shape == (28, 28)
    assert f"preprocess: test: {len(arrays(prepared, 'test')[1])} images -> data/prepared/x_test.npy" in result.stderr


def test_crlf_line_ends_a_bom_and_blank_lines_read_as_the_plain_file(tmp_path: Path, digits) -> None:
    plain = csv_text(digits, 60)
    windows = "\ufeff" + plain.replace("\n", "\r\n") + "\r\n\r\n"
    for name, text in (("plain", plain), ("windows", windows)):
        result = run_stage(tmp_path / name, text)
        assert result.returncode == 0, result.stderr
    for split in SPLITS:
        a = arrays(tmp_path / "plain" / "project" / "data" / "prepared", split)
        b = arrays(tmp_path / "windows" / "project" / "data" / "prepared", split)
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True)), split


def test_a_rows_split_depends_on_its_text_only_so_added_rows_move_no_other(tmp_path: Path, digits) -> None:
    images, labels = digits
    rows = [row(labels[i], images[i]) for i in range(100)]
    grown = [row(labels[150], images[150]), *rows[:50], row(labels[151], images[151]), *rows[50:]]
    cfg = preprocess_cfg()
    before, after = (prepared_rows(tmp_path / name, lines, cfg) for name, lines in (("a", rows), ("b", grown)))
    added = {images[150].tobytes(), images[151].tobytes()}
    for split in SPLITS:
        assert [r for r in after[split] if r not in added] == before[split], split


def prepared_rows(folder: Path, rows: list[str], cfg) -> dict[str, list[bytes]]:
    """The digits (as uint8 bytes, scaling undone) each split received from `prepare_csv`, in order."""
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text(HEADER + "\n" + "".join(r + "\n" for r in rows))
    prepare_csv(str(folder / "train.csv"), folder / "prepared", cfg)
    found = {}
    for split in SPLITS:
        x = np.load(split_paths(folder / "prepared", split)[0])
        found[split] = [np.rint((r + cfg.offset) * cfg.scale).astype(np.uint8).tobytes() for r in x]
    return found


# ---------------------------------------------------------------------------------------------
# Bad rows: one line each, naming the file, the line and what was expected


def _row_fault(bad: Callable[[np.ndarray], str]) -> Callable[[tuple[np.ndarray, np.ndarray]], str]:
    """A CSV of 40 good digits with `bad(first digit)` as its line 4."""
    def make(digits: tuple[np.ndarray, np.ndarray]) -> str:
        lines = csv_text(digits, 40).split("\n")
        lines.insert(3, bad(digits[0][0]))
        return "\n".join(lines)
    return make


def _pixels_with(index: int, value: str) -> Callable[[np.ndarray], str]:
    def bad(pixels: np.ndarray) -> str:
        values: list[object] = [int(p) for p in pixels.reshape(-1)]
        values[index] = value
        return row(7, values)
    return bad


ROW_FAULTS = {
    "wrong column count": (_row_fault(lambda p: row(7, p.reshape(-1)[:783])),
                           "error: train.csv: line 4: 784 columns: expected 785 (label,pixel0,...,pixel783): " + FIX),
    "pixel out of range": (_row_fault(_pixels_with(300, "256")),
                           "error: train.csv: line 4: pixel300 = '256': expected an integer 0-255: " + FIX),
    "pixel not an integer": (_row_fault(_pixels_with(12, "0.5")),
                             "error: train.csv: line 4: pixel12 = '0.5': expected an integer 0-255: " + FIX),
    "negative pixel": (_row_fault(_pixels_with(0, "-1")),
                       "error: train.csv: line 4: pixel0 = '-1': expected an integer 0-255: " + FIX),
    "empty pixel": (_row_fault(_pixels_with(783, "")),
                    "error: train.csv: line 4: pixel783 = '': expected an integer 0-255: " + FIX),
    "label not an integer": (_row_fault(lambda p: row("seven", p)),
                             "error: train.csv: line 4: label 'seven': expected an integer 0-9: " + FIX),
    "label out of range": (_row_fault(lambda p: row(10, p)),
                           "error: train.csv: line 4: label '10': expected an integer 0-9: " + FIX),
    "line too long": (_row_fault(lambda p: "1" * (MAX_LINE + 10)),
                      "error: train.csv: line 4: longer than 65,536 bytes: expected 785 columns "
                      "(label,pixel0,...,pixel783): " + FIX),
}


@pytest.mark.parametrize("case", ROW_FAULTS)
def test_bad_row_stops_the_stage_with_one_line_naming_file_line_and_expectation(tmp_path: Path, digits,
                                                                              case: str) -> None:
    make, expected = ROW_FAULTS[case]
    assert error_line(run_stage(tmp_path, make(digits))) == expected
    assert not (tmp_path / "project" / "data" / "prepared" / "x_train.npy").exists()


def test_bad_rows_are_skipped_and_listed_on_one_line_with_bad_images_skip(tmp_path: Path, digits) -> None:
    lines = csv_text(digits, 50).split("\n")
    lines.insert(3, row("x", digits[0][0]))
    lines.insert(9, row(3, digits[0][0].reshape(-1)[:10]))
    result = run_stage(tmp_path, "\n".join(lines), bad_images="skip")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "preprocess: skipped 2 rows of train.csv (preprocess.bad_images: skip): line 4 (label 'x': expected an "
        "integer 0-9), line 10 (11 columns: expected 785 (label,pixel0,...,pixel783))")
    prepared = tmp_path / "project" / "data" / "prepared"
    assert sum(len(arrays(prepared, split)[1]) for split in SPLITS) == 50


def test_a_long_bad_field_is_cut_in_the_error_line(tmp_path: Path, digits) -> None:
    make = _row_fault(_pixels_with(5, "9" * 1000))
    line = error_line(run_stage(tmp_path, make(digits)))
    assert line == f"error: train.csv: line 4: pixel5 = '{'9' * 20}...': expected an integer 0-255: " + FIX


# ---------------------------------------------------------------------------------------------
# Bad files: always stop the stage, whatever preprocess.bad_images says


FILE_FAULTS = {
    "no header": (lambda d: csv_text(d, 10).split("\n", 1)[1],
                  "error: train.csv: line 1: a row of numbers where the header belongs: expected the header "
                  "label,pixel0,...,pixel783 first"),
    "Kaggle's test.csv": (lambda d: "\n".join(line.split(",", 1)[1] for line in csv_text(d, 10).splitlines()),
                          "error: train.csv: line 1: no label column (Kaggle's test.csv has none, so it can neither "
                          "train nor test a model): expected the header label,pixel0,...,pixel783, as train.csv has"),
    "odd header": (lambda d: csv_text(d, 10, HEADER.replace("pixel5,", "pixel_5,")),
                   "error: train.csv: line 1: column 7 of the header is 'pixel_5': expected 'pixel5' "
                   "(label,pixel0,...,pixel783)"),
    "short header": (lambda d: csv_text(d, 10, "label,pixel0,pixel1"),
                     "error: train.csv: line 1: a header of 3 columns: expected 785, label,pixel0,...,pixel783"),
    "empty file": (lambda d: "",
                   "error: train.csv: empty file: expected Kaggle's digit CSV: a header row "
                   "label,pixel0,...,pixel783, then one 28x28 image a row"),
    "header only": (lambda d: HEADER + "\n",
                    "error: train.csv: no image rows: expected at least one row after the header"),
    "no test row": (lambda d: csv_text(d, 1),
                    "error: train.csv: none of its 1 rows falls in the test split (preprocess.test_fraction = 0.2): "
                    "add rows or change the fractions"),
}


@pytest.mark.parametrize("policy", ["fail", "skip"])
@pytest.mark.parametrize("case", FILE_FAULTS)
def test_bad_file_stops_the_stage_under_either_policy(tmp_path: Path, digits, case: str, policy: str) -> None:
    make, expected = FILE_FAULTS[case]
    assert error_line(run_stage(tmp_path, make(digits), bad_images=policy)) == expected


def test_every_row_skipped_is_no_image_rows_after_skipping(tmp_path: Path, digits) -> None:
    text = HEADER + "\n" + row("x", digits[0][0]) + "\n"
    result = run_stage(tmp_path, text, bad_images="skip")
    assert last_error_line(result) == ("error: train.csv: no image rows after skipping 1 bad row: expected at least "
                                       "one row after the header")
    assert result.stderr.startswith("preprocess: skipped 1 row of train.csv (preprocess.bad_images: skip): line 2 ")


def test_missing_csv_and_a_folder_in_its_place_name_the_param(tmp_path: Path) -> None:
    project = stage_dir(tmp_path / "project", params={**CSV_PARAMS, "data.folder": "absent.csv"})
    (project.path / "folder.csv").mkdir()
    for name, expected in (("absent.csv", "error: absent.csv: file not found: expected Kaggle's digit CSV: "),
                           ("folder.csv", "error: folder.csv: a directory: expected Kaggle's digit CSV: ")):
        result = subprocess.run([sys.executable, "-m", "stages.preprocess", "--", name, "data/prepared"],
                                cwd=project.path, env=project.env, capture_output=True, text=True, timeout=120)
        line = error_line(result)
        assert line.startswith(expected) and line.endswith(" (params.yaml: data.folder)"), line


@pytest.mark.parametrize(("params", "expected"), [
    ({"image_size": 32}, "error: params.yaml: preprocess.image_size = 32, preprocess.color = grayscale: Kaggle's "
     "digit CSV is 28x28 grayscale: expected image_size 28 and color grayscale with data.dataset: digit_csv"),
    ({"split": "folders"}, "error: params.yaml: preprocess.split = folders: a CSV file has no split folders: "
     "expected hash with data.dataset: digit_csv (preprocess.test_fraction picks the test rows)"),
], ids=["image_size", "split"])
def test_params_the_csv_cannot_honour_are_refused(tmp_path: Path, digits, params: dict, expected: str) -> None:
    assert error_line(run_stage(tmp_path, csv_text(digits, 20), **params)) == expected


# ---------------------------------------------------------------------------------------------
# The Source interface: one registry, the schema's names, and the old sources unchanged through it


def test_every_dataset_name_of_the_schema_has_exactly_one_source_implementing_the_interface() -> None:
    assert tuple(SOURCES) == DATASET_NAMES
    assert all(isinstance(source, Source) for source in SOURCES.values())
    assert [type(SOURCES[name]).__name__ for name in ("mnist", "fashion_mnist", "folder", "digit_csv")] == [
        "IdxSource", "IdxSource", "FolderSource", "DigitCsvSource"]


def test_idx_source_through_the_registry_writes_what_the_idx_functions_write(tmp_path: Path,
                                                                           mirror_root: Path) -> None:
    raw = tmp_path / "raw" / "mnist"
    raw.mkdir(parents=True)
    for name in (TEST_IMAGES, TEST_LABELS):  # the test files stand in for both splits: small and real
        payload = gzip.decompress((mirror_root / "mnist" / name).read_bytes())
        for stored in (raw_name(name), raw_name(name).replace("t10k", "train")):
            (raw / stored).write_bytes(payload)
    cfg = preprocess_cfg(train_limit=600, test_limit=100, val_size=60)
    (tmp_path / "via").mkdir()
    (tmp_path / "via" / MANIFEST).write_text("stale")  # left by an earlier folder run
    spec = prepare("mnist", str(tmp_path / "raw"), tmp_path / "via", cfg)
    direct = prepared_spec(DATASETS["mnist"], cfg)
    write_splits(open_raw(tmp_path / "raw", DATASETS["mnist"]), cfg, tmp_path / "direct", direct)
    assert spec == direct
    for split in SPLITS:
        for via, ref in zip(split_paths(tmp_path / "via", split), split_paths(tmp_path / "direct", split),
                            strict=True):
            assert via.read_bytes() == ref.read_bytes(), via
    assert not (tmp_path / "via" / MANIFEST).exists()


def test_folder_source_through_the_registry_writes_what_prepare_folder_writes(tmp_path: Path, digits) -> None:
    images, labels = digits
    for i in range(60):
        (tmp_path / "images" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(tmp_path / "images" / str(labels[i]) / f"{i}.png")
    cfg = preprocess_cfg()
    via = prepare("folder", str(tmp_path / "images"), tmp_path / "via", cfg)
    direct = prepare_folder(str(tmp_path / "images"), tmp_path / "direct", cfg)
    assert via == direct
    for name in ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy", MANIFEST):
        assert (tmp_path / "via" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name


def test_csv_source_removes_a_stale_folder_manifest(tmp_path: Path, digits) -> None:
    (tmp_path / "train.csv").write_text(csv_text(digits, 30))
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / MANIFEST).write_text("stale")
    spec = prepare("digit_csv", str(tmp_path / "train.csv"), tmp_path / "prepared", preprocess_cfg())
    save_spec(tmp_path / "prepared", spec)
    assert load_spec(tmp_path / "prepared") == spec
    assert not (tmp_path / "prepared" / MANIFEST).exists()


def test_library_error_is_a_pipeline_error_naming_the_line(tmp_path: Path, digits) -> None:
    (tmp_path / "train.csv").write_text(csv_text(digits, 5) + row(3, [0] * 784).replace(",0", ",", 1) + "\n")
    with pytest.raises(PipelineError, match=r"train\.csv: line 7: pixel0 = '': expected an integer 0-255"):
        prepare_csv(str(tmp_path / "train.csv"), tmp_path / "prepared", preprocess_cfg())


# ---------------------------------------------------------------------------------------------
# The whole pipeline on a CSV, then mnist-predict and mnist-serve on its model


def console_script(name: str) -> str:
    found = shutil.which(name, path=subprocess_env()["PATH"])
    assert found, f"{name} is not installed: run `make setup` (pip install -e .)"
    return found


@pytest.mark.slow
def test_csv_runs_all_five_stages_then_mnist_predict_and_mnist_serve_use_its_model(
    tmp_path: Path, mirror_root: Path, digits,
) -> None:
    images, labels = read_idx(mirror_root / "mnist" / TEST_IMAGES, "images"), \
        read_idx(mirror_root / "mnist" / TEST_LABELS, "labels")
    project = make_project(tmp_path / "repo", mirror_root, {
        "data.dataset": "digit_csv", "data.folder": "data/train.csv", "train.epochs": 3})
    (project.path / "data").mkdir(exist_ok=True)
    (project.path / "data" / "train.csv").write_text(csv_text((images, labels), 1500))
    project.dvc("add", "data/train.csv")
    project.commit("digits as Kaggle's CSV")

    assert set(project.repro()) == {"download", "preprocess", "train", "evaluate", "predict-sample"}
    report = json.loads((project.path / "metrics" / "evaluate.json").read_text())
    test_rows = len(np.load(split_paths(project.path / "data" / "prepared", "test")[1]))
    assert report["test_images"] == test_rows > 200
    assert report["accuracy"] > 0.8, report  # 3 epochs on ~1,200 digits; chance is 0.1
    predictions = json.loads((project.path / "metrics" / "predictions.json").read_text())["predictions"]
    assert {p["label_name"] for p in predictions} <= set(DATASETS["mnist"].class_names)
    project.commit("repro")

    # A digit the CSV does not hold, as a user's PNG.
    Image.fromarray(images[5000]).save(project.path / "digit.png")
    result = subprocess.run([console_script("mnist-predict"), "--json", "digit.png"], cwd=project.path,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)["predictions"]
    assert record["file"] == "digit.png" and record["predicted_name"] == str(record["predicted"])
    assert record["predicted"] == int(labels[5000]), record

    with serving(project.path, log_dir=tmp_path) as served:
        url = urlsplit(served.url)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            connection.request("GET", "/api/health")
            health = json.loads(connection.getresponse().read())
        finally:
            connection.close()
    assert health["status"] == "ok" and health["dataset"] == "digit_csv", health
