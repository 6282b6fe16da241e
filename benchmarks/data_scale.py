"""Each stage on MNIST's 60,000 training images and on ten times as many: time and peak memory.

    python benchmarks/data_scale.py [--epochs 5] [--doc docs/data-scale.md]     (or `make bench-scale`)

The 600,000-image set is ten copies of MNIST's training set, each shifted by a different (dx, dy) of
-2..2 pixels (the edge filled with background), written as the uncompressed IDX files the download
stage leaves in data/raw/mnist; both sets share MNIST's real 10,000 test images. For each size, in a
temporary project holding the project's code and params.yaml, the real stage commands run one after
the other as child processes: preprocess, train (default params: at 600,000 images the prepared
arrays, 1.9 GB, exceed train.memory_budget_mb and train streams them from disk), evaluate. Each
stage's wall time and peak RSS (wait4's rusage of the child) are printed side by side, with the time
ratio divided by ten (linear is 1.0) and the peak-RSS ratio. The test set is the same for both sizes,
so evaluate's ratios show only that it does not grow. Needs the local data mirror ($DATASET_MIRROR, or
../shared/datasets next to the project). A benchmark, not a test: it prints, it does not assert.
With --doc it also replaces the output block of that markdown file with this run's output.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from mnist_pipeline.sources.idx import IMAGES_MAGIC, LABELS_MAGIC  # noqa: E402

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# (dx, dy) of each copy in the ten-fold set: the original first, then one- and two-pixel shifts.
SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2), (1, 1))
STAGES = (
    ("preprocess", ["-m", "stages.preprocess", "data/raw", "data/prepared"]),
    ("train", ["-m", "stages.train", "data/prepared", "models", "metrics/train", "metrics/train.json"]),
    ("evaluate", ["-m", "stages.evaluate", "models/model.onnx", "data/prepared", "metrics"]),
)
TIME_LIMIT, RSS_LIMIT = 1.3, 1.5
DOC_START, DOC_END = "<!-- data-scale output: start -->", "<!-- data-scale output: end -->"


def find_mirror() -> Path:
    for candidate in (os.environ.get("DATASET_MIRROR"), str(PROJECT_ROOT.parent / "shared" / "datasets")):
        if candidate and all((Path(candidate) / "mnist" / f"{name}.gz").is_file() for name in FILES):
            return Path(candidate).resolve() / "mnist"
    sys.exit("error: no local data mirror: set DATASET_MIRROR to a folder holding mnist/<IDX file>.gz")


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The images moved dx pixels right and dy down; the uncovered edge is background (0)."""
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        images[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def write_raw(folder: Path, mirror: Path, copies: int) -> None:
    """data/raw/mnist of a project: the training set `copies` times (shifted), the real test set."""
    raw = {name: gzip.decompress((mirror / f"{name}.gz").read_bytes()) for name in FILES}
    folder.mkdir(parents=True)
    for name in FILES[2:]:
        (folder / name).write_bytes(raw[name])
    images = np.frombuffer(raw[FILES[0]], np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(raw[FILES[1]], np.uint8, offset=8)
    with open(folder / FILES[0], "wb") as f:
        f.write(np.array([IMAGES_MAGIC, len(images) * copies, 28, 28], ">u4").tobytes())
        for dx, dy in SHIFTS[:copies]:
            f.write(shifted(images, dx, dy).tobytes())
    with open(folder / FILES[1], "wb") as f:
        f.write(np.array([LABELS_MAGIC, len(labels) * copies], ">u4").tobytes())
        f.write(np.tile(labels, copies).tobytes())


def make_project(dest: Path, mirror: Path, copies: int, overrides: dict[str, object]) -> None:
    """The stages' code and params.yaml (with `overrides`) next to a data/raw of `copies` training sets."""
    dest.mkdir(parents=True)
    for name in ("stages", "mnist_pipeline"):
        shutil.copytree(PROJECT_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        params[section][field] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_raw(dest / "data" / "raw" / "mnist", mirror, copies)


def run_stage(name: str, args: list[str], cwd: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) of one stage's process; its last progress line is echoed."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(cwd), DVC_NO_ANALYTICS="1")
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        lines = out.read().decode(errors="replace").splitlines()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {name} failed in {cwd}:\n" + "\n".join(lines[-20:]))
    shown = [line for line in lines if line.startswith(("train:", "evaluate:", "epoch "))][-2:]
    for line in shown:
        print(f"    {line}", file=sys.stderr)
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024}


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="train.epochs for both sizes (default 5, the params')")
    parser.add_argument("--doc", type=Path, help="replace the output block of this markdown file with the output")
    args = parser.parse_args()
    mirror = find_mirror()
    output = [f"machine: {machine()}", f"load average at start: {load()}"]
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        for copies in (1, 10):
            project = Path(tmp) / f"x{copies}"
            make_project(project, mirror, copies, {"train.epochs": args.epochs})
            print(f"{60_000 * copies:,} training images:", file=sys.stderr)
            results[copies] = {}
            for name, stage_args in STAGES:
                results[copies][name] = run_stage(name, stage_args, project)
                got = results[copies][name]
                print(f"  {name}: {got['wall_s']:.1f} s, peak RSS {got['rss_mib']:.0f} MiB", file=sys.stderr)
            shutil.rmtree(project)  # 2.5 GB for the larger set: one project on disk at a time
    output.append(f"load average at end: {load()}")
    output.append(f"train.epochs = {args.epochs}, other params as in params.yaml (train.memory_budget_mb = "
                  f"{yaml.safe_load((PROJECT_ROOT / 'params.yaml').read_text())['train']['memory_budget_mb']})")
    header = (f"{'stage':<11} {'60k s':>7} {'600k s':>7} {'ratio/10':>8}   {'60k RSS MiB':>11} "
              f"{'600k RSS MiB':>12} {'ratio':>6}")
    output += ["", header, "-" * len(header)]
    for name, _ in STAGES:
        small, big = results[1][name], results[10][name]
        time_ratio = big["wall_s"] / small["wall_s"] / 10
        rss_ratio = big["rss_mib"] / small["rss_mib"]
        flags = ("" if time_ratio <= TIME_LIMIT else f"  time over {TIME_LIMIT}") + \
                ("" if rss_ratio <= RSS_LIMIT else f"  RSS over {RSS_LIMIT}")
        output.append(f"{name:<11} {small['wall_s']:>7.1f} {big['wall_s']:>7.1f} {time_ratio:>8.2f}   "
                      f"{small['rss_mib']:>11.0f} {big['rss_mib']:>12.0f} {rss_ratio:>6.2f}{flags}")
    output.append(f"(limits: time ratio/10 <= {TIME_LIMIT}, peak RSS ratio <= {RSS_LIMIT}; evaluate reads the same "
                  "10,000 test images at both sizes)")
    text = "\n".join(output)
    print(text)
    if args.doc is not None:
        doc = args.doc.read_text()
        start, end = doc.index(DOC_START) + len(DOC_START), doc.index(DOC_END)
        block = f"\n```\n$ python benchmarks/data_scale.py --epochs {args.epochs}\n{text}\n```\n"
        args.doc.write_text(doc[:start] + block + doc[end:])
        print(f"wrote the output into {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
