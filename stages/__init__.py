"""Thin DVC stage entry points, run as `python -m stages.<name>` from the project root.

`python` is whichever one PATH finds first: run outside the project's venv (`.venv/bin/dvc repro` without
`source .venv/bin/activate`), it is the system's, which lacks the pinned packages. This package's start
runs before any stage imports one, using the standard library only: a missing package then ends in one
line saying which python ran and how to get the venv's, not in a traceback. Nothing is imported from a
third party here, and nothing changes for a stage whose imports succeed.
"""

import os
import sys

VENV_HINT = "run `source .venv/bin/activate` first (or `make repro`, which sets the venv up and uses it)"


def _which_python() -> str:
    """Which interpreter ran the stage, and whether it is a venv's."""
    where = "a venv's" if sys.prefix != sys.base_prefix else "not a venv's"
    return f"{sys.executable or 'python'} (Python {sys.version_info[0]}.{sys.version_info[1]}, {where})"


def _missing_package(kind: type, error: BaseException, trace: object) -> None:
    """sys.excepthook: a package missing from this python is one line and exit 2; anything else as before."""
    name = getattr(error, "name", None) or ""
    if not isinstance(error, ModuleNotFoundError) or name.split(".")[0] in ("stages", "mnist_pipeline"):
        _previous(kind, error, trace)
        return
    print(f"error: {_which_python()} has no module '{name}': the stages need the project's venv; {VENV_HINT}",
          file=sys.stderr, flush=True)
    os._exit(2)


if sys.version_info[:2] != (3, 11):
    print(f"error: {_which_python()}: the stages need Python 3.11 from the project's venv; {VENV_HINT}",
          file=sys.stderr, flush=True)
    sys.exit(2)
_previous = sys.excepthook
sys.excepthook = _missing_package
