"""mnist-serve under load: 1,000 POST /api/predict requests, 16 at a time, over loopback.

    python benchmarks/serve_load.py                                   # trains a small MLP and CNN first
    python benchmarks/serve_load.py --model mlp=models/model.onnx    # or serve given models
    python benchmarks/serve_load.py --requests 1000 --concurrency 16
    python benchmarks/serve_load.py --baseline a164efb --out docs/serve_load.txt   # the same models, served
                                                                      # by that commit's mnist-serve too

Without --model it trains the two networks of params.yaml, the default MLP (the tutorial's
784-64-64-10) and the CNN (`model.type: cnn`), on the first TRAIN_IMAGES images of real MNIST for
EPOCHS epochs, with the pipeline's own training code: serving speed depends on the network, not on how
long it trained. With --baseline REV, each model is also served by the mnist-serve of commit REV (checked out
in a temporary git worktree, run with this venv) from the Keras file, right before this code's server, and
the ratios after/before are printed: requests per second and the server's peak RSS. Each model is served
by the real `mnist-serve` command on a free loopback port;
the requests are real MNIST test digits as the page's canvas sends them (280x280 PNG, dark ink on
white), each client thread on its own keep-alive connection. Prints throughput, p50 and p99 latency,
the error count (0 expected) and how many answers name the digit's true class. Needs the local
data mirror ($DATASET_MIRROR, or ../shared/datasets next to the project). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 10_000
EPOCHS = 2  # enough for the CNN's batch-norm statistics to settle
N_PAYLOADS = 32
WARMUP = 32
READY = re.compile(r"^mnist-serve: (http://\S+/) ")


def find_mirror() -> Path:
    for candidate in (os.environ.get("DATASET_MIRROR"), str(PROJECT_ROOT.parent / "shared" / "datasets")):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    sys.exit("error: no local data mirror: set DATASET_MIRROR to a folder holding mnist/train-images-idx3-ubyte.gz")


def train_models(mirror: Path, folder: Path) -> dict[str, Path]:
    """The default MLP and CNN of params.yaml, trained briefly on real MNIST and exported as the train stage exports."""
    from mnist_pipeline.core.config import with_overrides
    from mnist_pipeline.core.datasets import DATASETS, TRAIN_LABELS
    from mnist_pipeline.core.datasets import TRAIN_IMAGES as IMAGES_FILE
    from mnist_pipeline.prepared import idx_spec
    from mnist_pipeline.sources.idx import read_idx
    from mnist_pipeline.sources.splits import scale_images
    from mnist_pipeline.train.models import save_model_deterministic
    from mnist_pipeline.train.onnx_export import save_onnx, to_onnx
    from mnist_pipeline.train.registry import load_config
    from mnist_pipeline.train.training import train_model

    base = load_config(PROJECT_ROOT / "params.yaml")
    spec = idx_spec(DATASETS["mnist"])
    x = read_idx(mirror / "mnist" / IMAGES_FILE, "images")[:TRAIN_IMAGES]
    y = read_idx(mirror / "mnist" / TRAIN_LABELS, "labels")[:TRAIN_IMAGES]
    x = scale_images(x, base.preprocess.scale, base.preprocess.offset)
    empty_x, empty_y = x[:0], y[:0]
    paths = {}
    for name, overrides in (("mlp", {"model.type": "mlp"}), ("cnn", {"model.type": "cnn"})):
        cfg = with_overrides(base, {**overrides, "train.epochs": EPOCHS}, "benchmark")
        started = time.perf_counter()
        model, _ = train_model(cfg.model, cfg.train, spec, x, y, empty_x, empty_y, None)
        paths[name] = folder / f"{name}.onnx"
        save_onnx(to_onnx(model), paths[name])
        save_model_deterministic(model, paths[name].with_suffix(".keras"))  # what a --baseline server reads
        print(f"# trained {name}: {TRAIN_IMAGES} images, {EPOCHS} epochs, {time.perf_counter() - started:.1f} s",
              flush=True)
    return paths


def payloads(mirror: Path) -> list[tuple[bytes, int]]:
    """Real MNIST test digits drawn as the page's canvas sends them: 280x280 PNG, dark ink on white."""
    from mnist_pipeline.core.datasets import TEST_IMAGES, TEST_LABELS
    from mnist_pipeline.sources.idx import read_idx

    images = read_idx(mirror / "mnist" / TEST_IMAGES, "images")[:N_PAYLOADS]
    labels = read_idx(mirror / "mnist" / TEST_LABELS, "labels")[:N_PAYLOADS]
    out = []
    for image, label in zip(images, labels, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(255 - image).resize((280, 280), Image.Resampling.BICUBIC).convert("RGBA").save(buffer, "PNG")
        out.append((buffer.getvalue(), int(label)))
    return out


def start_server(model: Path, log: Path, code: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """This project's mnist-serve on `model`, or with `code` the mnist-serve of that checkout (same venv)."""
    if code is None:
        serve = shutil.which("mnist-serve", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        if serve is None:
            sys.exit("error: mnist-serve is not installed: run `make setup`")
        command, env, cwd = [serve], None, None
    else:  # run from the checkout: `python -m` puts the working directory first on sys.path
        command = [sys.executable, "-m", "mnist_pipeline.inference.serve"]
        env, cwd = {**os.environ, "PYTHONPATH": str(code)}, code
    with open(log, "w") as err:
        process = subprocess.Popen([*command, "--model", str(model), "--port", "0", "--params",
                                    str(PROJECT_ROOT / "params.yaml")], stdout=subprocess.PIPE, stderr=err, text=True,
                                   env=env, cwd=cwd)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if selector.select(timeout=deadline - time.monotonic()):
            line = process.stdout.readline()
            if not line:
                break
            if match := READY.match(line):
                return process, match.group(1)
    process.kill()
    sys.exit(f"error: mnist-serve did not start:\n{log.read_text()}")


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory so far (Linux VmHWM), None elsewhere."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


@dataclass
class Outcome:
    latencies: list[float]
    errors: list[str]
    correct: int
    wall: float


def load(url: str, bodies: list[tuple[bytes, int]], requests: int, concurrency: int) -> Outcome:
    """`requests` POSTs from `concurrency` threads, each on its own keep-alive connection."""
    address = urlsplit(url)
    lock = threading.Lock()
    next_index = iter(range(requests))
    latencies: list[float] = []
    errors: list[str] = []
    correct = 0

    def worker() -> None:
        nonlocal correct
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            body, label = bodies[i % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/api/predict", body=body, headers={"Content-Type": "image/png"})
                response = connection.getresponse()
                reply = response.read()
                elapsed = time.perf_counter() - started
                ok = response.status == 200
                answer = json.loads(reply) if ok else {}
                right = ok and answer.get("predicted", answer.get("class")) == label  # "class": before the rename
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
                elapsed, ok, right, reply = time.perf_counter() - started, False, False, str(e).encode()
            with lock:
                latencies.append(elapsed)
                correct += right
                if not ok:
                    errors.append(reply[:200].decode(errors="replace"))
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Outcome(latencies, errors, correct, time.perf_counter() - started)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def describe_machine() -> str:
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    import fastapi
    import uvicorn

    return (f"# {os.cpu_count()} CPU cores ({cpu or platform.processor()}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}")


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a model to serve (repeatable); default: train the MLP and the CNN of params.yaml")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline", metavar="REV", help="also serve each model with this commit's mnist-serve "
                        "(from NAME.keras beside NAME.onnx) and print the ratios")
    parser.add_argument("--out", type=Path, help="also write what is printed to this file")
    args = parser.parse_args()
    for given in args.model:
        if "=" not in given or not Path(given.split("=", 1)[1]).is_file():
            parser.error(f"--model {given}: expected NAME=PATH of an existing model file")
    return args


@dataclass
class Served:
    requests_per_s: float
    peak_rss_mib: float | None


def measure(name: str, model: Path, folder: Path, args: argparse.Namespace, bodies: list[tuple[bytes, int]],
            say: Callable[[str], None], code: Path | None = None) -> Served:
    process, url = start_server(model, folder / f"{name}.log", code)
    try:
        load(url, bodies, WARMUP, min(args.concurrency, WARMUP))
        cpu_before, client_before = cpu_seconds(process.pid), time.process_time()
        outcome = load(url, bodies, args.requests, args.concurrency)
        cpu_after, client_cpu = cpu_seconds(process.pid), time.process_time() - client_before
        rss = peak_rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    ms = [t * 1000 for t in outcome.latencies]
    rate = args.requests / outcome.wall
    say(f"{name}: {args.requests} requests, {args.concurrency} at a time: {outcome.wall:.2f} s, "
        f"{rate:.1f} requests/s, latency p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
        f"errors {len(outcome.errors)}, true class named {outcome.correct}/{args.requests}"
        + (f", server peak RSS {rss:.0f} MiB" if rss is not None else ""))
    if cpu_before is not None and cpu_after is not None:
        say(f"  CPU per request: server {1000 * (cpu_after - cpu_before) / args.requests:.1f} ms, "
            f"this client {1000 * client_cpu / args.requests:.1f} ms")
    for error in sorted(set(outcome.errors))[:5]:
        say(f"  error: {error}")
    return Served(rate, rss)


def main() -> None:
    args = parse_args()
    mirror = find_mirror()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# serve_load benchmark, {datetime.now(UTC):%Y-%m-%d} UTC: python benchmarks/serve_load.py"
        + (f" --baseline {args.baseline}" if args.baseline else ""))
    say(describe_machine())
    say(f"# {load_average()} at start")
    bodies = payloads(mirror)
    say(f"# requests: the first {len(bodies)} MNIST test digits as 280x280 RGBA PNGs (dark on white, as the "
        f"page's canvas sends them), {statistics.mean(len(b) for b, _ in bodies):.0f} bytes on average; "
        f"{WARMUP} warm-up requests first, not counted")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        models = (dict(given.split("=", 1) for given in args.model) if args.model
                  else train_models(mirror, folder))
        baseline = None
        if args.baseline:
            baseline = folder / "baseline"
            subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", "-q", str(baseline),
                            args.baseline], check=True)
        try:
            for name, path in models.items():
                if baseline is not None:
                    before = measure(f"{name}, {args.baseline} (TensorFlow, .keras)", Path(path).with_suffix(".keras"),
                                     folder, args, bodies, say, baseline)
                after = measure(f"{name}, this code", Path(path), folder, args, bodies, say)
                if baseline is not None:
                    rss = (f", peak RSS {after.peak_rss_mib / before.peak_rss_mib:.2f}"
                           if after.peak_rss_mib and before.peak_rss_mib else "")
                    speed = after.requests_per_s / before.requests_per_s
                    say(f"  ratio this code / {args.baseline}: requests/s {speed:.2f}{rss}")
        finally:
            if baseline is not None:
                subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(baseline)],
                               check=False)
    say(f"# {load_average()} at end")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
