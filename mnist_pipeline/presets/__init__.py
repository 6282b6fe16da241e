"""Named configurations: `<name>.yaml` beside this file holds only the keys that differ from params.yaml.

A preset becomes `-S key=value` arguments for DVC, so switching a whole configuration is one command
and every run stays an ordinary, comparable experiment:

    dvc exp run $(python -m mnist_pipeline.presets cnn)
    dvc exp run $(python -m mnist_pipeline.presets fashion-cnn) -S train.seed=1

The files ship inside the package, so a checkout and an installed package find them alike. Each is
read with the params loader and checked by applying it to the workspace's params.yaml, so a stale
preset fails before DVC starts a run.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from mnist_pipeline.core.cli import run_command
from mnist_pipeline.core.config import PARAMS_FILE, flatten, load_yaml, with_overrides
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.train.registry import load_config

SUFFIX = ".yaml"


def shipped() -> Traversable:
    """The folder of presets inside the installed package (or the checkout)."""
    return resources.files(__package__)


def available(folder: Traversable | Path | None = None) -> list[str]:
    """Preset names, sorted: the stems of the YAML files in the presets folder."""
    folder = folder or shipped()
    return sorted(p.name.removesuffix(SUFFIX) for p in folder.iterdir() if p.name.endswith(SUFFIX))


def load_preset(name: str, folder: Traversable | Path | None = None, params: str = PARAMS_FILE) -> dict[str, Any]:
    """The preset's overrides as dotted keys, checked on top of `params` (the workspace's params.yaml,
    which `dvc exp run -S` changes); a PipelineError names what is wrong.

    Only names of files in the folder are accepted: a name is never a path.
    """
    folder = folder or shipped()
    names = available(folder)
    if name not in names:
        raise PipelineError(f"unknown preset '{name}' (available: {', '.join(names) or 'none'})")
    with resources.as_file(folder / f"{name}{SUFFIX}") as path:
        tree = load_yaml(path)
        shown = f"presets/{name}{SUFFIX}"
        if not isinstance(tree, dict) or not tree:
            raise PipelineError(f"{shown}: expected a YAML mapping of params.yaml sections (model, train, ...)")
        overrides = flatten(tree)
        with_overrides(load_config(params), overrides, shown)
    return overrides


def format_value(value: Any) -> str:
    """A value as DVC's `-S` parser reads it back: `true`, `0.003`, `[32,64]`; never a space (shell-split)."""
    if isinstance(value, str):
        if not value or any(c.isspace() or c in "'\"$`\\" for c in value):
            raise PipelineError(f"preset value {value!r}: a string with spaces or quotes cannot pass through $(...)")
        return value
    return json.dumps(value, separators=(",", ":"))


def set_args(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` pairs, in the preset's order."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={format_value(value)}"]
    return args


def print_presets(name: str | None) -> None:
    if name is None:
        for each in available():
            print(f"{each}: {' '.join(set_args(load_preset(each)))}")
    else:
        print(" ".join(set_args(load_preset(name))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_pipeline.presets",
        description="Print the `dvc exp run` arguments of a named preset: dvc exp run $(python -m "
        "mnist_pipeline.presets NAME)",
    )
    parser.add_argument("name", nargs="?", help="preset name; omit to list them")
    args = parser.parse_args(argv)
    run_command(lambda: print_presets(args.name))
