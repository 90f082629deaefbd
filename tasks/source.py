"""Stage `source`: what `data.source` is NOW -> data/source.json (the fingerprint `download` depends on).

inputs:  params data.source, data.revision; the data itself (always runs: `always_changed` in dvc.yaml)
outputs: data/source.json (fingerprint, deterministic: unchanged data gives the same bytes, so DVC
         skips `download` and everything after it), reports/source.json (this check's result)

- hub dataset id: the commit sha of the dataset repo at `data.revision` (null = the newest commit);
  `download` then loads exactly that commit.
- local files ({train: ..., validation: ...}, globs allowed) or a local dataset directory: path (as
  given), size and sha256 of every file `download` will read.

When the Hub cannot be reached (no network, HF_HUB_OFFLINE=1, a Hub outage) the stage logs one
warning, keeps the previous fingerprint as it is (so the data downloaded before stays current and a
scheduled run does not fail), and records `{"checked": false, ...}` in reports/source.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.atomic import atomic_write_json
from uqa.errors import UserError
from uqa.params import DataParams, Params

log = logging.getLogger(__name__)

FINGERPRINT = layout.SOURCE_FINGERPRINT
REPORT = layout.report("source")

HUB_TIMEOUT_S = 30.0


class HubUnreachable(Exception):
    """The Hub did not answer (no network, offline mode, outage); the reason is one short line."""


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
        raise HubUnreachable(f"HTTP {status}: {_first_line(exc)}") from None
    except Exception as exc:
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0].startswith("httpx"):
            raise HubUnreachable(f"{type(exc).__name__}: {_first_line(exc)}") from None
        raise
    if not sha:
        raise HubUnreachable(f"the Hub gave no commit sha for {repo_id!r}")
    return sha


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def local_fingerprint(params: DataParams) -> dict[str, Any] | None:
    """The fingerprint of a local source (files or dataset directory); None for a hub id."""
    from tasks.download import file_fingerprints, source_files

    local = source_files(params.source)
    if local is None:
        return None
    kind, files = local
    return {"kind": kind, "source": params.source, "files": file_fingerprints(files)}


def read_fingerprint(path: Path = FINGERPRINT) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describes(fingerprint: dict[str, Any] | None, params: DataParams) -> bool:
    """The fingerprint is of this source (and, for the Hub, this revision)."""
    if not fingerprint or fingerprint.get("source") != params.source:
        return False
    return fingerprint.get("kind") != "hub" or fingerprint.get("revision") == params.revision


def check_source(params: DataParams, fingerprint_path: Path = FINGERPRINT,
                 report_path: Path = REPORT) -> dict[str, Any]:
    """Resolve the source, write the fingerprint (unless the Hub is unreachable and there is one to
    keep) and the report; return the report."""
    fingerprint = local_fingerprint(params)
    if fingerprint is None:
        try:
            sha = resolve_hub_sha(params.source, params.revision)
        except HubUnreachable as exc:
            return _unreachable(params, str(exc), Path(fingerprint_path), Path(report_path))
        fingerprint = hub_fingerprint(params.source, params.revision, sha)
        log.info("source: %s%s is at commit %s", params.source,
                 f" (revision {params.revision})" if params.revision else "", sha)
    else:
        n = sum(len(fs) for fs in fingerprint["files"].values())
        log.info("source: %d local file(s) hashed", n)
    atomic_write_json(fingerprint_path, fingerprint)
    report = {"checked": True, **fingerprint}
    atomic_write_json(report_path, report)
    return report


def _unreachable(params: DataParams, reason: str, fingerprint_path: Path, report_path: Path) -> dict[str, Any]:
    previous = read_fingerprint(fingerprint_path)
    kept = previous.get("resolved_revision") if _describes(previous, params) else None
    if kept:
        # the previous fingerprint stays byte for byte: DVC then skips download and what follows
        log.warning("source: the Hugging Face Hub is unreachable (%s); keeping the current data of %s "
                    "(commit %s) and checking again on the next run", reason, params.source, kept)
    else:
        # a fingerprint with no commit: download runs and says clearly why the Hub is needed
        atomic_write_json(fingerprint_path, hub_fingerprint(params.source, params.revision, None))
        log.warning("source: the Hugging Face Hub is unreachable (%s) and no data of %s was downloaded "
                    "before, so there is none to keep", reason, params.source)
    report = {"checked": False, "reason": reason, "kept": kept, "source": params.source,
              "revision": params.revision}
    atomic_write_json(report_path, report)
    return report


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
    if not _describes(fingerprint, params):
        raise UserError(
            f"{path} describes the source {fingerprint.get('source')!r}"
            + (f" at revision {fingerprint.get('revision')!r}" if fingerprint.get("kind") == "hub" else "")
            + f", not data.source {params.source!r}"
            + (f" at revision {params.revision!r}" if fingerprint.get("kind") == "hub" else "")
            + ": run the `source` stage first (`dvc repro` and the flow do)"
        )
    return fingerprint


def source_markdown(report: dict[str, Any]) -> str:
    """The flow's `uqa-source` artifact: what the source resolved to, or which data was kept."""
    lines = ["# Data source", ""]
    source = report.get("source")
    shown = f"`{source}`" if isinstance(source, str) else f"`{json.dumps(source, ensure_ascii=False)}`"
    if not report.get("checked"):
        lines.append(f"**The Hugging Face Hub was unreachable** ({report.get('reason')}).")
        lines.append("")
        if report.get("kept"):
            lines.append(f"Kept the current data: {shown} at commit `{report['kept']}`; checked again on the next run.")
        else:
            lines.append(f"No data of {shown} was downloaded before, so none was kept.")
        return "\n".join(lines)
    if report.get("kind") == "hub":
        revision = report.get("revision") or "newest commit"
        lines += [f"- dataset: {shown} (revision: {revision})", f"- resolved commit: `{report.get('resolved_revision')}`"]
        return "\n".join(lines)
    lines += [f"- source: {shown} ({report.get('kind')})", "", "| split | file | bytes | sha256 |",
              "|---|---|---:|---|"]
    for split, files in (report.get("files") or {}).items():
        for f in files:
            lines.append(f"| {split} | `{f['path']}` | {f['size']:,} | `{f['sha256']}` |")
    return "\n".join(lines)


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return check_source(params.data)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("source", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
