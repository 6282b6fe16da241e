"""Is the difference between two runs real? Pair their per-image test results and say.

    python tools/compare.py REV_A [REV_B]

REV_A and REV_B are anything DVC reads files at: a commit, a branch, a tag, a `dvc exp` experiment's
name; REV_B left out is the workspace. Both sides' `metrics/per_image.csv` (written by evaluate, tracked
in git) are read through DVC and paired image by image. Printed: both accuracies with their 95% Wilson
intervals, the images that flipped each way, the exact McNemar p-value, and a last line, the verdict:
`worse beyond noise (p=0.003)`, `better beyond noise (p=...)` or `no detectable change (p=0.41)`, for B
against A, at the level `--level` (0.05). Two sides scored on different test sets (other images, another
order) are refused in one `error:` line, exit 2: a paired test of them would mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/compare.py`: the project root, so `tools.*` imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.evaluate.significance import (
    Comparison,
    PerImage,
    compare_correct,
    format_p,
    interval_line,
    parse_per_image,
    same_test_set,
)

PER_IMAGE = "metrics/per_image.csv"
INTERVAL = "metrics/accuracy_interval.json"
WORKSPACE = "workspace"
DEFAULT_LEVEL = 0.05


class NotFound(PipelineError):
    """A revision without the file: evaluated before per-image results were tracked, or not evaluated."""


@dataclass(frozen=True)
class Side:
    """One revision's per-image results and the hash of the test arrays they were scored on."""

    rev: str | None  # None: the workspace
    results: PerImage
    test_set_sha256: str | None  # None: the interval file has no hash (not evaluated by this project's evaluate)

    @property
    def name(self) -> str:
        return self.rev or WORKSPACE


def read_at(path: str, rev: str | None, root: str | Path = ".") -> str:
    """A file's text at a revision (None: the workspace), as DVC reads it: git-tracked or DVC-tracked,
    commits, branches and experiment names alike; a fault is one line naming the revision and file."""
    if rev is None:
        try:
            return (Path(root) / path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"{WORKSPACE}: {path}: not found (run dvc repro first)") from None
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError
    from dvc.scm import RevError

    try:
        return dvc.api.read(path, repo=str(root), rev=rev, encoding="utf-8")
    except RevError:
        raise PipelineError(f"{rev}: not a revision of this repository: expected a commit, branch, tag or "
                            "the name of a dvc experiment") from None
    except PathMissingError:
        raise NotFound(f"{rev}: {path}: not found at this revision (evaluated before per-image results were "
                            "tracked? check it out and run dvc repro)") from None
    except DvcException as e:
        raise PipelineError(f"{rev}: {path}: DVC cannot read it ({e})") from None


def load_side(rev: str | None, root: str | Path = ".") -> Side:
    where = rev or WORKSPACE
    results = parse_per_image(read_at(PER_IMAGE, rev, root), f"{where}: {PER_IMAGE}")
    try:
        interval = json.loads(read_at(INTERVAL, rev, root))
    except json.JSONDecodeError as e:
        raise PipelineError(f"{where}: {INTERVAL}: not valid JSON ({e})") from None
    digest = interval.get("test_set_sha256") if isinstance(interval, dict) else None
    return Side(rev, results, digest if isinstance(digest, str) else None)


def pair(a: Side, b: Side) -> Comparison:
    """The paired comparison of B against A; refused when they were not scored on the same test set."""
    refusal = same_test_set(a.results, b.results)
    if refusal is None and a.test_set_sha256 != b.test_set_sha256:
        refusal = (f"the test arrays differ ({INTERVAL}: test_set_sha256 {str(a.test_set_sha256)[:12]} "
                   f"against {str(b.test_set_sha256)[:12]}): other images, or other preprocessing of them")
    if refusal is not None:
        raise PipelineError(f"{a.name} and {b.name} were not scored on the same test set: {refusal}; "
                            "a paired comparison needs the same test images in the same order")
    return compare_correct(a.results.correct, b.results.correct)


def report(a: Side, b: Side, comparison: Comparison, level: float = DEFAULT_LEVEL) -> list[str]:
    """The lines `compare` prints; the last one is the verdict."""
    c = comparison
    width = max(len(a.name), len(b.name)) + 1
    both_right = c.correct_a - c.right_to_wrong
    both_wrong = c.total - c.correct_a - c.wrong_to_right
    return [
        interval_line(f"A {a.name + ':':<{width}} ", c.correct_a, c.total),
        interval_line(f"B {b.name + ':':<{width}} ", c.correct_b, c.total),
        f"flipped: {c.right_to_wrong} right -> wrong, {c.wrong_to_right} wrong -> right "
        f"({both_right} right in both, {both_wrong} wrong in both)",
        f"exact McNemar test: p = {format_p(c.p_value)} (two-sided, {c.right_to_wrong + c.wrong_to_right} "
        f"flipped images, level {level:g})",
        f"B against A: {c.verdict(level)}",
    ]


def compare(rev_a: str, rev_b: str | None, level: float = DEFAULT_LEVEL) -> int:
    a, b = load_side(rev_a), load_side(rev_b)
    for line in report(a, b, pair(a, b), level):
        print(line)
    return 0


def level_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a significance level between 0 and 1, e.g. 0.05")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("rev_a", metavar="REV_A", help="commit, branch, tag or dvc exp name: the base")
    parser.add_argument("rev_b", metavar="REV_B", nargs="?", help="the same kinds; left out: the workspace")
    parser.add_argument("--level", type=level_arg, default=DEFAULT_LEVEL,
                        help=f"p-value below which a difference is beyond noise (default {DEFAULT_LEVEL})")
    args = parser.parse_args(argv)
    run_command(lambda: compare(args.rev_a, args.rev_b, args.level))


if __name__ == "__main__":
    main()
