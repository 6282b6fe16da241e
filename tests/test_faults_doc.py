"""docs/faults.md claims no more than its tests check.

Each row of the doc's tables names its tests (`test_x.py::test_name` or `test_x.py::test_name[case]`)
and quotes what the user sees: the `error: ...` line, or its distinctive part after `...`, a warning or
progress line, a server's answer (MESSAGE says which quoted text is a line of output). Every named
test must exist (pytest's own collection says so), and every quoted message must be written in one of
the row's tests: in the test function, its decorators, or the module-level tables and helpers it names;
docstrings do not count, as they check nothing.

In a test's strings an f-string field or a `{name}` placeholder stands for one word of the message (a
line number, a path, a hash); in the doc, `...` marks text left out.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

import pytest
from conftest import PROJECT_ROOT, subprocess_env

DOC = PROJECT_ROOT / "docs" / "faults.md"
TESTS = PROJECT_ROOT / "tests"
ROW = re.compile(r"^\|\s*(\d+)\s*\|")
# test_x.py::test_name, with an optional [case] that may itself hold brackets: [model.hidden=[64, 0]]
TEST_REF = re.compile(r"(test_\w+\.py)::(test_\w+)(\[(?:[^\[\]]|\[[^\[\]]*\])*\])?")
PLACEHOLDER = re.compile(r"\{\w+\}")
ELIDED = "..."
HOLE = None  # a token of a template that stands for one word of the message

Template = list[str | None]


@dataclass(frozen=True)
class Row:
    number: int
    messages: tuple[str, ...]
    tests: tuple[tuple[str, str, str], ...]  # (file, function, "[case]" or "")

    def __str__(self) -> str:
        return f"docs/faults.md row {self.number}"


def cells(line: str) -> list[str]:
    """A Markdown table row's cells; a `|` inside backticks is text, not a border."""
    found, current, quoted = [], "", False
    for char in line.strip().removeprefix("|").removesuffix("|"):
        if char == "`":
            quoted = not quoted
        if char == "|" and not quoted:
            found.append(current.strip())
            current = ""
        else:
            current += char
    return [*found, current.strip()]


# A quoted output line, not a file name or a key: an error or warning line, a line elided with `...`,
# a command's or a file's line (`train: resuming ...`, `metrics/x.json: ...`), a server's answer.
MESSAGE = re.compile(r"^(error: |warning: |\.\.\.|\{\"error\": |(GET|POST) /|[\w./-]+: \S.{20,})")


def is_message(quoted: str) -> bool:
    return bool(MESSAGE.match(quoted))


def doc_rows() -> list[Row]:
    rows = []
    for line in DOC.read_text().splitlines():
        if not ROW.match(line):
            continue
        number, _fault, _trigger, sees, tests = cells(line)
        messages = tuple(m for m in re.findall(r"`([^`]+)`", sees) if is_message(m))
        rows.append(Row(int(number), messages, tuple(TEST_REF.findall(tests))))
    return rows


ROWS = doc_rows()


@cache
def collected() -> frozenset[str]:
    """Node ids of the test files the doc names, as pytest collects them (file::name[case])."""
    files = sorted({str(TESTS / file) for row in ROWS for file, _, _ in row.tests})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=PROJECT_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"collecting {files} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return frozenset(line.removeprefix("tests/") for line in result.stdout.splitlines() if "::" in line)


@cache
def module(file: str) -> ast.Module:
    return ast.parse((TESTS / file).read_text(), filename=file)


def module_names(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level tables, constants, helpers and classes, by name."""
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def split_placeholders(text: str) -> Template:
    tokens: Template = []
    for i, part in enumerate(PLACEHOLDER.split(text)):
        if i:
            tokens.append(HOLE)
        if part:
            tokens.append(part)
    return tokens


def docstring_ids(tree: ast.AST) -> set[int]:
    """The string constants of `tree` that are docstrings (of the module, a class or a function)."""
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def checks(statement: ast.stmt) -> bool:
    """A statement of a test body that can check a message: an assert, a `with pytest.raises(...)`, a call
    of a helper that asserts (check_*, assert_*, expect_*), or an assignment of a name that one of them uses."""
    if isinstance(statement, ast.Assert):
        return True
    if isinstance(statement, ast.With):
        return any("raises" in ast.unparse(item.context_expr) for item in statement.items)
    text = ast.unparse(statement)
    return bool(re.search(r"\b(assert|check|expect)\w*\(", text))


def _stored(node: ast.AST | None) -> list[str]:
    return [n.id for n in ast.walk(node) if isinstance(n, ast.Name)] if node is not None else []


def _loaded(node: ast.AST | None) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} if node is not None else set()


def idle_ids(test: ast.FunctionDef) -> set[int]:
    """The string constants of a test's own body that no check can see: in statements that only drive the
    test (write a file, run a command, print) and are not assignments to a name a check uses."""
    body = [s for s in ast.walk(test) if isinstance(s, ast.stmt) and s is not test]
    used = {n.id for s in body if checks(s) for n in ast.walk(s) if isinstance(n, ast.Name)}
    # What feeds a used name is used too: `cases = {...}` read by `for name, expected in cases.items()`.
    flows = []
    for statement in body:
        if isinstance(statement, ast.For):
            flows.append((set(_stored(statement.target)), _loaded(statement.iter)))
        elif isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            flows.append(({n for t in targets for n in _stored(t)}, _loaded(statement.value)))
    while True:
        grown = used | {n for targets, sources in flows if targets & used for n in sources}
        if grown == used:
            break
        used = grown
    idle: set[int] = set()
    for statement in body:
        if isinstance(statement, ast.If | ast.For | ast.With | ast.Try | ast.While) or checks(statement):
            continue
        targets = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        if targets & used:
            continue
        idle |= {id(n) for n in ast.walk(statement) if isinstance(n, ast.Constant | ast.JoinedStr)}
    return idle


@cache
def templates(file: str, function: str) -> tuple[tuple[str | None, ...], ...]:
    """Every string the test can check against: its own, its decorators', and those of the module-level
    names it uses (followed through the names those use)."""
    tree = module(file)
    names = module_names(tree)
    test = names.get(function)
    assert isinstance(test, ast.FunctionDef), f"{file} has no test function {function}"
    seen, todo, found = {function}, [test], []
    docstrings = docstring_ids(tree)
    idle = idle_ids(test)
    while todo:
        node = todo.pop()
        for sub in ast.walk(node):
            if id(sub) in docstrings or id(sub) in idle:  # it describes or drives; it checks nothing
                continue
            if isinstance(sub, ast.Name) and sub.id in names and sub.id not in seen:
                seen.add(sub.id)
                todo.append(names[sub.id])
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                found.append(tuple(split_placeholders(sub.value)))
            elif isinstance(sub, ast.JoinedStr):
                tokens: Template = []
                for value in sub.values:
                    if isinstance(value, ast.Constant):
                        tokens.extend(split_placeholders(value.value))
                    else:
                        tokens.append(HOLE)
                found.append(tuple(tokens))
    return tuple(found)


def word_hole(first: bool = False, last: bool = False) -> str:
    return r"(\S+)" if first or last else r"(\S+?)"


def occurs_in(text: str, template: tuple[str | None, ...]) -> bool:
    """Whether `text` is part of some string the template can make, a hole making one word.

    At least half of `text` must come from the template's own characters, so holes alone never match."""
    if any(token is not HOLE and text in token for token in template):
        return True
    for start in range(len(template)):
        for end in range(start + 1, len(template)):
            parts = []
            for i in range(start, end + 1):
                token = template[i]
                if token is HOLE:
                    parts.append(word_hole(i == start, i == end))
                elif i == start:
                    parts.append("(?:" + "|".join(re.escape(token[a:]) for a in range(len(token))) + ")")
                elif i == end:
                    parts.append("(?:" + "|".join(re.escape(token[:b]) for b in range(len(token), 0, -1)) + ")")
                else:
                    parts.append(re.escape(token))
            match = re.fullmatch("".join(parts), text)
            if match and len(text) - sum(len(g) for g in match.groups()) >= len(text) / 2:
                return True
    return False


def fragments(message: str) -> list[str]:
    """The parts of a doc message around its `...` elisions worth looking for (3 characters or more)."""
    return [part.strip() for part in message.split(ELIDED) if len(part.strip()) >= 3]


def checked_by(message: str, found: tuple[tuple[str | None, ...], ...]) -> bool:
    def anywhere(text: str) -> bool:
        return any(occurs_in(text, template) for template in found)

    if anywhere(message):  # whole, `...` and all (a message may hold a literal `...`)
        return True
    parts = fragments(message)
    return ELIDED in message and bool(parts) and all(anywhere(part) for part in parts)


def test_the_doc_has_its_rows_in_order() -> None:
    assert [row.number for row in ROWS] == list(range(1, len(ROWS) + 1))


@pytest.mark.parametrize("row", ROWS, ids=[f"row {row.number}" for row in ROWS])
def test_every_named_test_exists(row: Row) -> None:
    assert row.tests, f"{row} names no test (expected test_x.py::test_name)"
    nodes = collected()
    for file, function, case in row.tests:
        ref = f"{file}::{function}{case}"
        if case:
            assert ref in nodes, f"{row}: pytest collects no {ref}"
        else:
            assert any(node == ref or node.startswith(f"{ref}[") for node in nodes), f"{row}: pytest collects no {ref}"


@pytest.mark.parametrize("row", [row for row in ROWS if row.messages],
                         ids=[f"row {row.number}" for row in ROWS if row.messages])
def test_every_quoted_message_is_checked_by_a_named_test(row: Row) -> None:
    found = tuple(t for file, function, _ in row.tests for t in templates(file, function))
    for message in row.messages:
        names = ", ".join(f"{file}::{function}" for file, function, _ in row.tests)
        assert checked_by(message, found), f"{row}: no string in {names} checks `{message}`"


# The matcher itself, on made-up strings: it must refuse what it should refuse.
@pytest.mark.parametrize(
    ("text", "template", "expected"),
    [
        ("error: a.npy: bad", ("error: a.npy: bad",), True),
        ("a.npy: bad", ("error: a.npy: bad (more)",), True),  # a part of a longer string
        ("error: a.npy: worse", ("error: a.npy: bad",), False),
        ("error: line 39 is bad", ("error: line ", HOLE, " is bad"), True),
        ("error: line 3 9 is bad", ("error: line ", HOLE, " is bad"), False),  # a hole is one word
        (": closed after N of M bytes", (HOLE, ": x: ", HOLE, ": closed after ", HOLE, " of ", HOLE, " bytes"), True),
        ("anything at all", (HOLE, " ", HOLE, " ", HOLE), False),  # at least half from the template
    ],
)
def test_occurs_in(text: str, template: tuple[str | None, ...], expected: bool) -> None:
    assert occurs_in(text, template) is expected


def test_elided_message_needs_each_part() -> None:
    found = ((HOLE, ": checksum mismatch (payload sha256 ", HOLE, "..., expected ", HOLE, "...)"),)
    assert checked_by("...: checksum mismatch (payload sha256 ...)", found)
    assert not checked_by("...: checksum mismatch (payload sha1 ...)", found)
    assert not checked_by("...: timed out ...", found)


@pytest.mark.parametrize(("quoted", "expected"), [
    ("error: a.npy: bad", True), ("...: checksum mismatch", True), ("warning: digits/dim.png: low contrast", True),
    ("train: resuming at epoch 3/4 from ...", True), ("GET /api/model: Host 'x': expected one of a", True),
    ("metrics/confusion.png", False), ("preprocess.bad_images: skip", False), ("model.hidden: [64, 0]", False),
])
def test_every_quoted_output_line_counts_as_a_message(quoted: str, expected: bool) -> None:
    """Not only `error:` lines: progress, warning and server lines are held to their tests too."""
    assert is_message(quoted) is expected


def test_a_docstring_checks_nothing() -> None:
    """A message written only in a test's docstring is not checked by that test."""
    tree = ast.parse('def test_x():\n    """error: only described here"""\n    assert run() == "error: checked"\n')
    docstrings = docstring_ids(tree)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings]
    assert strings == ["error: checked"]


def test_a_string_counts_only_where_a_check_can_see_it() -> None:
    """A message that the test only writes, prints or passes to a command proves nothing; one in an assert,
    or in a table an assert reads, does."""
    source = '''
def test_x(tmp_path):
    (tmp_path / "f").write_text("error: only written")
    print("error: only printed")
    cases = {"a": "error: in a table the assert reads"}
    for name, expected in cases.items():
        assert run(name) == expected
    assert out == "error: in the assert"
'''
    test = ast.parse(source).body[0]
    assert isinstance(test, ast.FunctionDef)
    idle = idle_ids(test)
    strings = {n.value: id(n) in idle for n in ast.walk(test)
               if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert strings["error: only written"] and strings["error: only printed"]
    assert not strings["error: in a table the assert reads"] and not strings["error: in the assert"]
