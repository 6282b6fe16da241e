"""What dvc.yaml and params.yaml declare, read from the files at run time.

The workflow tests (declared deps, reruns, reproducibility) derive their tables from here rather
than from a hard-coded list, so they keep holding as stages, deps and params are added.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline.config import choices as config_choices
from mnist_pipeline.config import flatten

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage, with every kind of output (outs, metrics, plots) merged into `outs`."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]

    @property
    def module(self) -> str:
        """`stages.train` for `python -m stages.train ...`."""
        words = shlex.split(self.cmd)
        return words[words.index("-m") + 1]

    @property
    def path_args(self) -> list[str]:
        """The arguments after the module: by convention (design.md) they are all paths."""
        words = shlex.split(self.cmd)
        return words[words.index("-m") + 2 :]

    @property
    def code_deps(self) -> set[str]:
        return {d for d in self.deps if d.endswith(".py")}


def _entry_path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def load_stages(root: Path) -> dict[str, Stage]:
    """The stages of `root/dvc.yaml`, in file order (which is also a topological order here)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    stages = {}
    for name, body in spec["stages"].items():
        params: list[str] = []
        for entry in body.get("params", []):
            if isinstance(entry, dict):  # {file: [keys]}: only params.yaml is used in this project
                for file, keys in entry.items():
                    assert file == PARAMS_FILE, f"stage {name} reads params from {file}"
                    params.extend(keys)
            else:
                params.append(entry)
        outs = [_entry_path(o) for kind in ("outs", "metrics", "plots") for o in body.get(kind, [])]
        stages[name] = Stage(name, body["cmd"], tuple(body.get("deps", [])), tuple(params), tuple(outs))
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
    """The allowed values of a choice key, from the typed config (which takes them from their owners)."""
    return list(config_choices(key))


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
