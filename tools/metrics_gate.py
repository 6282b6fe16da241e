"""Fail when a metric got worse than a base commit by more than its tolerance.

`python tools/metrics_gate.py --base main`, run after `dvc repro`. The numbers come from
`dvc metrics diff BASE --all --json` (DVC's own comparison of the workspace's metrics with the
commit's); which metrics are gated, in which direction a change is worse, and by how much it may be,
comes from a committed file, `metrics_tolerances.yaml`:

    metrics/evaluate.json:
      accuracy: {worse: lower, tolerance: 0.002}

Each gated metric gets one line on stdout. A metric worse by more than its tolerance gets one line on
stderr naming the file, the metric, both values and the tolerance, and the exit status is 1; so does a
metric that is not a number (NaN, infinity) in the workspace, or that the base has and the workspace lost.
A fault in the tolerance file, the base or DVC is one `error:` line and exit 2. Tolerances name metrics
files that dvc.yaml declares as `metrics` (read when the gate runs), so a file that was renamed or
restructured is reported, never silently skipped. A metric the base commit lacks is new: not compared.

Tolerances are absolute; a fixed one cannot know how much of a change is noise. With a `beyond_noise`
entry in the tolerance file, the gate also pairs the base's and the workspace's per-image test results
(`metrics/per_image.csv`, as `tools/compare.py` does) and fails when accuracy is worse beyond noise: more
images flipped right -> wrong than wrong -> right, with an exact McNemar p-value below the level:

    beyond_noise: {level: 0.05}
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python tools/metrics_gate.py`: the project root, so `tools.*` imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.config import load_yaml
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.evaluate.significance import Comparison, format_p
from tools.compare import INTERVAL, PER_IMAGE, NotFound, load_side, pair

TOLERANCES_FILE = "metrics_tolerances.yaml"
DVC_YAML = "dvc.yaml"
DIRECTIONS = ("lower", "higher")  # which way a change makes the metric worse
BEYOND_NOISE = "beyond_noise"  # the tolerance file's entry for the paired test; not a metrics file
EXIT_REGRESSION = 1


@dataclass(frozen=True)
class Gate:
    file: str
    metric: str
    worse: str  # "lower" or "higher"
    tolerance: float


@dataclass(frozen=True)
class Verdict:
    gate: Gate
    old: float | None  # None: the base commit has no such metric (or not a number: nothing to compare with)
    new: float | None  # None: the workspace lost a metric the base has

    @property
    def broken(self) -> bool:
        """Missing, or not a number: a NaN compares false with everything, so it would pass any tolerance."""
        return self.new is None or not math.isfinite(self.new)

    @property
    def worse_by(self) -> float:
        """How much worse the workspace is than the base (negative: better); 0 for a new metric."""
        if self.old is None or self.new is None:
            return 0.0
        return self.old - self.new if self.gate.worse == "lower" else self.new - self.old

    @property
    def failed(self) -> bool:
        # A hair of float slack: a change of exactly the tolerance passes whatever the rounding of the subtraction.
        return self.broken or self.worse_by > self.gate.tolerance + 1e-12

    def line(self) -> str:
        g = self.gate
        old = "(none)" if self.old is None else f"{self.old:.6g}"
        if self.new is None:
            return f"{g.file}: {g.metric} {old} -> missing: the workspace lost a metric the base has"
        if self.broken:
            return f"{g.file}: {g.metric} {old} -> {self.new}: not a number, which no tolerance can judge"
        if self.old is None:
            return f"{g.file}: {g.metric} {self.new:.6g} is new (the base has no value): not compared"
        if self.failed:
            return (f"{g.file}: {g.metric} got worse: {self.old:.6g} -> {self.new:.6g} ({g.worse} is worse), "
                    f"by {self.worse_by:.6g}, more than its tolerance {g.tolerance:g}")
        return (f"{g.file}: {g.metric} {self.old:.6g} -> {self.new:.6g}: ok "
                f"(tolerance {g.tolerance:g}, {g.worse} is worse)")


def dvc(*args: str) -> str:
    """stdout of a DVC command (this interpreter's DVC, whatever PATH says); its last error line on failure."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"dvc {' '.join(args)}: exited {result.returncode}: {reason}")
    return result.stdout


def check_base(base: str) -> None:
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        raise PipelineError(f"--base {base}: not a commit in this git repository "
                            "(in CI, check out with full history: fetch-depth: 0)")


def declared_metrics_files(dvc_yaml: str | Path = DVC_YAML) -> list[str]:
    """The files dvc.yaml declares as metrics (each stage's `metrics:` entries and the top-level list)."""
    spec = load_yaml(dvc_yaml)
    entries: list[Any] = list((spec or {}).get("metrics") or [])
    for stage in ((spec or {}).get("stages") or {}).values():
        entries += (stage or {}).get("metrics") or []
    return [next(iter(entry)) if isinstance(entry, dict) else str(entry) for entry in entries]


def load_gates(path: str | Path, declared: list[str]) -> list[Gate]:
    """The tolerance file as gates, each entry checked; a fault is one line naming the file and the entry."""
    tree = load_yaml(path)
    if not isinstance(tree, dict) or not tree:
        raise PipelineError(f"{path}: expected a mapping of metrics files to their gated metrics, "
                            "e.g. 'metrics/evaluate.json: {accuracy: {worse: lower, tolerance: 0.002}}'")
    gates = []
    for file, metrics in tree.items():
        if file == BEYOND_NOISE:
            continue
        if file not in declared:
            raise PipelineError(f"{path}: {file!r} is not a metrics file of {DVC_YAML} "
                                f"(its metrics: {', '.join(declared) or 'none'})")
        if not isinstance(metrics, dict) or not metrics:
            raise PipelineError(f"{path}: {file}: expected a mapping of metric names to "
                                "{worse: lower|higher, tolerance: <number >= 0>}")
        for metric, rule in metrics.items():
            where = f"{path}: {file}: {metric}"
            if not isinstance(rule, dict) or set(rule) != {"worse", "tolerance"}:
                raise PipelineError(f"{where}: expected {{worse: lower|higher, tolerance: <number >= 0>}}, "
                                    f"found {rule!r}")
            worse, tolerance = rule["worse"], rule["tolerance"]
            if worse not in DIRECTIONS:
                raise PipelineError(f"{where}: worse = {worse!r}: expected one of {', '.join(DIRECTIONS)}")
            if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not (
                    math.isfinite(tolerance) and tolerance >= 0):
                raise PipelineError(f"{where}: tolerance = {tolerance!r}: expected a number >= 0")
            gates.append(Gate(str(file), str(metric), worse, float(tolerance)))
    return gates


def load_level(path: str | Path) -> float | None:
    """The tolerance file's `beyond_noise: {level: <p>}`, or None when it has none (no paired test)."""
    tree = load_yaml(path)
    if not isinstance(tree, dict) or BEYOND_NOISE not in tree:
        return None
    rule = tree[BEYOND_NOISE]
    level = rule.get("level") if isinstance(rule, dict) and set(rule) == {"level"} else None
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
        raise PipelineError(f"{path}: {BEYOND_NOISE}: expected {{level: <p-value between 0 and 1, e.g. 0.05>}}, "
                            f"found {rule!r}")
    return float(level)


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def judge(gates: list[Gate], diff: dict[str, Any], source: str | Path = TOLERANCES_FILE) -> list[Verdict]:
    """Each gate's verdict from `dvc metrics diff --all --json` output (NaN and Infinity parsed as floats)."""
    verdicts = []
    for gate in gates:
        entry = (diff.get(gate.file) or {}).get(gate.metric)
        new = number(entry.get("new")) if isinstance(entry, dict) else None
        old = number(entry.get("old")) if isinstance(entry, dict) else None
        if new is None and old is None:
            raise PipelineError(f"{source}: {gate.file}: {gate.metric}: no such number in the workspace's "
                                f"metrics (run dvc repro first, or update {source})")
        verdicts.append(Verdict(gate, old if old is not None and math.isfinite(old) else None, new))
    return verdicts


@dataclass(frozen=True)
class PairedVerdict:
    """Accuracy paired image by image with the base's: fails only when worse beyond noise."""

    base: str
    level: float
    comparison: Comparison | None  # None: not paired, for `reason`
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.comparison is not None and self.comparison.worse_beyond_noise(self.level)

    def line(self) -> str:
        where = f"{PER_IMAGE}: accuracy paired with {self.base}"
        c = self.comparison
        if c is None:
            return f"{where}: not compared ({self.reason})"
        flips = f"{c.right_to_wrong} right -> wrong, {c.wrong_to_right} wrong -> right"
        if self.failed:
            return (f"{where}: worse beyond noise: {c.correct_a / c.total:.4f} -> {c.correct_b / c.total:.4f}, "
                    f"{flips}, exact McNemar p={format_p(c.p_value)}, below the level {self.level:g}")
        return f"{where}: {flips}: ok, {c.verdict(self.level)} at level {self.level:g}"


def judge_paired(base: str, level: float) -> PairedVerdict:
    """The base's and the workspace's per-image results, paired; a base from before they were tracked, or
    another test set, is not compared (the absolute tolerances still are)."""
    workspace = load_side(None)
    try:
        base_side = load_side(base)
    except NotFound:
        return PairedVerdict(base, level, None, f"the base has no {PER_IMAGE} or {INTERVAL}")
    try:
        return PairedVerdict(base, level, pair(base_side, workspace))
    except PipelineError as e:
        return PairedVerdict(base, level, None, str(e))


def gate(base: str, tolerances: str) -> int:
    """Print a line per gated metric; 1 when any got worse by more than its tolerance."""
    gates = load_gates(tolerances, declared_metrics_files())
    level = load_level(tolerances)
    check_base(base)
    verdicts: list[Verdict | PairedVerdict] = list(
        judge(gates, json.loads(dvc("metrics", "diff", base, "--all", "--json") or "{}"), tolerances))
    if level is not None:
        verdicts.append(judge_paired(base, level))
    for verdict in verdicts:
        if not verdict.failed:
            print(verdict.line())
    failed = [verdict for verdict in verdicts if verdict.failed]
    for verdict in failed:
        print(verdict.line(), file=sys.stderr)
    sys.stdout.flush()
    return EXIT_REGRESSION if failed else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--tolerances", default=TOLERANCES_FILE, help=f"tolerance file (default {TOLERANCES_FILE})")
    args = parser.parse_args(argv)
    run_command(lambda: gate(args.base, args.tolerances))


if __name__ == "__main__":
    main()
