"""The shared entry-point wrapper: one-line errors, clean exits on Ctrl-C and SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from mnist_pipeline.errors import PipelineError


class Terminated(BaseException):
    """SIGTERM as an exception, so it unwinds through the atomic writers like Ctrl-C does.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> NoReturn:
    # Raising unwinds through the atomic writers, which delete their temporary files.
    raise Terminated(signum)


def one_line(message: object) -> str:
    """Messages quoted from libraries can span lines; a user and a CI log get exactly one."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


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
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        # A disk, permission or path fault met while writing outputs: say where, not how deep.
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{one_line(e.strerror or e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); no partial output was kept", file=sys.stderr)
        sys.exit(130)
    except Terminated as e:
        print("error: terminated (SIGTERM); no partial output was kept", file=sys.stderr)
        sys.exit(128 + e.signum)
