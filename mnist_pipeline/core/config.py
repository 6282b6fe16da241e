"""`params.yaml` as typed, frozen objects: validated once, before any work, then passed by section.

A stage loads the file with `load_config()` and hands each library function only the section it
needs (`train_model(cfg.model, cfg.train, ...)`). Pydantic does the checking; this module turns its
first complaint into one line naming the key, the value and what is allowed, with a did-you-mean
for a near miss. Allowed values come from their owners: data set names from the dataset registry,
strategies from the strategy table. The model types own their keys: the train stage passes `load_config`
a wider schema with them (mnist_pipeline.train.registry), which this module never imports.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, ScalarEvent

from mnist_pipeline.core.datasets import DATASETS
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.core.files import NotRegularFile, open_regular

PARAMS_FILE = "params.yaml"
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "selu", "gelu", "softplus", "swish", "linear")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw", "nadam", "adagrad")
LR_SCHEDULES = ("constant", "one_cycle")


# The names of the choices that runtime modules act on are owned here, so that the schema, which every stage
# imports, imports none of them: editing the strategy or kernel code reruns only the stages that run it.
STRATEGIES = ("default", "mirrored", "multi_worker")  # train.strategy: mnist_pipeline/train/distribute.py runs each
CPU_KERNELS = ("eigen", "onednn")  # train.cpu_kernels: mnist_pipeline/train/cpu_kernels.py sets each before TensorFlow
# Seeds reach numpy and TensorFlow, which take unsigned 32-bit values.
MAX_SEED = 2**32 - 1
# Upper bounds of counts: far above any use on one machine, far below where arithmetic or memory breaks.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_WIDTH = 1_000_000  # units of a dense layer
MAX_IMAGES = 1_000_000_000  # image counts and positions: val_size, limits, predict.start
MAX_MEMORY_MB = 16 << 20  # 16 TiB
# Seconds a download may wait for data: sockets refuse timeouts past time_t (1e300 overflows); 1e6 s is 11 days.
MAX_TIMEOUT_S = 1e6
_FOLDER_TEXT = re.compile(r"[A-Za-z0-9._/-]+")

# A folder of the user's own images, one subfolder per class, read by preprocess from `data.folder`.
FOLDER = "folder"
# Kaggle's digit CSV (`label,pixel0,...,pixel783`, one image a row), read by preprocess from `data.folder`.
DIGIT_CSV = "digit_csv"
# Sources that read the user's own files at `data.folder`: nothing to download. Each name is a key of
# mnist_pipeline/sources/registry.py's SOURCES, as every IDX data set is; the schema imports none of them.
LOCAL_SOURCES = (FOLDER, DIGIT_CSV)
DATASET_NAMES = (*DATASETS, *LOCAL_SOURCES)
COLORS = ("grayscale", "rgb")
BAD_IMAGES = ("fail", "skip")
FOLDER_SPLITS = ("hash", "folders")  # preprocess.split: by a hash of each path, or as the folder already has them
DatasetName = Literal[DATASET_NAMES]  # type: ignore[valid-type]
StrategyName = Literal[STRATEGIES]  # type: ignore[valid-type]


def integer(low: int, high: int) -> Any:
    """A required int field in [low, high]; the description is the 'expected ...' of its error line.

    Every count has an upper bound: a value of 10**20 must be one line here, not a traceback (or hours of
    work) wherever the count is used."""
    return Field(ge=low, le=high, strict=True, description=f"an integer in [{low}, {high}]")


def number(low: float, high: float | None = None, *, low_open: bool = False) -> Any:
    """A required finite float field: [low, high) by default, (low, ...) when `low_open`."""
    left, below = ("(", ">") if low_open else ("[", ">=")
    text = f"a number {below} {low:g}" if high is None else f"a number in {left}{low:g}, {high:g})"
    bounds = {"gt": low} if low_open else {"ge": low}
    return Field(**bounds, lt=high, allow_inf_nan=False, description=text)


def choice(options: tuple[str, ...]) -> Any:
    return Field(description="one of " + ", ".join(options))


def int_list(low: int, high: int, min_len: int, max_len: int = 16) -> Any:
    """A list of ints, each in [low, high] (checked by the section's validator, `ints_within`)."""
    return Field(min_length=min_len, max_length=max_len,
                 description=f"a list of {min_len} to {max_len} integers in [{low}, {high}]")


def documented(field: Any, shipped: Any, doc: str) -> Any:
    """A field with the value params.yaml ships with and one line on what it does: model types' keys carry
    both, for the unused-params warning ("changed from the shipped value") and the params table in the docs."""
    return FieldInfo.merge_field_infos(field, Field(title=doc, json_schema_extra={"shipped": shipped}))


class Section(BaseModel):
    """A frozen group of params: unknown keys are errors, ints are never bools or floats."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _int_as_float(cls, value: Any, info: Any) -> Any:
        """`learning_rate: 1` is the number 1.0 (DVC records 1); a string, even '1e-3', is not a number."""
        field = cls.model_fields[info.field_name]
        if field.annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


class DataConfig(Section):
    dataset: DatasetName = choice(DATASET_NAMES)
    folder: str = Field(min_length=1, description="a folder inside the project named with letters, digits, "
                        "'.', '_', '-' and '/', not starting with '-' (e.g. data/images)")

    @field_validator("folder")
    @classmethod
    def _project_folder(cls, folder: str) -> str:
        """dvc.yaml puts it in preprocess's command line and deps: DVC tracks paths inside the project only,
        and a space or a shell character would split or change the command."""
        parts = folder.split("/")
        # A leading '-' would make the stage's command read the folder as an option (`-h`, `--version`).
        if not _FOLDER_TEXT.fullmatch(folder) or folder.startswith("/") or ".." in parts or folder.startswith("-"):
            raise ValueError("not such a path")
        return folder


class DownloadConfig(Section):
    mirrors: dict[str, list[str]] = Field(
        description="a mapping with exactly the keys " + ", ".join(DATASETS) + ", each a list of http(s) URLs"
    )
    timeout_s: float = number(0.0, MAX_TIMEOUT_S, low_open=True)
    retries: int = integer(0, 10)

    @field_validator("mirrors")
    @classmethod
    def _every_dataset_has_http_mirrors(cls, mirrors: dict[str, list[str]]) -> dict[str, list[str]]:
        if set(mirrors) != set(DATASETS) or not all(
            url.startswith(("https://", "http://")) for urls in mirrors.values() for url in urls
        ):
            raise ValueError("not the data sets' http(s) mirrors")
        return mirrors


class PreprocessConfig(Section):
    scale: float = number(0.0, low_open=True)
    offset: float = number(-1e6, 1e6)
    val_size: int = integer(0, MAX_IMAGES)
    seed: int = integer(0, MAX_SEED)
    train_limit: int = integer(0, MAX_IMAGES)
    test_limit: int = integer(0, MAX_IMAGES)
    image_size: int = integer(4, 1024)
    color: Literal[COLORS] = choice(COLORS)  # type: ignore[valid-type]
    split: Literal[FOLDER_SPLITS] = choice(FOLDER_SPLITS)  # type: ignore[valid-type]
    test_fraction: float = number(0.0, 1.0, low_open=True)
    val_fraction: float = number(0.0, 1.0)
    bad_images: Literal[BAD_IMAGES] = choice(BAD_IMAGES)  # type: ignore[valid-type]
    max_image_pixels: int = integer(1, 2**31 - 1)

    @field_validator("val_fraction")
    @classmethod
    def _room_for_training(cls, val_fraction: float, info: Any) -> float:
        """A folder's test and validation shares leave the rest for training."""
        test_fraction = info.data.get("test_fraction")
        if test_fraction is not None and test_fraction + val_fraction >= 1.0:
            raise ValueError(f"expected less than 1 - preprocess.test_fraction ({1 - test_fraction:g})")
        return val_fraction


class ModelConfig(Section):
    """The `model` keys every model type reads. The keys of one type (`model.hidden`, the `model.cnn` section)
    stay raw here: each model type's own module checks them (mnist_pipeline.train.registry), so this schema,
    which every stage imports, imports no model type, and editing one reruns the train stage only."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    type: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="a model type name (lowercase letters, digits, '_')")
    activation: Literal[ACTIVATIONS] = choice(ACTIVATIONS)  # type: ignore[valid-type]


class TrainConfig(Section):
    epochs: int = integer(1, MAX_EPOCHS)
    batch_size: int = integer(1, MAX_BATCH)
    optimizer: Literal[OPTIMIZERS] = choice(OPTIMIZERS)  # type: ignore[valid-type]
    learning_rate: float = number(0.0, low_open=True)
    lr_schedule: Literal[LR_SCHEDULES] = choice(LR_SCHEDULES)  # type: ignore[valid-type]
    label_smoothing: float = number(0.0, 1.0)
    seed: int = integer(0, MAX_SEED)
    cpu_threads: int = integer(1, 64)
    cpu_kernels: Literal[CPU_KERNELS] = choice(CPU_KERNELS)  # type: ignore[valid-type]
    strategy: StrategyName = choice(STRATEGIES)
    checkpoint: bool = Field(description="true or false")
    memory_budget_mb: int = integer(1, MAX_MEMORY_MB)


class EvaluateConfig(Section):
    batch_size: int = integer(1, MAX_BATCH)


class PredictConfig(Section):
    count: int = integer(1, 100)
    start: int = integer(0, MAX_IMAGES)


class Config(Section):
    """The whole of params.yaml, one frozen object per section."""

    data: DataConfig
    download: DownloadConfig
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    predict: PredictConfig


def ints_within(widths: list[int], low: int, high: int) -> list[int]:
    if any(not low <= w <= high for w in widths):
        raise ValueError(f"every entry must be in [{low}, {high}]")
    return widths


# ---------------------------------------------------------------------------------------------
# One line per fault: pydantic's first complaint, in the words of params.yaml.


def leaf_keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, FieldInfo]:
    """Every dotted leaf key the file may hold, with its field (its description says what is allowed)."""
    keys: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        section = _section_type(field)
        if section is not None:
            keys.update(leaf_keys(section, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = field
    return keys


def _section_type(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def choices(key: str, schema: type[Config] = Config) -> tuple[str, ...]:
    """The allowed values of a choice key (empty for other keys)."""
    annotation = leaf_keys(schema)[key].annotation
    return tuple(get_args(annotation)) if get_origin(annotation) is Literal else ()


def _shown(value: Any, limit: int = 80) -> str:
    """The bad value as the user wrote it, cut short so the error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lookalike(typed: str, meant: str) -> str:
    """Where two keys that print alike differ: 'а' (U+0430 CYRILLIC SMALL LETTER A) for 'a'."""
    if typed.isascii():
        return ""
    for a, b in zip(typed, meant, strict=False):
        if a != b:
            return f"; it has {a!r} (U+{ord(a):04X} {unicodedata.name(a, '?')}) where {b!r} is meant"
    return ""


def _first_leaf(key: str, value: Any) -> str:
    """`trainning: {epochs: 3}` is reported as its first leaf, `trainning.epochs`: that is what was meant."""
    while isinstance(value, dict) and value:
        first = next(iter(value))
        key, value = f"{key}.{first}", value[first]
    return key


def _unknown_key(loc: tuple[Any, ...], value: Any, path: str, schema: type[Config]) -> PipelineError:
    """Name the typo and what was meant: the closest key, or else every key allowed there."""
    keys = leaf_keys(schema)
    if "." in str(loc[0]):
        return PipelineError(f"{path}: top-level key '{loc[0]}' is not read: set it inside the "
                             f"'{str(loc[0]).split('.')[0]}' section (only the nested layout counts, as DVC reads it)")
    key = _first_leaf(".".join(str(p) for p in loc), value)
    sections = {k.rpartition(".")[0] for k in keys} - {""}
    close = difflib.get_close_matches(key, [*keys, *sections], n=1)
    if close:
        return PipelineError(f"{path}: unknown key '{key}' (did you mean '{close[0]}'?{_lookalike(key, close[0])})")
    section = key.rpartition(".")[0]
    allowed = [k for k in keys if k.startswith(section + ".")] if section else sorted({k.split(".")[0] for k in keys})
    where = f"in '{section}'" if section else "at the top level"
    return PipelineError(f"{path}: unknown key '{key}': expected {where} one of " + ", ".join(allowed))


def _leaf(loc: tuple[Any, ...], schema: type[Config]) -> tuple[str, FieldInfo | None, type[BaseModel] | None]:
    """The dotted params key an error location points into, with its field or its section class."""
    model: type[BaseModel] = schema
    parts: list[str] = []
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        parts.append(str(part))
        section = _section_type(field)
        if section is None:
            return ".".join(parts), field, None
        model = section
    return ".".join(parts), None, model


def _dig(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part] if isinstance(tree, dict) else None
    return tree


def _message(error: Any, tree: dict[str, Any], path: str, schema: type[Config]) -> PipelineError:
    loc = tuple(error["loc"])
    key, field, section = _leaf(loc, schema)
    if error["type"] == "extra_forbidden":
        return _unknown_key(loc, error["input"], path, schema)
    if field is None and section is not None:
        section_keys = [k for k in leaf_keys(section, key + ".")]
        if error["type"] == "missing" and len(loc) == len(key.split(".")):
            return PipelineError(f"{path}: missing section '{key}': expected a mapping with the keys "
                                 + ", ".join(section_keys))
        return PipelineError(f"{path}: {key} = {_shown(_dig(tree, key))}: expected a mapping with the keys "
                             + ", ".join(section_keys))
    assert field is not None
    expected = field.description or "a valid value"
    reason = str(error.get("ctx", {}).get("error", ""))
    if error["type"] == "value_error" and reason.startswith("expected "):  # a validator's own, more exact words
        expected = reason.removeprefix("expected ")
    if error["type"] == "missing":
        return PipelineError(f"{path}: missing key '{key}': expected {expected}")
    value = _dig(tree, key)
    options = choices(key, schema)
    close = difflib.get_close_matches(value, options, n=1) if isinstance(value, str) and options else []
    hint = f" (did you mean '{close[0]}'?{_lookalike(value, close[0])})" if close else ""
    return PipelineError(f"{path}: {key} = {_shown(value)}: expected {expected}{hint}")


def _first_error(errors: list[Any]) -> Any:
    """Unknown keys first (a typo also makes its key 'missing'), then in the file's section order."""
    return min(errors, key=lambda e: e["type"] != "extra_forbidden")


def _check_key_names(tree: dict[Any, Any], model: type[BaseModel], prefix: str, path: str) -> None:
    """A key that is not text inside a section (`~: 1` is a null key, `1: 2` a number) is named as such,
    not reported as the whole section being no mapping."""
    for key, value in tree.items():
        if not isinstance(key, str):
            null = " (YAML reads ~, null or an empty key as null)" if key is None else ""
            allowed = ", ".join(f"{prefix}{name}" for name in model.model_fields)
            where = f"in '{prefix.rstrip('.')}'" if prefix else "at the top level"
            raise PipelineError(f"{path}: key {_shown(key)} {where}{null}: expected a key name, one of {allowed}")
        field = model.model_fields.get(key)
        section = _section_type(field) if field is not None else None
        if section is not None and isinstance(value, dict):
            _check_key_names(value, section, f"{prefix}{key}.", path)


def validate(tree: Any, path: str = PARAMS_FILE, schema: type[Config] = Config) -> Config:
    """The typed config, or a PipelineError naming the first bad key, its value and what is allowed.

    `schema` is Config or a subclass of it that types more (the train stage's, with every model type's keys)."""
    if tree is None:
        raise PipelineError(f"{path}: the file is empty: expected a YAML mapping of sections (data, train, ...)")
    if not isinstance(tree, dict):
        raise PipelineError(
            f"{path}: expected a YAML mapping of sections (data, train, ...), got {type(tree).__name__} {_shown(tree)}"
        )
    for key in tree:
        if not isinstance(key, str):
            raise PipelineError(f"{path}: key {_shown(key)} at the top level: expected a section name")
    _check_key_names(tree, schema, "", path)
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise _message(_first_error(e.errors()), tree, path, schema) from None


# ---------------------------------------------------------------------------------------------
# Reading the file: as DVC reads it, plain values only, bounded work, regular files only.


def _plain_values_only(yaml: YAML, text: str) -> None:
    """Refuse what DVC reads but a params file should not hold: aliases, whose expansion is unbounded,
    and merge keys (`<<`), which hide which value wins and which `dvc exp run -S` does not rewrite."""
    for event in yaml.parse(text):
        if isinstance(event, AliasEvent):
            raise MarkedYAMLError(problem=f"alias '*{event.anchor}' is not allowed: params hold plain values, "
                                  "written out", problem_mark=event.start_mark)
        if isinstance(event, ScalarEvent) and event.value == "<<" and event.style is None:
            raise MarkedYAMLError(problem="merge key '<<' is not allowed: params hold plain values, written out "
                                  "in each section", problem_mark=event.start_mark)


def parse_yaml(text: str) -> Any:
    """Plain YAML values, read exactly as DVC reads params.yaml for `dvc params` and dvc.lock.

    DVC parses with ruamel.yaml's safe loader, which speaks YAML 1.2: `010` is 10, `1:30` and `yes` are
    strings, `1e3` is a float. PyYAML speaks YAML 1.1 and reads each of those otherwise (8, 90, True and a
    string), so a stage reading with it would train on values dvc.lock does not record.
    """
    yaml = YAML(typ="safe")  # DVC's own call (dvc.utils.serialize.parse_yaml)
    _plain_values_only(yaml, text)
    return yaml.load(text)


def _yaml_problem(e: YAMLError, path: str) -> PipelineError:
    """One line: where in the file, and what is wrong there."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = str(getattr(e, "problem", None) or e)
    tag = re.search(r"constructor for the tag '([^']+)'", problem)
    if tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return PipelineError(f"{path}:{where}: tag '{shown}' is not allowed: params hold plain YAML values only")
    if isinstance(e, DuplicateKeyError):
        key = re.search(r'duplicate key "([^"]*)"', problem)
        shown = key.group(1) if key else "?"
        return PipelineError(f"{path}:{where}: duplicate key '{shown}' (DVC refuses the file; write each key once)")
    if problem.startswith(("alias", "merge key")):
        return PipelineError(f"{path}:{where}: {problem}")
    return PipelineError(f"{path}:{where} is not valid YAML: {' '.join(problem.split())}")


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """A regular UTF-8 file's text, opened by the one regular-file check: a FIFO, a device or a folder is
    refused rather than read forever."""
    path = str(path)
    try:
        with open_regular(path) as f:
            return f.read().decode("utf-8")
    except NotRegularFile as e:
        kind = "a folder" if stat.S_ISDIR(e.mode) else "not a regular file (a FIFO, device or socket)"
        raise PipelineError(f"{path}: {kind}: expected a regular {what}") from None
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (run from the project root)") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Plain YAML values from a file, read as DVC reads it; errors name the file and line."""
    text = read_text(path, "YAML file")
    try:
        return parse_yaml(text)
    except YAMLError as e:
        raise _yaml_problem(e, str(path)) from None


def load_config(path: str | os.PathLike[str] = PARAMS_FILE, schema: type[Config] = Config) -> Config:
    """Read and validate the whole params file; the first fault ends in one PipelineError line."""
    return validate(load_yaml(path), str(path), schema)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping, down to the params' leaves (a mirrors mapping stays whole)."""
    leaves = leaf_keys()
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted not in leaves:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, as DVC's `-S a.b.c=value` does."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def with_overrides(config: Config, overrides: Mapping[str, Any], source: str = "overrides") -> Config:
    """A new validated config with DVC-style `key: value` overrides applied (presets, benchmarks), checked
    by the schema that made `config`."""
    tree = config.model_dump()
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return validate(tree, source, type(config))

