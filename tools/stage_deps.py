"""The code deps of every stage, computed from the imports: `python tools/stage_deps.py [--check|--write]`.

DVC reruns a stage when a file in its `deps` changes, so each stage must list exactly the project modules it
runs. This tool follows the imports of each stage's entry module (the `python -m` module of its `cmd`) through
the project's own modules, counting imports inside functions too (they run) but not those under `if
TYPE_CHECKING:` (they never run). A package imported whole (`from mnist_pipeline.train import model_types`) is
one whose modules are found at run time: its folder is a dep too, so a module dropped in reruns the stage, and
each of its modules is followed like an import. `--check` exits 1 naming every difference from dvc.yaml;
`--write` puts the computed lists into dvc.yaml, keeping its data deps and comments; `--doc FILE` rewrites the
module-to-stage table in FILE from dvc.yaml.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from pathlib import Path

PACKAGES = ("mnist_pipeline", "stages")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(source: str) -> set[str]:
    """Dotted module names a module imports when it runs (any depth, TYPE_CHECKING blocks excluded)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return names


def whole_packages(root: Path, source: str) -> list[str]:
    """The folders of the project packages a module imports as a whole (`import a.b` or `from a import b`, b a
    package): the modules it finds in them at run time are not named by any import."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    folders = (root.joinpath(*name.split(".")) for name in names if name.split(".")[0] in PACKAGES)
    return sorted(f.relative_to(root).as_posix() for f in folders if (f / "__init__.py").is_file())


def is_code_dep(dep: object) -> bool:
    """A module, or a package folder, of the project: what this tool writes into a stage's deps."""
    return isinstance(dep, str) and (dep.endswith(".py") or dep.split("/")[0] in PACKAGES)


def module_file(root: Path, name: str) -> str | None:
    """The project file of a dotted module name, or None when it is not one of ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def holds_code(path: Path) -> bool:
    """More than a docstring: a package `__init__` that runs something when any module of its package loads."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return not all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def is_module(root: Path, path: Path) -> bool:
    """A project module whose edit can change a run: any `.py` file but a docstring-only package `__init__`."""
    return "__pycache__" not in path.parts and (path.name != "__init__.py" or holds_code(path))


def package_inits(root: Path, module: str) -> list[str]:
    """The `__init__.py` of every package above `module`: Python runs each before the module itself."""
    parts = Path(module).parts[:-1]
    inits = (root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1))
    return [p.relative_to(root).as_posix() for p in inits if p.is_file()]


def code_deps(root: Path, entry_module: str) -> list[str]:
    """Every project module `entry_module` runs, as paths, then the folders of packages whose modules are found
    at run time; a package `__init__` counts only when it holds more than a docstring."""
    start = module_file(root, entry_module)
    if start is None:
        raise SystemExit(f"error: {entry_module}: no such module in {root}")
    seen: set[str] = set()
    folders: set[str] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(init for init in package_inits(root, path) if init not in seen)
        source = (root / path).read_text(encoding="utf-8")
        for name in imported_names(source):
            found = module_file(root, name)
            if found is not None and found not in seen:
                todo.append(found)
        for folder in whole_packages(root, source):
            folders.add(folder)
            todo.extend(p.relative_to(root).as_posix() for p in sorted((root / folder).glob("*.py"))
                        if not p.name.startswith("_"))
    modules = sorted((p for p in seen if is_module(root, root / p)), key=lambda p: (p != start, p))
    return [*modules, *sorted(folders)]


def entry_module(cmd: str) -> str:
    words = shlex.split(cmd)
    return words[words.index("-m") + 1]


def expected_deps(root: Path) -> dict[str, list[str]]:
    """Stage name -> the code deps it should declare, from dvc.yaml's commands."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: code_deps(root, entry_module(body["cmd"])) for name, body in stages.items()}


def differences(root: Path) -> list[str]:
    """One line per stage whose declared code deps differ from its imports."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    lines = []
    for name, wanted in expected_deps(root).items():
        declared = [d for d in stages[name].get("deps", []) if is_code_dep(d)]
        missing, extra = sorted(set(wanted) - set(declared)), sorted(set(declared) - set(wanted))
        if missing:
            lines.append(f"stage {name}: imports but does not declare {', '.join(missing)}")
        if extra:
            lines.append(f"stage {name}: declares but never imports {', '.join(extra)}")
    return lines


def write(root: Path) -> None:
    """Replace each stage's `.py` deps with the computed ones, keeping data deps, order and comments."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = root / "dvc.yaml"
    spec = yaml.load(path.read_text(encoding="utf-8"))
    for name, wanted in expected_deps(root).items():
        deps = spec["stages"][name]["deps"]
        data = [d for d in deps if not is_code_dep(d)]
        deps.clear()
        deps.extend([*wanted, *data])
    with path.open("w", encoding="utf-8") as f:
        yaml.dump(spec, f)


TABLE_START = "<!-- module-stage table: python tools/stage_deps.py --doc docs/module-stages.md -->"
TABLE_END = "<!-- end of the module-stage table -->"


def module_table(root: Path) -> str:
    """Markdown: each library module and the stages whose `.py` deps in dvc.yaml name it (editing it reruns them)."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    declared = {name: {d for d in body.get("deps", []) if isinstance(d, str) and d.endswith(".py")}
                for name, body in stages.items()}
    modules = sorted(p.relative_to(root).as_posix() for package in PACKAGES for p in (root / package).rglob("*.py")
                     if is_module(root, p))
    header = "| module | " + " | ".join(stages) + " |"
    rows = [header, "| --- |" + " --- |" * len(stages)]
    for module in modules:
        rows.append(f"| `{module}` | " + " | ".join("x" if module in declared[s] else "" for s in stages) + " |")
    return "\n".join(rows)


def write_doc(root: Path, doc: Path) -> None:
    """Replace the table between its markers in `doc` with the one dvc.yaml gives now."""
    from tools.doc_tables import replace_table

    replace_table(doc, TABLE_START, TABLE_END, module_table(root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml differs from the imports")
    mode.add_argument("--write", action="store_true", help="put the computed code deps into dvc.yaml")
    mode.add_argument("--doc", type=Path, help="rewrite the module-stage table in this markdown file from dvc.yaml")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="project root")
    args = parser.parse_args(argv)
    if not (args.root / "dvc.yaml").is_file():
        print(f"error: {args.root}: no dvc.yaml here: expected the project root", file=sys.stderr)
        return 2
    if args.write:
        write(args.root)
        return 0
    if args.doc:
        write_doc(args.root, args.doc)
        return 0
    if args.check:
        found = differences(args.root)
        for line in found:
            print(f"error: dvc.yaml: {line}", file=sys.stderr)
        return 1 if found else 0
    for name, deps in expected_deps(args.root).items():
        print(f"{name}: {' '.join(deps)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `tools.*` from the root
    sys.exit(main())
