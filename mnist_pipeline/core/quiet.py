"""Keep TensorFlow's native start-up log off the terminal, so a command prints only its own lines.

TensorFlow's C++ code writes straight to file descriptor 2: `import tensorflow` alone prints lines
such as `Could not find cuda drivers` and, on a machine without a GPU, `E0000 ... failed call to
cuInit: ... UNKNOWN ERROR (303)`, which reads like a failure. `TF_CPP_MIN_LOG_LEVEL=3` does not stop
all of them: some are written before absl's logging reads it. So before a command runs, Python's
`sys.stderr` moves to a copy of descriptor 2 and descriptor 2 itself is pointed at the null device.
Every Python-level message (the `error:` line, progress lines and bars, warnings, tracebacks, the
fault handler's dump) still reaches the terminal; native writes to descriptor 2 vanish.

`MNIST_PIPELINE_TF_LOG=1` leaves everything as it was, to see TensorFlow's log while debugging (a
crash inside TensorFlow's native code, for one, says why only there). A child process inherits the
null descriptor 2: one that should speak on stderr must be given `stderr=sys.stderr`.
"""

from __future__ import annotations

import faulthandler
import io
import os
import sys

DEBUG_ENV = "MNIST_PIPELINE_TF_LOG"
# INFO, WARNING and ERROR lines of the C++ log are dropped before they are formatted; FATAL is not.
TF_QUIET_LEVEL = "3"


def wants_tf_log() -> bool:
    """The debugging switch: any value but empty or 0 shows TensorFlow's own log."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _stderr_is_descriptor_2() -> bool:
    """Only the process's own stderr is moved: one replaced by a caller (a capture, a log file) is left alone."""
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def silence_native_stderr() -> None:
    """Point descriptor 2 at the null device and keep `sys.stderr` on a private copy of the terminal.

    Called once per process before a command runs; a second call finds `sys.stderr` moved already
    and does nothing.
    """
    if wants_tf_log():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_QUIET_LEVEL)
    if not _stderr_is_descriptor_2():
        return
    old = sys.stderr
    old.flush()
    saved = os.dup(2)  # not inherited by child processes (os.dup's default)
    sys.stderr = open(  # noqa: SIM115 - lives as long as the process, like the stderr it replaces
        saved, "w", encoding=old.encoding, errors=old.errors, buffering=1, closefd=True
    )
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)
    if faulthandler.is_enabled():
        # Enabled at start-up (-X faulthandler, PYTHONFAULTHANDLER) on descriptor 2: follow the move.
        faulthandler.enable(file=sys.stderr, all_threads=True)
