"""Overrides of params.yaml (`-S train.epochs=1`, a nested mapping, a deployment's typed
`overrides` parameter), and the keys a run started through the API may not set."""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from uqa.errors import UserError
from uqa.params.schema import section_models
from uqa.params.validation import _MISSING


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=1` -> (['train', 'epochs'], 1); the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=1")
    key, value = text.split("=", 1)
    from ruamel.yaml import YAML

    parsed = YAML(typ="safe").load(value) if value.strip() else None
    return key.strip().split("."), parsed


def overrides_to_nested(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Accepts ['a.b=1', ...] or {'a.b': 1} or {'a': {'b': 1}}; returns a nested dict."""
    nested: dict[str, Any] = {}
    if not overrides:
        return nested
    items: list[tuple[list[str], Any]]
    if isinstance(overrides, dict):
        items = [(str(k).split("."), v) for k, v in overrides.items()]
    else:
        items = [parse_override(o) for o in overrides]
    for keys, value in items:
        node = nested
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override {'.'.join(keys)}: {k} is not a section")
        if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
            node[keys[-1]] = deep_merge(node[keys[-1]], value)
        else:
            node[keys[-1]] = value
    return nested


def deep_merge(base: Any, update: dict[str, Any]) -> Any:
    """Merge `update` into a copy of `base` (sections merge; other values replace)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---- overrides, typed: the Prefect flow's `overrides` parameter -------------------------------------


def _partial_model(cls: type, name: str, path: str = "") -> type[BaseModel]:
    """A pydantic model of `cls` with every field optional and unset by default (a sparse override),
    keeping each field's type, bounds and description, and naming the default in the description."""
    fields: dict[str, Any] = {}
    for fname, info in cls.__pydantic_fields__.items():  # type: ignore[attr-defined]
        default = info.get_default(call_default_factory=True)
        if dataclasses.is_dataclass(default):
            annotation: Any = _partial_model(type(default), f"{name}{fname.title().replace('_', '')}",
                                             f"{path}{fname}.")
            described = info.description or fname
        else:
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            described = f"{info.description or fname} (default {default!r})"
            if f"{path}{fname}" in NOT_FROM_A_DEPLOYMENT_RUN:
                described += "; refused in a deployment run (set it in params.yaml)"
        fields[fname] = (annotation | None, Field(default=None, description=described))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


@functools.cache
def overrides_model() -> type[BaseModel]:
    """`{section: {key: value}}` with every section and key optional: what a run may override. The flow
    types its `overrides` parameter with it, so the Prefect UI's run form shows each section's fields,
    types, bounds and defaults, and rejects what the schema would reject."""
    sections = {
        name: (_partial_model(cls, f"{cls.__name__}Overrides", f"{name}.") | None, Field(default=None, description=(
            cls.__doc__ or name).strip().splitlines()[0]))
        for name, cls in section_models().items()
    }
    with warnings.catch_warnings():  # a field named `register` shadows ABCMeta.register: harmless here
        warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)
        return create_model("ParamsOverrides", __config__=ConfigDict(extra="forbid"), **sections)


# what a run started through the API (a deployment run: the UI's run form, `prefect deployment run`, an
# automation) may not override: each one lets its sender run code on the worker. params.yaml and a
# local `uqa run -S` (someone already at the machine) still can.
NOT_FROM_A_DEPLOYMENT_RUN = ("model.trust_remote_code", "train.launcher.extra_args", "train.launcher.config_file")


def refuse_unsafe_overrides(overrides: dict[str, Any] | list[str] | None, where: str = "this deployment run") -> None:
    """UserError when `overrides` (nested or dotted) set a key in NOT_FROM_A_DEPLOYMENT_RUN."""
    nested = overrides_to_nested(overrides)
    found = []
    for dotted in NOT_FROM_A_DEPLOYMENT_RUN:
        node: Any = nested
        for part in dotted.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            found.append(dotted)
    if found:
        raise UserError(f"{where}: overrides may not set {', '.join(found)} (it would let whoever can start a run "
                        "choose code to run on the worker); set it in params.yaml, or run `uqa run -S` on the machine")


def overrides_dict(overrides: Any) -> dict[str, Any]:
    """A typed overrides model (only what was set, explicit nulls included) or a mapping/list, nested."""
    if isinstance(overrides, BaseModel):
        return overrides.model_dump(exclude_unset=True)
    return overrides_to_nested(overrides)
