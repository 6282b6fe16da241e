"""Progress that suits where it is shown: a live bar on a terminal, plain lines in CI logs."""

from __future__ import annotations

import sys

from tqdm import tqdm

from mnist_pipeline.core.errors import redact


def interactive() -> bool:
    """A live bar only when a person watches; CI logs get one line per finished item instead."""
    return sys.stderr.isatty()


def bar(total: int | None, desc: str, unit: str = "B") -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        disable=not interactive(),
        leave=False,
        file=sys.stderr,
    )


def say(message: str) -> None:
    """A progress line on stderr, so stdout stays clean for data; credentials in a URL redacted."""
    print(redact(message), file=sys.stderr, flush=True)
