"""The fast tier's rule: a test that starts a process (a stage, DVC, git, a server) is left to the full suite.

`make test-fast` loads this plugin (`pytest --in-process-only`, conftest.py). While a test runs, an audit
hook watches for a new process; the first one ends the test as skipped, with the reason, before the process
starts. Nothing needs to be marked by hand, and a test that starts to spawn processes leaves the fast tier by itself.
The hook acts only inside a test, so pytest-xdist still starts its workers.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

import pytest

# Python's audit events of process creation (the docs' audit events table).
SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.fork",
                          "os.forkpty"})
REASON = "starts a process: runs in the full suite (make test)"
_in_test = False


def _refuse_processes(event: str, args: tuple[Any, ...]) -> None:
    if _in_test and event in SPAWN_EVENTS:
        raise pytest.skip.Exception(f"{REASON} ({event})", _use_item_location=True)


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_refuse_processes)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    global _in_test
    _in_test = True
    try:
        return (yield)
    finally:
        _in_test = False
