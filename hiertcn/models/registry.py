"""The registry of models by name, so the training loop builds any model from its config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from hiertcn.errors import ConfigError
from hiertcn.models.base import RecommenderModel
from hiertcn.models.config import ModelConfig

ModelClass = TypeVar("ModelClass", bound=type[RecommenderModel])

_MODELS: dict[str, type[RecommenderModel]] = {}


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Register a model class under `name` (a class decorator)."""

    def register(cls: ModelClass) -> ModelClass:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name]}")
        _MODELS[name] = cls
        return cls

    return register


def model_class(name: str) -> type[RecommenderModel]:
    """Return the class registered under `name`."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _MODELS[name]


def build_model(config: ModelConfig, num_items: int) -> RecommenderModel:
    """Build the model that `config.name` names, for a catalog of `num_items` items."""
    if num_items < 1:
        raise ConfigError(f"num_items={num_items} is invalid: the catalog needs at least one item")
    return model_class(config.name)(config, num_items)


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_MODELS)


def read_fields(config: ModelConfig) -> frozenset[str]:
    """Return the fields besides `name` that the model of `config` reads with these settings.

    These are the model's `config_fields`, less `batch_norm_steps` while batch norm is off.
    """
    fields = model_class(config.name).config_fields
    if not config.batch_norm:
        fields = fields - {"batch_norm_steps"}
    return fields


def effective_settings(config: ModelConfig) -> dict[str, Any]:
    """Return `config.to_dict()` with the values the model builds with.

    Unset dilations become the model's default, so that `--dilations 1,2,4,8` and no
    `--dilations` compare as equal for HierTCN, whose default they are.
    """
    settings = config.to_dict()
    default = model_class(config.name).default_dilations
    if config.dilations is None and default is not None:
        settings["dilations"] = list(default)
    return settings


def ignored_fields(config: ModelConfig) -> list[str]:
    """Return the fields that `config` sets away from their defaults and its model does not read.

    They have no effect on the model, so a command can tell the user that their flags are ignored.
    """
    used = read_fields(config) | {"name"}
    defaults = ModelConfig()
    return [
        field.name
        for field in dataclasses.fields(ModelConfig)
        if field.name not in used and getattr(config, field.name) != getattr(defaults, field.name)
    ]
