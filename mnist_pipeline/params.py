"""Load, validate and hand out `params.yaml` values, recording which keys each stage reads.

Validation happens once, before any work, so a typo or a bad value ends in one line that
names the key, the value and what is allowed. The record of read keys lets a test compare
what a stage really reads with what `dvc.yaml` declares (see tests/test_declared_deps.py).
"""

from __future__ import annotations

import atexit
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnist_pipeline.errors import PipelineError

TRACE_ENV = "MNIST_PIPELINE_TRACE"
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "selu", "gelu", "softplus", "swish", "linear")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw", "nadam", "adagrad")
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Rule:
    """How one leaf key is checked: `convert` returns the clean value or None when invalid."""

    convert: Callable[[Any], Any]
    expected: str
    options: tuple[str, ...] = ()  # named choices, for a did-you-mean hint on a near miss


def _int(low: int, high: int | None = None) -> Rule:
    def convert(v: Any) -> Any:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
        return v if ok else None

    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Rule(convert, text)


def _float(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True) -> Rule:
    def convert(v: Any) -> Any:
        # PyYAML (YAML 1.1) reads `1e-3` as a string; accept it as the number the user meant.
        if isinstance(v, str) and _FLOAT_TEXT.match(v.strip()):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        v = float(v)
        # YAML's .nan and .inf pass every comparison below unnoticed; no knob here means them.
        if not math.isfinite(v) or v < low or (low_open and v == low):
            return None
        if high is not None and (v > high or (high_open and v == high)):
            return None
        return v

    left = "(" if low_open else "["
    if high is None:
        text = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        text = f"a number in {left}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(convert, text)


def _choice(options: tuple[str, ...]) -> Rule:
    return Rule(lambda v: v if isinstance(v, str) and v in options else None, "one of " + ", ".join(options), options)


def _bool() -> Rule:
    return Rule(lambda v: v if isinstance(v, bool) else None, "true or false")


def _int_list(low: int, min_len: int, max_len: int = 16) -> Rule:
    def convert(v: Any) -> Any:
        if not isinstance(v, list) or not min_len <= len(v) <= max_len:
            return None
        ok = all(isinstance(x, int) and not isinstance(x, bool) and x >= low for x in v)
        return list(v) if ok else None

    text = f"a list of {min_len} to {max_len} integers >= {low}"
    return Rule(convert, text)


def _mirrors() -> Rule:
    from mnist_pipeline.datasets import DATASETS

    def convert(v: Any) -> Any:
        if not isinstance(v, dict) or set(v) != set(DATASETS):
            return None
        for urls in v.values():
            if not isinstance(urls, list) or not all(
                isinstance(u, str) and u.startswith(("https://", "http://")) for u in urls
            ):
                return None
        return {k: list(u) for k, u in v.items()}

    names = ", ".join(DATASETS)
    return Rule(convert, f"a mapping with exactly the keys {names}, each a list of http(s) URLs")


# Every key params.yaml may hold. A key missing here is a typo; a key missing there is an error.
SCHEMA: dict[str, Rule] = {
    "data.dataset": _choice(("mnist", "fashion_mnist")),
    "download.mirrors": _mirrors(),
    "download.timeout_s": _float(0.0, low_open=True),
    "download.retries": _int(0, 10),
    "preprocess.scale": _float(0.0, low_open=True),
    "preprocess.offset": _float(-1e6, 1e6),
    "preprocess.val_size": _int(0),
    "preprocess.seed": _int(0),
    "preprocess.train_limit": _int(0),
    "preprocess.test_limit": _int(0),
    "model.type": _choice(("mlp", "cnn")),
    "model.hidden": _int_list(1, 0),
    "model.activation": _choice(ACTIVATIONS),
    "model.dropout": _float(0.0, 1.0),
    "model.cnn.filters": _int_list(1, 1, 4),
    "model.cnn.kernel_size": _int(1, 7),
    "model.cnn.dense": _int(0),
    "model.cnn.dropout": _float(0.0, 1.0),
    "model.cnn.batch_norm": _bool(),
    "model.cnn.augment_shift": _float(0.0, 0.5),
    "model.cnn.augment_rotation": _float(0.0, 0.5),
    "train.epochs": _int(1),
    "train.batch_size": _int(1),
    "train.optimizer": _choice(OPTIMIZERS),
    "train.learning_rate": _float(0.0, low_open=True),
    "train.lr_schedule": _choice(("constant", "one_cycle")),
    "train.seed": _int(0),
    "train.cpu_threads": _int(0, 64),
    "train.strategy": _choice(("default", "mirrored", "multi_worker")),
    "evaluate.batch_size": _int(1),
    "predict.count": _int(1, 100),
    "predict.start": _int(0),
}

_read_keys: set[str] = set()


class Params:
    """Validated params; every `params[key]` is recorded so tests can check dvc.yaml declarations."""

    def __init__(self, values: dict[str, Any], path: str) -> None:
        self._values = values
        self.path = path

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(f"{key} is not a params.yaml key (see SCHEMA in mnist_pipeline/params.py)")
        _read_keys.add(key)
        return self._values[key]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a nested mapping; values that are schema leaves (mirrors) stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in SCHEMA:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _shown(value: Any, limit: int = 80) -> str:
    """The bad value as the user wrote it, cut short so the error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _section_keys(section: str) -> list[str]:
    return [k for k in SCHEMA if k.startswith(section + ".")]


def _unknown_key(key: str, path: str) -> PipelineError:
    """Name the typo and what was meant: the closest key, or else every key allowed there."""
    close = difflib.get_close_matches(key, SCHEMA, n=1)
    if close:
        return PipelineError(f"{path}: unknown key '{key}' (did you mean '{close[0]}'?)")
    section = key.rpartition(".")[0]
    allowed = _section_keys(section) if section else sorted({k.split(".")[0] for k in SCHEMA})
    where = f"in '{section}'" if section else "at the top level"
    return PipelineError(f"{path}: unknown key '{key}': expected {where} one of " + ", ".join(allowed))


def validate(raw: Any, path: str) -> dict[str, Any]:
    """The clean flat values, or a PipelineError naming the first bad key, its value and what is allowed."""
    if raw is None:
        raise PipelineError(f"{path}: the file is empty: expected a YAML mapping of sections (data, train, ...)")
    if not isinstance(raw, dict):
        raise PipelineError(
            f"{path}: expected a YAML mapping of sections (data, train, ...), got {type(raw).__name__} {_shown(raw)}"
        )
    flat = flatten(raw)
    for key, value in flat.items():
        if key in SCHEMA:
            continue
        if _section_keys(str(key)):
            # `train:` left empty or given a scalar: a section, not a value.
            raise PipelineError(
                f"{path}: {key} = {_shown(value)}: expected a mapping with the keys " + ", ".join(_section_keys(key))
            )
        raise _unknown_key(str(key), path)
    clean: dict[str, Any] = {}
    for key, rule in SCHEMA.items():
        if key not in flat:
            raise PipelineError(f"{path}: missing key '{key}': expected {rule.expected}")
        value = rule.convert(flat[key])
        if value is None:
            close = difflib.get_close_matches(flat[key], rule.options, n=1) if isinstance(flat[key], str) else []
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PipelineError(f"{path}: {key} = {_shown(flat[key])}: expected {rule.expected}{hint}")
        clean[key] = value
    return clean


class _StrictSafeLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader (plain values only, never Python objects) that also refuses duplicate
    keys, which PyYAML would otherwise resolve silently by keeping the last one."""


def _construct_unique_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (YAML would silently keep only the last one)",
                    key_node.start_mark,
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _yaml_problem(e: yaml.YAMLError, path: str) -> PipelineError:
    """One line: where in the file, and what is wrong there."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = str(getattr(e, "problem", None) or e)
    tag = re.search(r"constructor for the tag '([^']+)'", problem)
    if tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return PipelineError(
            f"{path}:{where}: tag '{shown}' is not allowed: params hold plain YAML values only (yaml.safe_load)"
        )
    if problem.startswith("duplicate key"):
        return PipelineError(f"{path}:{where}: {problem}")
    return PipelineError(f"{path}:{where} is not valid YAML: {problem}")


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Read and validate the whole file with `yaml.safe_load` (never arbitrary Python objects)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_StrictSafeLoader)  # a SafeLoader: plain values only
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run from the project root)") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise _yaml_problem(e, path) from None
    return Params(validate(raw, path), path)


def _write_trace() -> None:
    """Append what this process read (param keys, project modules) for the declared-deps test."""
    trace = os.environ.get(TRACE_ENV)
    if not trace:
        return
    root = Path.cwd().resolve()
    modules = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file:
            try:
                rel = Path(file).resolve().relative_to(root).as_posix()
            except ValueError:
                continue
            if rel.startswith(("mnist_pipeline/", "stages/")):
                modules.add(rel)
    record = {"argv": sys.argv, "params": sorted(_read_keys), "modules": sorted(modules)}
    with open(trace, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


atexit.register(_write_trace)
