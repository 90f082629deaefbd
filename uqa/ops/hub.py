"""Turn the Hugging Face Hub's network/not-found errors into messages a user can act on."""

from __future__ import annotations

import os
from pathlib import Path

from uqa.errors import TransientError, UserError, first_line


def looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def hub_error(what: str, source: str, exc: BaseException, param: str) -> UserError:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = first_line(text)
    if looks_local(source):
        return UserError(f"{what} {source!r}: could not be loaded from that local path ({first}). Check {param}.")
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or "offline" in text.lower()
    reach = (
        "the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1)"
        if offline
        else "it is not a local path and the Hugging Face Hub could not provide it"
    )
    cls = UserError if offline else TransientError
    return cls(
        f"{what} {source!r}: {reach} ({first}). "
        f"Either make the Hub reachable (and, for private repos, set HF_TOKEN), or point {param} "
        "at a local copy (a directory saved with save_pretrained / a dataset directory or files)."
    )
