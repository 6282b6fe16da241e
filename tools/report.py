"""A pull request's model report in markdown: what changed in metrics, params and pictures.

`python tools/report.py --base main --out report.md`, run after `dvc repro`: the tables
come from `dvc metrics diff` and `dvc params diff` (DVC's own comparison), the pictures are the
PNGs under metrics/, shown beside the base branch's version when it differs. CI posts the file
with `cml comment create --publish`, which uploads the linked images (.github/workflows/pr-report.yml).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import atomic_open

METRICS_DIR = "metrics"


def dvc(*args: str) -> str:
    """stdout of a DVC command (this interpreter's DVC, whatever PATH says); its last error line on failure."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"dvc {' '.join(args)}: exited {result.returncode}: {reason}")
    return result.stdout


def diff_table(kind: str, base: str) -> str:
    """`dvc metrics|params diff BASE --md`; DVC prints a header-only table when nothing changed.

    The tracked metrics are the headline numbers only (the per-class table is plot data), so the
    table is short as DVC prints it.
    """
    table = dvc(kind, "diff", base, "--md").strip()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    if len(rows) <= 2:
        return f"No {kind[:-1]} changed from `{base}`."
    return table


def check_base(base: str) -> None:
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        raise PipelineError(f"--base {base}: not a commit in this git repository "
                            "(in CI, check out with full history: fetch-depth: 0)")


def pictures(root: Path = Path(".")) -> list[Path]:
    """The PNGs the pipeline wrote under metrics/, sorted; temporary files of an interrupted write excluded."""
    return sorted(p for p in (root / METRICS_DIR).rglob("*.png") if not p.name.startswith(".tmp-"))


def base_bytes(base: str, path: Path) -> bytes | None:
    """The file as committed at `base`, or None when it did not exist there."""
    shown = subprocess.run(["git", "show", f"{base}:./{path.as_posix()}"], capture_output=True)
    return shown.stdout if shown.returncode == 0 else None


def link(target: Path, report: Path) -> str:
    """A markdown link relative to the report, so the report and its images move together."""
    return Path(os.path.relpath(target.resolve(), report.resolve().parent)).as_posix()


def picture_section(base: str, out: Path) -> list[str]:
    """Each picture; next to its base version in a table when the pull request changed it."""
    assets = out.with_name(f"{out.stem}-assets") / re.sub(r"[^\w.-]+", "-", base)
    lines = ["## Pictures", ""]
    found = pictures()
    if not found:
        return [*lines, f"No PNG files under {METRICS_DIR}/: run `dvc repro` first.", ""]
    for picture in found:
        name = picture.as_posix()
        old = base_bytes(base, picture)
        lines.append(f"### {name}")
        lines.append("")
        if old is None or old == picture.read_bytes():
            note = "new in this branch" if old is None else f"unchanged from `{base}`"
            lines += [f"![{name}]({link(picture, out)})", "", f"_{note}_", ""]
            continue
        saved = assets / picture
        with atomic_open(saved) as f:
            f.write(old)
        lines += [
            f"| `{base}` | this branch |",
            "| --- | --- |",
            f"| ![{name} at {base}]({link(saved, out)}) | ![{name}]({link(picture, out)}) |",
            "",
        ]
    return lines


def build_report(base: str, out: Path) -> str:
    """The whole markdown text; writes the base versions of changed pictures beside `out`."""
    check_base(base)
    lines = [
        f"# Model report: this branch against `{base}`",
        "",
        "## Metrics",
        "",
        diff_table("metrics", base),
        "",
        "## Params",
        "",
        diff_table("params", base),
        "",
        *picture_section(base, out),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_report(base: str, out: Path) -> None:
    if out.is_dir():
        raise PipelineError(f"--out {out}: is a folder: expected the path of the markdown file to write")
    text = build_report(base, out)
    with atomic_open(out, "w") as f:
        f.write(text)
    print(f"report: wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--out", default="report.md", help="markdown file to write (default report.md)")
    args = parser.parse_args(argv)
    run_command(lambda: write_report(args.base, Path(args.out)))


if __name__ == "__main__":
    main()
