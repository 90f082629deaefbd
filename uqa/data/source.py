"""What `data.source` is: the files a local source consists of, or the commit of a Hub dataset, and
the fingerprint of either (data/source.json), which the `source` stage writes and `download` checks.

- a hub dataset id: the commit sha of the dataset repo at `data.revision` (None = the newest commit);
- local files ({train: ..., validation: ...}, globs allowed) or a local dataset directory: the path
  (as given), size and sha256 of every file `download` will read.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.errors import DataError, UserError, first_line
from uqa.ops.hashing import KnownHashes
from uqa.ops.hub import looks_local
from uqa.ops.jsonfile import read_json
from uqa.params.schema import DataParams

SPLITS = layout.SPLITS
FINGERPRINT = layout.SOURCE_FINGERPRINT
HUB_TIMEOUT_S = 30.0
# the sha256 of local source files by their stat, in a DVC project: the `source` stage runs on every
# `dvc repro` and flow run, and an unchanged file is not read again (the fingerprint stays the same)
KNOWN_HASHES = Path(".dvc/tmp/uqa-source-hashes.json")


class HubUnreachable(Exception):
    """The Hub did not answer (no network, offline mode, outage); the reason is one short line."""


# ---- the Hub ----------------------------------------------------------------------------------------


def hub_fingerprint(source: str, revision: str | None, sha: str | None) -> dict[str, Any]:
    return {"kind": "hub", "source": source, "revision": revision, "resolved_revision": sha}


def resolve_hub_sha(repo_id: str, revision: str | None, timeout: float = HUB_TIMEOUT_S) -> str:
    """The commit sha of the dataset repo `repo_id` at `revision` (None: the newest commit).

    Raises HubUnreachable when the Hub can't be asked, UserError when it answers that the dataset
    or revision does not exist or is not readable with the current credentials."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        sha = HfApi().dataset_info(repo_id, revision=revision, timeout=timeout).sha
    except OfflineModeIsEnabled:
        raise HubUnreachable("HF_HUB_OFFLINE=1") from None
    except RevisionNotFoundError:
        raise UserError(f"data.revision: {revision!r} is not a revision of the Hub dataset {repo_id!r}") from None
    except RepositoryNotFoundError:  # also gated and private repos without access
        raise UserError(
            f"data.source: {repo_id!r} is not a local path, and the Hugging Face Hub has no dataset by that name "
            "that these credentials can read (for a private or gated dataset set HF_TOKEN)"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserError(f"data.source: the Hugging Face Hub refused access to {repo_id!r} "
                            f"(HTTP {status}); check HF_TOKEN") from None
        raise HubUnreachable(f"HTTP {status}: {first_line(exc)}") from None
    except Exception as exc:
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0].startswith("httpx"):
            raise HubUnreachable(f"{type(exc).__name__}: {first_line(exc)}") from None
        raise
    if not sha:
        raise HubUnreachable(f"the Hub gave no commit sha for {repo_id!r}")
    return sha


# ---- local files --------------------------------------------------------------------------------------


def _files_for(spec: Any, where: str) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else list(spec or [])
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(Path(str(pattern)).expanduser())))
        if not matched:
            raise UserError(f"{where}: no file matches {pattern!r}")
        files.extend(matched)
    return files


def _directory_files(path: Path) -> dict[str, list[str]]:
    """The data files `datasets` picks for each split of a local dataset directory (absolute paths)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a dataset directory datasets can read: {type(exc).__name__}: {exc}") from None
    data_files = builder.config.data_files or {}
    files = {str(split): [str(f) for f in fs] for split, fs in data_files.items()}
    missing = [s for s in SPLITS if s not in files]
    if missing:
        raise DataError(f"{path}: found splits {', '.join(files) or 'none'}, missing {', '.join(missing)}")
    return {s: files[s] for s in SPLITS}


def _as_given(file: str, directory: Path) -> str:
    """`file` (absolute, as datasets lists it) under `directory`, spelled from the directory as given."""
    for base in (os.path.abspath(directory), os.path.realpath(directory)):
        rel = os.path.relpath(file, base)
        if not rel.startswith(".."):
            return os.path.join(str(directory), rel)
    return file


def source_files(source: Any) -> tuple[str, dict[str, list[str]]] | None:
    """("files" or "directory", {split: [file, ...]}) for a local source, paths as given (relative
    ones stay relative); None for a hub dataset id. Raises UserError for a source that can't be one."""
    if isinstance(source, dict):
        missing = [s for s in SPLITS if s not in source]
        if missing:
            raise UserError(f"data.source: give files for the splits {', '.join(SPLITS)} (missing: {', '.join(missing)})")
        return "files", {s: _files_for(source[s], f"data.source.{s}") for s in SPLITS}
    if not isinstance(source, str) or not source:
        raise UserError(f"data.source: expected a hub id, a directory or {{split: files}}, got {source!r}")
    path = Path(source).expanduser()
    if path.is_file():
        raise UserError(
            f"data.source: {source!r} is a single file; give one per split, e.g. "
            f"{{train: {source}, validation: path/to/validation{path.suffix}}}"
        )
    if path.is_dir():
        return "directory", {s: [_as_given(f, path) for f in fs] for s, fs in _directory_files(path).items()}
    if looks_local(source):
        raise UserError(f"data.source: {source!r} does not exist")
    return None


def file_fingerprints(files: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """{split: [{path, size, sha256}, ...]}: every file that will be read, by content (a file not
    changed since it was last hashed in this project is not read again: KNOWN_HASHES)."""
    known = KnownHashes(KNOWN_HASHES if KNOWN_HASHES.parent.parent.is_dir() else None)
    fingerprints = {s: [{"path": f, "size": os.path.getsize(f), "sha256": known.sha256(f)} for f in fs]
                    for s, fs in files.items()}
    known.save()
    return fingerprints


def local_fingerprint(params: DataParams) -> dict[str, Any] | None:
    """The fingerprint of a local source (files or dataset directory); None for a hub id."""
    local = source_files(params.source)
    if local is None:
        return None
    kind, files = local
    return {"kind": kind, "source": params.source, "files": file_fingerprints(files)}


# ---- the fingerprint file -------------------------------------------------------------------------------


def read_fingerprint(path: Path = FINGERPRINT) -> dict[str, Any] | None:
    """data/source.json as the `source` stage wrote it; None when it is missing or unreadable (then
    the source is resolved again)."""
    try:
        return read_json(path, missing=None)
    except UserError:
        return None


def describes(fingerprint: dict[str, Any] | None, params: DataParams) -> bool:
    """The fingerprint is of this source (and, for the Hub, this revision)."""
    if not fingerprint or fingerprint.get("source") != params.source:
        return False
    return fingerprint.get("kind") != "hub" or fingerprint.get("revision") == params.revision


def current_fingerprint(params: DataParams, path: Path = FINGERPRINT) -> dict[str, Any]:
    """The fingerprint `download` works to: data/source.json as the `source` stage wrote it, or
    (when download runs on its own, without the source stage) one resolved now."""
    fingerprint = read_fingerprint(path)
    if fingerprint is None:
        fingerprint = local_fingerprint(params)
        if fingerprint is None:
            try:
                sha = resolve_hub_sha(params.source, params.revision)
            except HubUnreachable:
                sha = None  # download's own hub error says what to do
            fingerprint = hub_fingerprint(params.source, params.revision, sha)
        return fingerprint
    if not describes(fingerprint, params):
        hub = fingerprint.get("kind") == "hub"
        raise UserError(
            f"{path} describes the source {fingerprint.get('source')!r}"
            + (f" at revision {fingerprint.get('revision')!r}" if hub else "")
            + f", not data.source {params.source!r}"
            + (f" at revision {params.revision!r}" if hub else "")
            + ": run the `source` stage first (`dvc repro` and the flow do)"
        )
    return fingerprint
