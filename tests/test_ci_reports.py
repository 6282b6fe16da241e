"""A failing test in CI ends quickly with its name: big comparisons report digests, a hang meets a timeout.

Each case runs pytest on a toy test file in its own folder, with CI=true as CI sets it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

TESTS_DIR = Path(__file__).resolve().parent
TOY = '''
import os, threading

def test_big_bytes_differ():
    a = bytes(range(256)) * 550  # 140 KB
    b = bytearray(a); b[70_000] ^= 1
    assert a == bytes(b)

def test_big_snapshots_differ():
    a = {f"models/file{i}": os.urandom(20_000) for i in range(7)}
    b = dict(a); b["models/file3"] = os.urandom(20_000); del b["models/file6"]
    assert a == b

def test_waits_forever():
    threading.Event().wait()
'''


def run_toy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_toy.py").write_text(TOY)
    env = subprocess_env(CI="true", PYTHONPATH=str(TESTS_DIR))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "big_diffs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-q", str(tmp_path / "test_toy.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_big_byte_comparison_fails_with_digests_and_offset_not_a_full_diff(tmp_path: Path) -> None:
    result = run_toy(tmp_path, "-k", "big_bytes")
    assert result.returncode == 1
    assert "first difference at offset 70000" in result.stdout
    assert "sha256" in result.stdout
    assert len(result.stdout) < 20_000, f"{len(result.stdout)} characters of report"


def test_big_mapping_comparison_names_the_differing_and_missing_keys(tmp_path: Path) -> None:
    result = run_toy(tmp_path, "-k", "big_snapshots")
    assert result.returncode == 1
    assert "'models/file3' differs" in result.stdout
    assert "only left: 'models/file6'" in result.stdout
    assert len(result.stdout) < 20_000, f"{len(result.stdout)} characters of report"


def test_a_hanging_test_fails_with_its_name_at_the_timeout(tmp_path: Path) -> None:
    result = run_toy(tmp_path, "-k", "waits_forever", "-o", "timeout=2")
    assert result.returncode == 1
    assert "Timeout" in result.stdout and "test_waits_forever" in result.stdout


def test_this_suite_runs_under_a_per_test_timeout(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 900
