"""The shared entry-point wrapper: one-line errors, clean exits on Ctrl-C and SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from mnist_pipeline.errors import PipelineError


def _terminate(signum: int, frame: object) -> NoReturn:
    # Raising unwinds through the atomic writers, which delete their temporary files.
    raise SystemExit(128 + signum)


def run_stage(main: Callable[..., None], description: str, *arg_names: str) -> None:
    """Parse the positional path arguments named in dvc.yaml's `cmd` and run `main` with them."""
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=description)
    for name in arg_names:
        parser.add_argument(name)
    args = parser.parse_args()
    try:
        main(**vars(args))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was kept", file=sys.stderr)
        sys.exit(130)
