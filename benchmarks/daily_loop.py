"""The daily loop against the tutorial: edit `train.epochs`, `dvc repro`, read the metrics.

    python benchmarks/daily_loop.py [--runs 3] [--out docs/daily_loop.txt]     (or `make bench-loop`)

In a fresh temporary project on full MNIST (local mirror), after one cold `dvc repro`, it alternates:
- the tutorial's whole script (benchmarks/tutorial.py, one process) against the daily loop: `train.epochs`
  flipped between 5 and 6 in params.yaml, then `dvc repro` (train, evaluate, predict-sample rerun);
- `python -c "import tensorflow"` against `mnist-predict` on one PNG digit with the project's model.
Each pair runs back to back, so both sides see the same machine load; the ratio of the medians is printed
and written to --out with the machine and the load. Also each rerun stage's own wall time, from one more
loop run stage by stage. A benchmark, not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from train_speed import TUTORIAL, child_env, copy_project, find_mirror, load, machine, run_measured, stage_commands

RERUN = ("train", "evaluate", "predict-sample")


def flip_epochs(params: Path) -> int:
    """`train.epochs` 5 <-> 6 in place, as a user edits it; returns the new value."""
    lines = params.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("  epochs:"):
            new = 6 if line.split(":", 1)[1].split("#")[0].strip() == "5" else 5
            lines[i] = f"  epochs: {new}" + line[len(line.split("#")[0].rstrip()):]
            params.write_text("".join(lines))
            return new
    sys.exit(f"error: {params}: no `  epochs:` line under train")


def digit_png(mirror: Path, path: Path) -> None:
    """The first MNIST test digit as a user's picture: 28x28 PNG, dark ink on white."""
    from mnist_pipeline.core.datasets import TEST_IMAGES
    from mnist_pipeline.sources.idx import read_idx

    Image.fromarray(255 - read_idx(mirror / "mnist" / TEST_IMAGES, "images")[0]).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="pairs of each comparison (median taken)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "daily_loop.txt")
    args = parser.parse_args()
    mirror = find_mirror()
    env = child_env(mirror)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# daily_loop benchmark, {datetime.now(UTC):%Y-%m-%d} UTC: python benchmarks/daily_loop.py --runs {args.runs}")
    say(f"# {machine()}")
    say(f"# {load()} at start")
    with tempfile.TemporaryDirectory(prefix="daily-loop-") as tmp:
        project = Path(tmp) / "project"
        copy_project(project, env)
        cold = run_measured(["dvc", "repro"], project, env)
        say(f"cold dvc repro (5 stages, not compared): {cold['wall_s']:.1f} s")

        tutorial, loop = [], []
        for _ in range(args.runs):
            tutorial.append(run_measured([sys.executable, str(TUTORIAL)], project, env)["wall_s"])
            epochs = flip_epochs(project / "params.yaml")
            run = run_measured(["dvc", "repro"], project, env)
            ran = [s for s in ("download", "preprocess", *RERUN) if f"Running stage '{s}'" in run["stdout"]]
            if ran != list(RERUN):
                sys.exit(f"error: after train.epochs: {epochs}, dvc repro ran {ran}, expected {list(RERUN)}")
            loop.append(run["wall_s"])
        t, d = statistics.median(tutorial), statistics.median(loop)
        say(f"tutorial script, whole (median of {args.runs}): {t:.1f} s  [{', '.join(f'{v:.1f}' for v in tutorial)}]")
        say(f"daily loop: edit train.epochs, dvc repro (median of {args.runs}): {d:.1f} s  "
            f"[{', '.join(f'{v:.1f}' for v in loop)}]")
        say(f"ratio daily loop / tutorial script: {d / t:.2f}")

        flip_epochs(project / "params.yaml")
        commands = stage_commands(project)
        parts = []
        for name in RERUN:
            cmd = commands[name]
            cmd = [sys.executable, "-m", *cmd[2:]] if cmd[:2] == ["python", "-m"] else cmd
            parts.append(f"{name} {run_measured(cmd, project, env)['wall_s']:.1f} s")
        say(f"the same stages run alone, once: {', '.join(parts)}")

        picture = Path(tmp) / "digit.png"
        digit_png(mirror, picture)
        predict = [str(Path(sys.executable).parent / "mnist-predict"), str(picture)]
        imports, predicts = [], []
        for _ in range(args.runs):
            imports.append(run_measured([sys.executable, "-c", "import tensorflow"], project, env)["wall_s"])
            run = run_measured(predict, project, env)
            predicts.append(run["wall_s"])
        i, p = statistics.median(imports), statistics.median(predicts)
        say(f'python -c "import tensorflow" (median of {args.runs}): {i:.2f} s  '
            f"[{', '.join(f'{v:.2f}' for v in imports)}]")
        say(f"mnist-predict digit.png (median of {args.runs}): {p:.2f} s  [{', '.join(f'{v:.2f}' for v in predicts)}]"
            f"; it printed: {run['stdout'].strip().splitlines()[-1]}")
        say(f"ratio mnist-predict / import tensorflow: {p / i:.2f}")
    say(f"# {load()} at end")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
