"""Train-stage speed against the tutorial's own code, and the pipeline's cost end to end.

    python benchmarks/train_speed.py [--runs 5] [--skip-pipeline]     (or `make bench`)

In one run on the same data it alternates the tutorial's script (benchmarks/tutorial.py) and our
`train_model` at the default params, each in a fresh subprocess (a fresh TensorFlow), seeds 0..runs-1
for both; prints median fit times (wall and CPU), their ratio, and test accuracy as mean and range
over the seeds. Then a cold `dvc repro` of all five stages in a fresh temporary project next to the
tutorial script's wall time, a no-op `dvc repro` next to a one-stage empty project's, and each
stage's peak RSS next to the tutorial's. Needs the local data mirror ($DATASET_MIRROR, or
../shared/datasets next to the project). A benchmark, not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnist_pipeline.core.config import Config
    from mnist_pipeline.prepared import PreparedSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = PROJECT_ROOT / "benchmarks" / "tutorial.py"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "mnist_pipeline")
RESULT_TAG = "BENCH_RESULT "


def find_mirror() -> Path:
    for candidate in (os.environ.get("DATASET_MIRROR"), str(PROJECT_ROOT.parent / "shared" / "datasets")):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    sys.exit("error: no local data mirror: set DATASET_MIRROR to a folder holding mnist/train-images-idx3-ubyte.gz")


def child_env(mirror: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(DATASET_MIRROR=str(mirror), MNIST_IDX_DIR=str(mirror / "mnist"), DVC_NO_ANALYTICS="1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT_ROOT))
    return env


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds and peak RSS (MiB) of one command and its waited-for children (wait4's rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode} in {cwd}\n{stderr[-3000:]}")
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}


def child_result(stdout: str) -> dict[str, Any]:
    line = next(line for line in stdout.splitlines() if line.startswith(RESULT_TAG))
    return json.loads(line[len(RESULT_TAG):])


# ---- children: each runs in its own process and prints one BENCH_RESULT line ----

def child_tutorial(seed: int) -> None:
    """The tutorial script as written, seeded, with its fit and evaluate calls timed from outside."""
    from mnist_pipeline.train.tensorflow_runtime import keras

    keras.utils.set_random_seed(seed)
    record: dict[str, Any] = {}
    fit, evaluate = keras.Model.fit, keras.Model.evaluate

    def timed_fit(self: keras.Model, *args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        result = fit(self, *args, **kwargs)
        record.update(fit_s=time.perf_counter() - started, fit_cpu_s=time.process_time() - cpu)
        return result

    def recorded_evaluate(self: keras.Model, *args: Any, **kwargs: Any) -> Any:
        result = evaluate(self, *args, **kwargs)
        record["test_accuracy"] = float(result[1])
        return result

    keras.Model.fit, keras.Model.evaluate = timed_fit, recorded_evaluate
    runpy.run_path(str(TUTORIAL), run_name="__main__")
    print(RESULT_TAG + json.dumps(record), flush=True)


def mirror_splits(cfg: Config) -> tuple[PreparedSpec, dict[str, tuple[Any, Any]]]:
    """The data set's spec and its splits as the preprocess stage makes them, from the mirror's IDX files."""
    from mnist_pipeline.core.datasets import DATASETS
    from mnist_pipeline.prepared import load_split
    from mnist_pipeline.sources.idx import read_idx
    from mnist_pipeline.sources.splits import prepared_spec, write_splits

    folder = Path(os.environ["MNIST_IDX_DIR"])
    raw = {f"{split}_{kind}": read_idx(folder / f"{prefix}-{kind}-idx{dims}-ubyte.gz", kind)
           for split, prefix in (("train", "train"), ("test", "t10k"))
           for kind, dims in (("images", 3), ("labels", 1))}
    spec = prepared_spec(DATASETS[cfg.data.dataset], cfg.preprocess)
    with tempfile.TemporaryDirectory() as prepared_dir:  # the stage's files, read back as the train stage reads them
        write_splits(raw, cfg.preprocess, prepared_dir, spec)
        return spec, {split: load_split(prepared_dir, split, spec, min_images=0) for split in ("train", "val", "test")}


def child_ours(seed: int, workdir: Path) -> None:
    """train_model at the project's params (train.seed set), on the preprocess stage's arrays."""
    from mnist_pipeline.core.config import with_overrides
    from mnist_pipeline.train.registry import load_config

    cfg = with_overrides(load_config(PROJECT_ROOT / "params.yaml"), {"train.seed": seed})
    spec, splits = mirror_splits(cfg)

    import numpy as np

    from mnist_pipeline.train.training import train_model

    started, cpu = time.perf_counter(), time.process_time()
    model, _ = train_model(cfg.model, cfg.train, spec, *splits["train"], *splits["val"], workdir / "live")
    record = {"fit_s": time.perf_counter() - started, "fit_cpu_s": time.process_time() - cpu}
    x_test, y_test = splits["test"]
    _, accuracy = model.evaluate(x_test, np.eye(spec.n_classes, dtype=np.float32)[y_test], verbose=0)
    record["test_accuracy"] = float(accuracy)
    print(RESULT_TAG + json.dumps(record), flush=True)


# ---- the orchestrator ----

def summary(values: list[float], digits: int = 4) -> str:
    return f"mean {statistics.mean(values):.{digits}f} (range {min(values):.{digits}f}-{max(values):.{digits}f})"


def copy_project(dest: Path, env: dict[str, str]) -> None:
    """The pipeline alone (code, dvc.yaml, params) in a fresh git + DVC repo, as a user's clone would be."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".tmp-*"))
        else:
            shutil.copy2(source, dest / name)
    init_repo(dest, env)


def init_repo(path: Path, env: dict[str, str]) -> None:
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True)
    (path / ".gitignore").write_text("__pycache__/\n.tmp-*\n")
    subprocess.run(["git", "add", "-A"], cwd=path, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", "bench"], cwd=path, env=env, check=True, capture_output=True)


def stage_commands(project: Path) -> dict[str, list[str]]:
    import yaml

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return {name: stage["cmd"].split() for name, stage in stages.items()}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} CPU cores ({model}), {system}"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each side, alternating; seeds 0..runs-1")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the fit comparison")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, seed = args.child[0], int(args.child[1])
        child_tutorial(seed) if kind == "tutorial" else child_ours(seed, Path(args.workdir))
        return

    mirror = find_mirror()
    env = child_env(mirror)
    # Versions without importing TensorFlow: this process stays small, so the children's peak RSS
    # (wait4) is theirs, not a copy of ours from before exec.
    from importlib.metadata import version

    print(f"# train_speed benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# {machine()}; TensorFlow {version('tensorflow')}, Keras {version('keras')}")
    print(f"# {load()} at start; mirror {mirror}")
    print(f"\n## fit: tutorial vs train_model at the default params, {args.runs} runs each, alternating")
    results: dict[str, list[dict[str, Any]]] = {"tutorial": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for seed in range(args.runs):
            for kind in ("tutorial", "ours"):
                workdir = Path(tmp) / f"{kind}-{seed}"
                workdir.mkdir()
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(seed),
                       "--workdir", str(workdir)]
                run = run_measured(cmd, workdir, env)
                record = {**child_result(run["stdout"]), "wall_s": run["wall_s"], "rss_mib": run["rss_mib"]}
                results[kind].append(record)
                print(f"{kind:8s} seed {seed}: fit {record['fit_s']:6.2f} s (CPU {record['fit_cpu_s']:6.2f} s), "
                      f"test accuracy {record['test_accuracy']:.4f}, process {record['wall_s']:.1f} s, "
                      f"peak RSS {record['rss_mib']:.0f} MiB", flush=True)
    med = {k: statistics.median(r["fit_s"] for r in v) for k, v in results.items()}
    med_cpu = {k: statistics.median(r["fit_cpu_s"] for r in v) for k, v in results.items()}
    acc = {k: [r["test_accuracy"] for r in v] for k, v in results.items()}
    print(f"median fit: tutorial {med['tutorial']:.2f} s, ours {med['ours']:.2f} s -> "
          f"{med['tutorial'] / med['ours']:.2f}x faster (CPU time: {med_cpu['tutorial']:.2f} s vs "
          f"{med_cpu['ours']:.2f} s -> {med_cpu['tutorial'] / med_cpu['ours']:.2f}x)")
    points = 100 * (statistics.mean(acc["ours"]) - statistics.mean(acc["tutorial"]))
    print(f"test accuracy over seeds 0-{args.runs - 1}: tutorial {summary(acc['tutorial'])}, "
          f"ours {summary(acc['ours'])}; ours - tutorial {points:+.2f} points")
    tutorial_wall = statistics.median(r["wall_s"] for r in results["tutorial"])
    tutorial_rss = max(r["rss_mib"] for r in results["tutorial"])
    if args.skip_pipeline:
        print(f"# {load()} at end")
        return

    print("\n## pipeline: fresh temporary project, default params, local mirror")
    with tempfile.TemporaryDirectory(prefix="pipeline-speed-") as tmp:
        project, empty = Path(tmp) / "project", Path(tmp) / "empty"
        copy_project(project, env)
        cold = run_measured(["dvc", "repro"], project, env)
        print(f"cold dvc repro (5 stages): {cold['wall_s']:.1f} s; tutorial script end to end (median): "
              f"{tutorial_wall:.1f} s -> {'faster' if cold['wall_s'] < tutorial_wall else 'SLOWER'} "
              f"by {abs(tutorial_wall - cold['wall_s']):.1f} s", flush=True)

        empty.mkdir()
        stage = "stages:\n  hello:\n    cmd: echo hello > out.txt\n    outs:\n      - out.txt\n"
        (empty / "dvc.yaml").write_text(stage)
        init_repo(empty, env)
        run_measured(["dvc", "repro"], empty, env)
        noop: dict[str, list[float]] = {"project": [], "empty": []}
        for _ in range(3):
            for name, path in (("project", project), ("empty", empty)):
                run = run_measured(["dvc", "repro"], path, env)
                if "Running stage" in run["stdout"] + run["stderr"]:
                    sys.exit(f"error: the no-op dvc repro in {path} ran a stage:\n{run['stdout']}")
                noop[name].append(run["wall_s"])
        np_, ne = statistics.median(noop["project"]), statistics.median(noop["empty"])
        print(f"no-op dvc repro (median of 3): pipeline {np_:.2f} s, one-stage empty project {ne:.2f} s -> "
              f"{np_ - ne:+.2f} s", flush=True)

        print(f"peak RSS per stage (each stage's command rerun alone), tutorial script {tutorial_rss:.0f} MiB:")
        for name, cmd in stage_commands(project).items():
            cmd = [sys.executable, "-m", *cmd[2:]] if cmd[:2] == ["python", "-m"] else cmd
            run = run_measured(cmd, project, env)
            verdict = "below" if run["rss_mib"] < tutorial_rss else "ABOVE"
            print(f"  {name:15s} {run['rss_mib']:6.0f} MiB ({verdict}), {run['wall_s']:.1f} s", flush=True)
    print(f"# {load()} at end")


if __name__ == "__main__":
    main()
