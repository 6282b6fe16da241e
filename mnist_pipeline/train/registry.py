"""The model types: every module in mnist_pipeline/train/model_types, found when the train stage starts.

Adding a model type is adding one module there (mlp.py says what it holds); nothing else lists the types.
From the modules this builds the train stage's params schema: core's, with `model.type` one of the found
types and the `model` section holding every type's keys, each checked by its type's own schema, so a bad
value is still one line naming params.yaml and the key. dvc.yaml declares the model_types folder as a dep
of train (tools/stage_deps.py sees this module import the package whole): a module dropped in reruns train.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, create_model
from pydantic.fields import FieldInfo

from mnist_pipeline.core import config
from mnist_pipeline.core.errors import PipelineError
from mnist_pipeline.train import model_types

if TYPE_CHECKING:
    from mnist_pipeline.prepared import PreparedSpec
    from mnist_pipeline.train.tensorflow_runtime import keras

# What a model type module must define; mlp.py documents each.
REQUIRED = ("Params", "SIZE_KEYS", "build", "weights_and_outputs")


@dataclass(frozen=True)
class ModelType:
    """One `model.type`: its module and what the train stage, the warnings, the card and the docs read of it."""

    name: str
    module: ModuleType

    @property
    def params(self) -> type[config.Section]:
        return self.module.Params  # type: ignore[no-any-return]

    def fields(self) -> dict[str, FieldInfo]:
        """Its dotted keys (`model.hidden`, `model.cnn.filters`, ...) with their fields."""
        return config.leaf_keys(self.params, "model.")

    def read_keys(self) -> list[str]:
        return list(self.fields())

    def shipped(self) -> dict[str, Any]:
        """Each key's value as params.yaml ships it."""
        return {key: (field.json_schema_extra or {})["shipped"] for key, field in self.fields().items()}

    def build(self, model: Any, spec: PreparedSpec) -> keras.Model:
        return self.module.build(model, spec)

    def weights_and_outputs(self, model: Any, spec: PreparedSpec) -> tuple[int, int]:
        return self.module.weights_and_outputs(model, spec)  # type: ignore[no-any-return]

    def size_values(self, model: Any) -> str:
        """`model.hidden = [64, 64]`: the keys that set its size, with their values."""
        parts = []
        for key in self.module.SIZE_KEYS:
            value: Any = model
            for name in key.split("."):
                value = getattr(value, name)
            parts.append(f"model.{key} = {list(value) if isinstance(value, list) else value}")
        return ", ".join(parts)


def checked(name: str, module: ModuleType) -> ModelType:
    """A module that lacks a part, or whose keys are not all documented, is refused by name."""
    where = f"{module.__file__}: model type '{name}'"
    missing = [part for part in REQUIRED if not hasattr(module, part)]
    if missing:
        raise PipelineError(f"{where} defines no {', '.join(missing)}: expected {', '.join(REQUIRED)}")
    kind = ModelType(name, module)
    for key, field in kind.fields().items():
        if not field.title or "shipped" not in (field.json_schema_extra or {}):
            raise PipelineError(f"{where}: {key} has no shipped value or description: expected "
                                "config.documented(field, shipped, doc)")
    return kind


def _imported(name: str) -> ModuleType:
    """The model type's module; one that does not import (a syntax error, a missing name) is one line naming it."""
    try:
        return importlib.import_module(f"{model_types.__name__}.{name}")
    except Exception as e:  # whatever the module raises, the fault is in that file
        folder = os.path.dirname(model_types.__file__ or "")
        text = " ".join(str(e).split())
        raise PipelineError(f"{folder}/{name}.py: model type '{name}' does not import: {type(e).__name__}: "
                            f"{text}") from None


@functools.cache
def all_types() -> dict[str, ModelType]:
    """Every module of the model_types package, by name, sorted; no two may claim the same key.

    Found on first use, not on import: a faulty module ends the stage in its one-line error, like a bad param."""
    found: dict[str, ModelType] = {}
    owner: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(model_types.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        kind = checked(info.name, _imported(info.name))
        for field in kind.params.model_fields:
            if field in owner or field in config.ModelConfig.model_fields:
                other = owner.get(field, "every model type")
                raise PipelineError(f"{kind.module.__file__}: model.{field} is read by {other} already: expected a "
                                    "key of its own (a section named after the type, like model.cnn)")
            owner[field] = info.name
        found[info.name] = kind
    return found


@functools.cache
def schema() -> type[config.Config]:
    """core's Config with a `model` section that knows every model type's keys, each checked by its own type."""
    names = tuple(all_types())
    namespace = {
        "__module__": __name__,
        "__annotations__": {"type": Literal[names]},
        "type": config.choice(names),
        "model_config": ConfigDict(frozen=True, extra="forbid", strict=True),
    }
    section = type("ModelConfig", (*(kind.params for kind in all_types().values()), config.ModelConfig), namespace)
    return create_model("Config", __base__=config.Config, __module__=__name__, model=(section, ...))


def load_config(path: str | os.PathLike[str] = config.PARAMS_FILE) -> config.Config:
    """params.yaml with the model section checked in full: what the train stage and tools that build models read."""
    return config.load_config(path, schema())


def model_type(model: Any) -> ModelType:
    return all_types()[model.type]


def keys_read_only_by(kind: str) -> list[str]:
    """The keys only `kind` reads: the model type's own."""
    return all_types()[kind].read_keys()


def unread_keys(chosen: str | None) -> set[str]:
    """The keys no part of training reads when `model.type` is `chosen`: every other type's."""
    return {key for name, kind in all_types().items() if name != chosen for key in kind.read_keys()}


def build_model(model: Any, spec: PreparedSpec) -> keras.Model:
    """The network of `model.type` for the data set's images and classes; weights are drawn from the global seed."""
    return model_type(model).build(model, spec)


def validate(tree: Any, path: str = config.PARAMS_FILE) -> config.Config:
    """core's `validate` with the model section checked in full."""
    return config.validate(tree, path, schema())


def leaf_keys() -> dict[str, FieldInfo]:
    """Every dotted key of params.yaml, the model types' included, with its field."""
    return config.leaf_keys(schema())
