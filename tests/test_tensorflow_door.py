"""TensorFlow loads in one place, after the CPU's arithmetic is fixed: no other file of the project imports it.

`mnist_pipeline/train/tensorflow_runtime.py` applies `mnist_pipeline/train/cpu_kernels.py`'s choice and then imports
TensorFlow and Keras; an `import keras` anywhere else could run first, in some process, and load them with
the CPU's own kernels and thread counts. Checked on the source of every Python file the project ships or
runs: the package, the stages, tools, benchmarks, experiments and the tests' own helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import PROJECT_ROOT

DOOR = "mnist_pipeline/train/tensorflow_runtime.py"
FOLDERS = ("mnist_pipeline", "stages", "tools", "benchmarks", "experiments", "tests")
TENSORFLOW = ("tensorflow", "keras", "tf_keras")


def imports_tensorflow_directly(path: Path) -> list[int]:
    """Lines that import TensorFlow or Keras without the door having been imported above them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    door_line = min((node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)
                     and any("tensorflow_runtime" in (getattr(node, "module", None) or "") + alias.name
                             for alias in node.names)), default=None)
    lines = []
    for node in ast.walk(tree):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        if any(name.split(".")[0] in TENSORFLOW for name in names) and (door_line is None or node.lineno < door_line):
            lines.append(node.lineno)
    return lines


def test_only_the_door_imports_tensorflow_or_keras_first() -> None:
    files = [p for folder in FOLDERS for p in (PROJECT_ROOT / folder).rglob("*.py")]
    assert len(files) > 50
    offenders = [f"{p.relative_to(PROJECT_ROOT)}:{line}" for p in files
                 if p.relative_to(PROJECT_ROOT).as_posix() != DOOR for line in imports_tensorflow_directly(p)]
    assert not offenders, f"import TensorFlow and Keras from {DOOR}: {offenders}"


def test_the_door_applies_the_cpu_choice_before_importing_tensorflow() -> None:
    tree = ast.parse((PROJECT_ROOT / DOOR).read_text(encoding="utf-8"))
    statements = [node for node in tree.body if not isinstance(node, ast.Expr) or isinstance(node.value, ast.Call)]
    first_tf = next(i for i, n in enumerate(statements) if isinstance(n, ast.Import)
                    and any(a.name.split(".")[0] in TENSORFLOW for a in n.names))
    assert any(isinstance(n, ast.Expr) and "chosen" in ast.unparse(n) for n in statements[:first_tf])
