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
from uqa.data.source import (
    FINGERPRINT,
    HubUnreachable,
    describes,
    hub_fingerprint,
    local_fingerprint,
    read_fingerprint,
    resolve_hub_sha,
)
from uqa.ops.atomic import atomic_write_json
from uqa.params.schema import PARAMS_FILE, DataParams, Params

log = logging.getLogger(__name__)

REPORT = layout.report("source")


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
    kept = previous.get("resolved_revision") if describes(previous, params) else None
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


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return check_source(params.data)


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("source", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
