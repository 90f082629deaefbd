"""Push a registered version to the Hugging Face Hub and record the outcome in its index entry.

The token comes from HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, or a Prefect Secret block 'hf-token') and is
never part of a message: a failure is reported token-free and recorded as a pending push, retried by
the next run with the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from uqa.errors import TransientError, UserError, first_line
from uqa.ops.atomic import atomic_write_json
from uqa.registry.store import Registry


def push_to_hub(directory: Path, repo_id: str | None, private: bool = True) -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        try:
            from prefect.blocks.system import Secret

            token = Secret.load("hf-token").get()
        except Exception:
            token = None
    if not token:
        raise UserError("register.push_to_hub is true but no token: set HF_TOKEN (or a Prefect Secret block 'hf-token')")
    if not repo_id:
        raise UserError("register.push_to_hub is true but register.hub_repo_id is not set")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory))
    except Exception as exc:  # the message must never carry the token
        text = f"{type(exc).__name__}: {exc}".replace(token, "***")
        raise TransientError(f"push to the Hub ({repo_id}) failed: {first_line(text)}") from None
    return str(getattr(commit, "commit_url", repo_id))


def hub_done(entry: dict[str, Any], repo_id: str | None) -> bool:
    hub = entry.get("hub") or {}
    return bool(hub.get("pushed")) and hub.get("repo_id") == repo_id


def push_and_record(registry: Registry, index: dict[str, Any], entry: dict[str, Any], repo_id: str | None,
                    private: bool = True) -> str:
    """Push the version to the Hub and record the outcome in its index entry (one atomic index write).

    A failure is recorded as pending (with the token-free error) and re-raised: the stage fails, the
    registration stays consistent, and the next run with the same weights retries the push."""
    entry["hub"] = {"repo_id": repo_id, "pushed": False, "url": None, "error": None}
    try:
        url = push_to_hub(registry.version_dir(entry["version"]), repo_id, private)
    except UserError as exc:
        entry["hub"]["error"] = str(exc)  # push_to_hub's messages never carry the token
        atomic_write_json(registry.index_path, index)
        raise
    entry["hub"].update(pushed=True, url=url)
    atomic_write_json(registry.index_path, index)
    return url
