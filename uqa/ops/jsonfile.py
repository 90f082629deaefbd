"""Reading the JSON files stages write (reports, fingerprints, settings): one reader, one way to fail."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from uqa.errors import UserError

_EMPTY = object()


def read_json(path: str | os.PathLike, missing: Any = _EMPTY) -> Any:
    """The JSON object in `path`; when there is no such file (the stage that writes it has not run),
    `missing` (default: an empty dict). A file that cannot be read, is not JSON or holds no object is a UserError that
    names it (a truncated report says so instead of passing for an absent one)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {} if missing is _EMPTY else missing
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); run the stage that writes it again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
