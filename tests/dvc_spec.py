"""What dvc.yaml and params.yaml declare, read from the files at run time.

The workflow tests (declared deps, reruns, reproducibility) derive their tables from here rather
than from a hard-coded list, so they keep holding as stages, deps and params are added.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline.core.config import choices as config_choices
from mnist_pipeline.core.config import flatten
from mnist_pipeline.train.registry import schema

PARAMS_FILE = "params.yaml"
# DVC's templating: `${data.folder}` takes the value from params.yaml; `\${` is a literal `${`.
TEMPLATE = re.compile(r"(?<!\\)\$\{\s*(?P<key>[^}]*?)\s*\}")


@dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage, with every kind of output (outs, metrics, plots) merged into `outs`."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]
    templated: frozenset[str] = frozenset()  # params.yaml keys interpolated into cmd, deps or outs

    @property
    def module(self) -> str:
        """`stages.train` for `python -m stages.train ...`."""
        words = shlex.split(self.cmd)
        return words[words.index("-m") + 1]

    @property
    def path_args(self) -> list[str]:
        """The arguments after the module (and after `--`, which keeps a param-made path from being an option):
        by convention (design.md) they are all paths."""
        words = shlex.split(self.cmd)
        args = words[words.index("-m") + 2 :]
        return args[1:] if args[:1] == ["--"] else args

    @property
    def code_deps(self) -> set[str]:
        return {d for d in self.deps if d.endswith(".py")}


def _entry_path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def _lookup(tree: Mapping[str, Any], key: str, where: str) -> Any:
    value: Any = tree
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise AssertionError(f"{where}: ${{{key}}} is not a key of {PARAMS_FILE}")
        value = value[part]
    if isinstance(value, (Mapping, list)) or value is None:
        raise AssertionError(f"{where}: ${{{key}}} is {value!r} in {PARAMS_FILE}: expected a string or a number")
    return value


def interpolate(text: str, tree: Mapping[str, Any], where: str, used: set[str]) -> str:
    """`text` with every `${key}` replaced by params.yaml's value, as `dvc repro` runs it; keys added to `used`."""

    def value(match: re.Match[str]) -> str:
        key = match["key"]
        found = _lookup(tree, key, where)
        used.add(key)
        return str(found).lower() if isinstance(found, bool) else str(found)

    return TEMPLATE.sub(value, text).replace("\\${", "${")


def params_tree(root: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`root/params.yaml` as a tree, with dotted-key overrides applied (a configuration other than the file's)."""
    path = root / PARAMS_FILE
    assert path.is_file(), f"{path}: missing: dvc.yaml's ${{...}} are filled from it, as DVC does"
    tree = yaml.safe_load(path.read_text())
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        assert leaf in node, f"override {key}: not a key of {PARAMS_FILE}"
        node[leaf] = value
    return tree


def load_stages(root: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Stage]:
    """The stages of `root/dvc.yaml`, in file order (which is also a topological order here).

    `${key}` in cmd, deps and outs is replaced from `root/params.yaml` (with `overrides`), as DVC does:
    the stage is what `dvc repro` would run, so a test may pass `cmd` to a shell.
    """
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    tree: dict[str, Any] | None = None
    stages = {}
    for name, body in spec["stages"].items():
        used: set[str] = set()

        def resolve(text: str, field: str, name: str = name, used: set[str] = used) -> str:
            nonlocal tree
            if "${" not in text:
                return text
            if tree is None:
                tree = params_tree(root, overrides)
            return interpolate(text, tree, f"dvc.yaml: stage {name}: {field}", used)

        params: list[str] = []
        for entry in body.get("params", []):
            if isinstance(entry, dict):  # {file: [keys]}: only params.yaml is used in this project
                for file, keys in entry.items():
                    assert file == PARAMS_FILE, f"stage {name} reads params from {file}"
                    params.extend(keys)
            else:
                params.append(entry)
        outs = [resolve(_entry_path(o), kind) for kind in ("outs", "metrics", "plots") for o in body.get(kind, [])]
        deps = [resolve(d, "deps") for d in body.get("deps", [])]
        cmd = resolve(body["cmd"], "cmd")
        stages[name] = Stage(name, cmd, tuple(deps), tuple(params), tuple(outs), frozenset(used))
    return stages


def leaf_params(root: Path) -> dict[str, Any]:
    """Every leaf key of params.yaml (dotted), with its value; schema leaves like mirrors stay whole."""
    return flatten(yaml.safe_load((root / PARAMS_FILE).read_text()))


def expand(declared: tuple[str, ...], leaves: dict[str, Any]) -> set[str]:
    """Declared params as leaf keys: a section such as `model` stands for all keys under it."""
    keys: set[str] = set()
    for item in declared:
        matched = {k for k in leaves if k == item or k.startswith(item + ".")}
        assert matched, f"dvc.yaml declares param '{item}', which is not in params.yaml"
        keys |= matched
    return keys


def choices(key: str) -> list[str]:
    """The allowed values of a choice key, from the typed config (which takes them from their owners: the model
    types from the registry)."""
    return list(config_choices(key, schema()))


def covers(path: str, declared: str) -> bool:
    """`path` is `declared` or lies inside it (a file in a declared directory)."""
    return path == declared or path.startswith(declared.rstrip("/") + "/")


def downstream(stages: dict[str, Stage], name: str) -> set[str]:
    """Stages with a dep on one of `name`'s outputs, directly or through others."""
    found: set[str] = set()
    frontier = [name]
    while frontier:
        outs = stages[frontier.pop()].outs
        for other in stages.values():
            if other.name not in found and any(covers(d, o) or covers(o, d) for d in other.deps for o in outs):
                found.add(other.name)
                frontier.append(other.name)
    return found


def output_files(root: Path, stages: dict[str, Stage]) -> dict[str, str]:
    """sha256 of every file under every declared output, keyed by path relative to `root`."""
    digests = {}
    for stage in stages.values():
        for out in stage.outs:
            path = root / out
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                digests[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests
