"""params.yaml on disk: read (ruamel, round-trip: comments and order kept), validated, and
written back with overrides laid over it (atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uqa.errors import UserError
from uqa.ops.atomic import atomic_write_text
from uqa.params.overrides import deep_merge, overrides_to_nested
from uqa.params.schema import PARAMS_FILE, Params
from uqa.params.validation import params_from_dict, plain

if TYPE_CHECKING:
    from ruamel.yaml import YAML


# ---- the YAML file ---------------------------------------------------------------------------------


def _yaml() -> YAML:
    from ruamel.yaml import YAML  # imported when YAML is read or written: the dataclasses need no YAML

    y = YAML()  # round-trip: keeps the user's comments and order when overrides are written back
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    # write null as `null` (ruamel's default is an empty value): untouched lines stay as written
    y.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def read_raw(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (run from the project directory, or pass --params)")
    try:
        return _yaml().load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # ruamel's errors carry line/column
        raise UserError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    return params_from_dict(plain(read_raw(path)), str(path))


def params_with_overrides(path: str | Path, overrides: list[str] | dict[str, Any] | None) -> Params:
    """params.yaml with `overrides` laid over it, validated (the file is not written)."""
    path = Path(path)
    merged = deep_merge(plain(read_raw(path)), overrides_to_nested(overrides))
    return params_from_dict(merged, f"{path} (with overrides)")


def apply_overrides(path: str | Path, overrides: list[str] | dict[str, Any] | None) -> tuple[Params, bool]:
    """Validate params.yaml with overrides applied; write it back (comments kept) if it changed.

    Returns the effective params and whether the file changed."""
    path = Path(path)
    raw = read_raw(path)
    nested = overrides_to_nested(overrides)
    if not nested:
        return params_from_dict(plain(raw), str(path)), False
    merged = deep_merge(raw, nested)
    params = params_from_dict(plain(merged), f"{path} (with overrides)")
    if plain(merged) == plain(raw):
        return params, False
    buf = io.StringIO()
    _yaml().dump(merged, buf)
    atomic_write_text(path, buf.getvalue())
    return params, True
