"""The one entry-point wrapper of every command, stages and tools alike.

Whatever a command meets ends the same way: a fault the user can act on is one `error:` line on
stderr and exit 2; Ctrl-C exits 130, SIGTERM and SIGHUP 128 + the signal, each after the atomic
writers have removed their temporary files; a closed stdout (`| head -1`) ends quietly.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from mnist_pipeline.core.errors import PipelineError, redact
from mnist_pipeline.core.quiet import silence_native_stderr

EXIT_FAULT = 2
EXIT_INTERRUPTED = 130


class Terminated(BaseException):
    """SIGTERM or SIGHUP as an exception, so it unwinds through the atomic writers like Ctrl-C does.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> NoReturn:
    # Raising unwinds through the atomic writers, which delete their temporary files.
    raise Terminated(signum)


def one_line(message: object) -> str:
    """Messages quoted from libraries can span lines; a user and a CI log get exactly one, with any
    credentials of a URL in it redacted."""
    return redact(" ".join(part.strip() for part in str(message).splitlines() if part.strip()))


def fail(message: object) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def _exit_quietly_on_closed_stdout() -> NoReturn:
    """`cmd | head -1`: the reader left; flushing again at exit would raise once more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def _exit(status: int) -> NoReturn:
    """Exit without the interpreter's last garbage collections over what is alive now: every output is
    written and closed, and with TensorFlow loaded those collections make the exit take over a second
    (1.4 s after a bare `import tensorflow`, 0.2 s without them), only to free memory the OS takes back
    anyway. Atexit handlers still run."""
    gc.freeze()
    sys.exit(status)


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """Run `main` and exit with its status (0 for None), turning every known fault into one line."""
    silence_native_stderr()  # TensorFlow's native log off the terminal; MNIST_PIPELINE_TF_LOG=1 shows it
    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _terminate)
    try:
        status = main() or 0
        sys.stdout.flush()
    except PipelineError as e:
        fail(e)
        _exit(EXIT_FAULT)
    except BrokenPipeError:
        _exit_quietly_on_closed_stdout()
    except OSError as e:
        # A disk, permission or path fault: say where, not how deep.
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}{e.strerror or e}")
        _exit(EXIT_FAULT)
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C); no partial output was kept")
        _exit(EXIT_INTERRUPTED)
    except Terminated as e:
        fail(f"terminated ({signal.Signals(e.signum).name}); no partial output was kept")
        _exit(128 + e.signum)
    _exit(status)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's usage errors as one `error:` line, exit 2, like every other fault of a command."""

    def error(self, message: str) -> NoReturn:
        # A param that dvc.yaml puts in the command (a folder with a space) splits it: name the param instead.
        from mnist_pipeline.core.config import load_config

        try:
            load_config()
        except PipelineError as e:
            fail(e)
            sys.exit(EXIT_FAULT)
        fail(f"{self.prog}: {message} (usage: {' '.join(self.format_usage().split()[1:])})")
        sys.exit(EXIT_FAULT)


SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "ash"}
# How often a stage looks whether the process that started it is still there.
PARENT_POLL_S = 1.0


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` (Linux /proc), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _is_shell(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() in SHELLS
    except OSError:
        return False


def end_with_parent(poll_s: float = PARENT_POLL_S) -> None:
    """A stage ends when the dvc that started it does: SIGTERM to `dvc repro` would otherwise leave the
    stage training on and rewriting models/ and metrics/ after dvc released its lock.

    A thread looks every `poll_s` whether the parent (dvc, or the shell dvc ran the command in, and then
    that shell's parent) has gone, and ends the stage as SIGTERM does: its atomic writers clean up."""
    parent = os.getppid()
    watched = [(os.getpid(), parent)]
    if _is_shell(parent) and (grandparent := _parent_of(parent)) is not None:
        watched.append((parent, grandparent))
    if parent <= 1:
        return  # started by init: no parent to follow

    def gone() -> bool:
        return any((os.getppid() if pid == os.getpid() else _parent_of(pid)) != ppid for pid, ppid in watched)

    def watch() -> None:
        while not stop.wait(poll_s):
            if gone():
                os.kill(os.getpid(), signal.SIGTERM)
                return

    stop = threading.Event()
    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def run_stage(main: Callable[..., None], description: str | None, *arg_names: str) -> NoReturn:
    """Parse the positional path arguments named in dvc.yaml's `cmd` and run `main` with them, for as long
    as the process that started the stage lives.

    dvc.yaml puts `--` before the arguments, so a path that a param fills in is never read as an option.
    """
    parser = OneLineArgumentParser(description=description)
    for name in arg_names:
        parser.add_argument(name)
    args = parser.parse_args()
    end_with_parent()
    run_command(lambda: main(**vars(args)))
