"""A raw params mapping -> Params, or one UserError line per wrong key: the file, the dotted
key, the value as written and what is expected ("did you mean" for a misspelt key)."""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError

from uqa.errors import UserError
from uqa.params.schema import _RULE, PARAMS_FILE, Params


@functools.cache
def _adapter() -> TypeAdapter[Params]:
    return TypeAdapter(Params)


@functools.cache
def _schema() -> dict[str, Any]:
    return _adapter().json_schema()


def params_from_dict(raw: dict[str, Any] | None, where: str = PARAMS_FILE) -> Params:
    raw = plain(raw) if raw is not None else {}
    try:
        return _adapter().validate_python(raw)
    except ValidationError as exc:
        raise UserError("\n".join(_messages(exc, raw, where))) from None


_MISSING = object()


def _messages(exc: ValidationError, raw: Any, where: str) -> list[str]:
    """One line per wrong key (a union's branches give several pydantic errors for one key)."""
    schema = _schema()
    unknown: dict[tuple, list[str]] = {}
    wrong: dict[tuple, str] = {}
    for err in exc.errors(include_url=False):
        path, node = _walk(schema, err["loc"])
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            key = str(err["loc"][len(path)])  # the first part of the location that is no known key
            if key not in unknown.setdefault(path, []):
                unknown[path].append(key)
            continue
        if err["type"] == _RULE:
            ctx = err.get("ctx") or {}
            key = (*path, ctx["key"])
            wrong.setdefault(key, _got(ctx["value"], ctx["expected"]))
            continue
        if path not in wrong:
            wrong[path] = _got(_lookup(raw, path), _expected(schema, node))
    lines = []
    for parent, keys in unknown.items():
        _, node = _walk(schema, parent)
        valid = list(_resolve(schema, node).get("properties", {}))
        shown = []
        for key in keys:
            close = difflib.get_close_matches(key, valid, n=1)
            shown.append(f"{key} (did you mean {close[0]}?)" if close else key)
        lines.append(f"{_prefix(where, parent)}unknown key(s) {', '.join(shown)}; "
                     f"valid keys are {', '.join(valid)}")
    lines += [f"{_prefix(where, path)}{text}" for path, text in wrong.items()]
    return lines


def _prefix(where: str, path: tuple) -> str:
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"{where}: {dotted}: " if dotted else f"{where}: "


def _walk(schema: dict[str, Any], loc: tuple) -> tuple[tuple, dict[str, Any]]:
    """The part of a pydantic error location that names keys (not union branches), and its schema."""
    path: list[Any] = []
    node = schema
    for part in loc:
        here = _resolve(schema, node)
        if isinstance(part, str) and part in here.get("properties", {}):
            node = here["properties"][part]
        elif isinstance(part, int) and here.get("type") == "array":
            node = here.get("items", {})
        else:
            break
        path.append(part)
    return tuple(path), node


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _lookup(raw: Any, path: tuple) -> Any:
    for part in path:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _expected(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = _resolve(schema, node)
    if "anyOf" in node:
        parts = [_expected(schema, n) for n in node["anyOf"]]
        parts = [p for p in parts if p != "null"] + (["null"] if "null" in parts else [])
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"
    if "const" in node:
        return str(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(str(v) for v in node["enum"])
    kind = node.get("type")
    if kind == "null":
        return "null"
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        values = node.get("additionalProperties")
        return f"a mapping of {_plural(_expected(schema, values))}" if isinstance(values, dict) and values \
            else "a mapping"
    if kind == "array":
        return f"a list of {_plural(_expected(schema, node.get('items', {})))}"
    if kind == "string":
        return "a non-empty string" if node.get("minLength") else "a string"
    noun = {"integer": "an integer", "number": "a number"}.get(kind, "a value")
    if "minimum" in node and "maximum" in node:
        return f"{noun} from {node['minimum']:g} to {node['maximum']:g}"
    ops = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
    bounds = [f"{op} {node[key]:g}" for key, op in ops if key in node]
    return " ".join([noun, *bounds])


def _plural(expected: str) -> str:
    """'a string or a list of strings' -> 'strings or lists of strings'."""
    return " or ".join(re.sub(r"^an? (\w+)", r"\1s", part) for part in expected.split(" or "))


def _got(value: Any, expected: str) -> str:
    if value is _MISSING:
        return f"expected {expected}"
    got = _show(value) if value is None else f"{_show(value)} ({_kind(value)})"
    text = f"got {got}; expected {expected}"
    if isinstance(value, str) and _looks_unquoted(value, expected):
        text += " (remove the quotes)"
    elif isinstance(value, (bool, int, float)) and "a string" in expected:
        text += " (put it in quotes)"
    return text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    for cls, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                      (dict, "a mapping"), (list, "a list")):
        if isinstance(value, cls):
            return name
    return type(value).__name__


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _looks_unquoted(text: str, expected: str) -> bool:
    """A quoted value that, unquoted, would have been what the key expects."""
    text = text.strip()
    if "true or false" in expected and text.lower() in ("true", "false"):
        return True
    if "an integer" in expected and re.fullmatch(r"[-+]?\d+", text):
        return True
    return "a number" in expected and bool(_NUMBER.fullmatch(text))


def plain(obj: Any) -> Any:
    """ruamel's CommentedMap/Seq and scalar subclasses (ScalarFloat, quoted strings, ...) -> plain types."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, bool) or type(obj).__name__ == "ScalarBoolean":  # ruamel's is an int subclass
        return bool(obj)
    for cls in (int, float, str):
        if isinstance(obj, cls):
            return cls(obj)
    return obj
