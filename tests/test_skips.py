"""A test that cannot run for want of a tool skips on a developer's machine and fails in CI, everywhere:
no test module skips by its own means, so none can skip in CI without a word."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# pytest's own ways to skip, which skip in CI too; conftest.py's skip_unless_ci, import_or_skip and
# requires wrap them.
SKIPS = {"skip", "skipif", "importorskip"}


def own_skips(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in SKIPS:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_test_module_skips_except_through_the_ci_aware_helpers() -> None:
    # in_process_only.py is the fast tier's plugin: conftest.py refuses to load it in CI.
    exempt = {"conftest.py", "in_process_only.py"}
    found = [line for path in sorted(TESTS.glob("*.py")) if path.name not in exempt for line in own_skips(path)]
    assert found == [], "use conftest.skip_unless_ci, import_or_skip or requires:\n" + "\n".join(found)


def test_the_audit_finds_a_skip(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text("import pytest\n@pytest.mark.skipif(True, reason='x')\ndef test_a():\n"
                      "    pytest.importorskip('nothing')\n")
    assert own_skips(module) == ["test_x.py:2: pytest.mark.skipif", "test_x.py:4: pytest.importorskip"]
