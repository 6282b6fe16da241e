"""Named configurations: `presets/<name>.yaml` holds only the keys that differ from params.yaml.

A preset becomes `-S key=value` arguments for DVC, so switching a whole configuration is one command
and every run stays an ordinary, comparable experiment:

    dvc exp run $(python -m mnist_pipeline.presets cnn)
    dvc exp run $(python -m mnist_pipeline.presets fashion-cnn) -S train.seed=1

Every key is checked against SCHEMA here, so a stale preset fails before DVC starts a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.params import SCHEMA, flatten

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"


def available(directory: Path = PRESETS_DIR) -> list[str]:
    """Preset names, sorted: the stems of the YAML files in `directory`."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_preset(name: str, directory: Path = PRESETS_DIR) -> dict[str, Any]:
    """The preset's overrides as clean dotted keys, or a PipelineError naming the bad name, key or value."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(available(directory)) or "none"
        raise PipelineError(f"unknown preset '{name}' (available: {names}; files in {directory})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict) or not raw:
        raise PipelineError(f"{path}: expected a YAML mapping of params.yaml sections (model, train, ...)")
    clean: dict[str, Any] = {}
    for key, value in flatten(raw).items():
        if key not in SCHEMA:
            raise PipelineError(f"{path}: unknown key '{key}' (not in params.yaml's SCHEMA)")
        converted = SCHEMA[key].convert(value)
        if converted is None:
            raise PipelineError(f"{path}: {key} = {value!r}: expected {SCHEMA[key].expected}")
        clean[key] = converted
    return clean


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the `dvc exp run` arguments of a named preset: dvc exp run $(python -m "
        "mnist_pipeline.presets NAME)",
    )
    parser.add_argument("name", nargs="?", help="preset name; omit to list them")
    args = parser.parse_args(argv)
    try:
        if args.name is None:
            for name in available():
                print(f"{name}: {' '.join(set_args(load_preset(name)))}")
            return 0
        print(" ".join(set_args(load_preset(args.name))))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
