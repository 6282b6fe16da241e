"""Short reports for failed comparisons of big values: digests and the differing keys, never a full diff.

Where `CI` is set, pytest turns its truncation off and builds the whole difference of two values before
any report is chosen; for a mapping of a few 20 KB files that is a character diff of over a minute, so
a failing byte comparison in CI looked like a hang. This plugin
- reports a comparison of big values by size, sha256 and first differing offset, and a mapping of
  them by which keys differ;
- takes `CI` (and `BUILD_NUMBER`, pytest's other sign of CI) out of the test processes' environment,
  so pytest's own reports of the rest stay as short as on a developer's machine. The suite's own CI
  behaviour (fail, never skip, on a missing tool or data) reads `IN_CI_VARIABLE`, set here instead.

Loaded by conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

# Set for the test processes (xdist's workers inherit it) where CI was set.
IN_CI_VARIABLE = "MNIST_PIPELINE_TESTS_IN_CI"
CI_VARIABLES = ("CI", "BUILD_NUMBER")
BIG = 2048  # bytes or characters past which a value is summarised
MAX_LISTED = 20


def _is_blob(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview, str))


def _size(value: Any) -> int:
    if _is_blob(value):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_size(k) + _size(v) for k, v in value.items())
    if isinstance(value, Sequence):
        return sum(_size(v) for v in value)
    return 0


def _digest(value: Any) -> str:
    if _is_blob(value):
        unit = "chars" if isinstance(value, str) else "bytes"
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return f"{len(value)} {unit}, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
    return f"{type(value).__name__} {repr(value)[:60]}"


def _first_difference(left: Any, right: Any) -> str:
    for i, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return f"first difference at offset {i}"
    return f"equal up to offset {min(len(left), len(right))}, then one side ends"


def _explain_blobs(left: Any, right: Any) -> list[str]:
    return [f"left:  {_digest(left)}", f"right: {_digest(right)}", _first_difference(left, right)]


def _explain_mappings(left: Mapping[Any, Any], right: Mapping[Any, Any]) -> list[str]:
    lines = []
    only_left = [k for k in left if k not in right]
    only_right = [k for k in right if k not in left]
    differing = [k for k in left if k in right and left[k] != right[k]]
    for title, keys in (("only left", only_left), ("only right", only_right)):
        if keys:
            more = " ..." if len(keys) > MAX_LISTED else ""
            lines.append(f"{title}: {', '.join(map(repr, keys[:MAX_LISTED]))}{more}")
    for key in differing[:MAX_LISTED]:
        lines.append(f"{key!r} differs: left {_digest(left[key])}; right {_digest(right[key])}")
    if len(differing) > MAX_LISTED:
        lines.append(f"... and {len(differing) - MAX_LISTED} more differing keys")
    return lines


def _explain_sequences(left: Sequence[Any], right: Sequence[Any]) -> list[str]:
    lines = [f"lengths: left {len(left)}, right {len(right)}"]
    differing = [i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b]
    for i in differing[:MAX_LISTED]:
        lines.append(f"[{i}] differs: left {_digest(left[i])}; right {_digest(right[i])}")
    return lines


def pytest_configure(config: object) -> None:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes") or "BUILD_NUMBER" in os.environ
    if ci:
        os.environ[IN_CI_VARIABLE] = "1"
    for name in CI_VARIABLES:
        os.environ.pop(name, None)


def pytest_assertrepr_compare(op: str, left: Any, right: Any) -> list[str] | None:
    """Used before pytest's own report, which is then never built (it is produced lazily)."""
    if op != "==" or max(_size(left), _size(right)) <= BIG:
        return None
    head = f"{type(left).__name__} == {type(right).__name__} failed (big values: digests, not a diff)"
    if _is_blob(left) and _is_blob(right):
        return [head, *_explain_blobs(left, right)]
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return [head, *_explain_mappings(left, right)]
    if isinstance(left, Sequence) and isinstance(right, Sequence) and not _is_blob(left) and not _is_blob(right):
        return [head, *_explain_sequences(left, right)]
    return [head, f"left:  {_digest(left)}", f"right: {_digest(right)}"]
