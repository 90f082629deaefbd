"""Stage `download`: UQA (hub id, local dataset dir, or data files) -> data/raw/{train,validation}.

inputs:  params data.source, data.revision; data/source.json (what the source is now: the `source` stage)
outputs: data/raw/train, data/raw/validation (Arrow, save_to_disk), reports/download.json (provenance)

A hub dataset is loaded at the commit the `source` stage resolved, so the data matches the
fingerprint DVC recorded; local files must still hash to what the fingerprint says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from uqa import layout
from uqa.data.arrow_shards import save_table
from uqa.data.rows import check_schema, conform
from uqa.data.source import (
    FINGERPRINT,
    HubUnreachable,
    current_fingerprint,
    file_fingerprints,
    resolve_hub_sha,
    source_files,
)
from uqa.errors import DataError, UserError, first_line
from uqa.ops.atomic import atomic_dir, atomic_write_json
from uqa.ops.hub import hub_error
from uqa.params.schema import PARAMS_FILE, DataParams, Params

log = logging.getLogger(__name__)

SPLITS = layout.SPLITS
OUT_DIR = layout.RAW_DIR
REPORT = layout.report("download")

BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _load_split_files(split: str, files: list[str]):
    """Load one split file by file, so that a schema error names the file it is in."""
    import datasets

    parts = []
    for f in files:
        builder = BUILDERS.get(Path(f).suffix.lower())
        if builder is None:
            raise UserError(f"{f}: unsupported file type; use one of {', '.join(BUILDERS)}")
        try:
            # datasets' cache knows a local file by its mtime only: a file replaced by one with the same
            # mtime (cp -p, rsync -a, an unpacked archive) would load stale rows under the new hashes.
            # Read it afresh (the sizes recorded for the old content no longer apply); its sha256 is checked
            part = datasets.load_dataset(builder, data_files={split: [f]}, split=split,
                                         download_mode="force_redownload", verification_mode="no_checks")
        except Exception as exc:
            raise DataError(f"{f}: could not be read as {builder}: {type(exc).__name__}: {first_line(exc)}") from None
        check_schema(part.data.table.schema, f)
        parts.append(conform(part.data.table))
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _check_unchanged(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """The files read now are the ones the fingerprint (data/source.json) describes, byte for byte."""
    if expected == actual:
        return
    for split in SPLITS:
        want = {e["path"]: e for e in expected.get(split, [])}
        have = {e["path"]: e for e in actual.get(split, [])}
        for path in sorted(set(want) | set(have)):
            if want.get(path) != have.get(path):
                raise UserError(f"{path} changed while the run was in progress; run again")
    raise UserError(f"{', '.join(f['path'] for fs in actual.values() for f in fs)} changed while the run was in "
                    "progress; run again")


def load_source(params: DataParams, fingerprint: dict[str, Any] | None = None):
    """Returns ({split: Arrow table with the canonical UQA schema}, provenance dict).

    `fingerprint` (data/source.json, from the `source` stage): a hub dataset is loaded at its
    resolved commit, and local files must hash to what it records."""
    import datasets

    source = params.source
    local = source_files(source)
    if local is not None:
        kind, files = local
        splits = {s: _load_split_files(s, files[s]) for s in SPLITS}
        hashes = file_fingerprints(files)  # after reading: a file replaced meanwhile no longer matches
        if fingerprint is not None:
            _check_unchanged(fingerprint.get("files") or {}, hashes)
        return splits, {"kind": kind, "files": hashes}
    resolved = (fingerprint or {}).get("resolved_revision")
    try:
        ds = datasets.load_dataset(source, revision=resolved or params.revision)
    except Exception as exc:  # offline, unreachable, not found, gated
        raise hub_error("dataset", source, exc, "data.source") from None
    missing = [s for s in SPLITS if s not in ds]
    if missing:
        raise DataError(f"{source}: has splits {', '.join(ds)}, missing {', '.join(missing)}")
    out = {}
    for split in SPLITS:
        check_schema(ds[split].data.table.schema, f"{source} [{split}]")
        out[split] = conform(ds[split].data.table)
    provenance = {"kind": "hub", "revision": params.revision,
                  "resolved_revision": resolved or _resolved_now(source, params.revision)}
    return out, provenance


def _resolved_now(repo_id: str, revision: str | None) -> str | None:
    """The commit of data loaded without a fingerprint: provenance is best effort, the data loaded."""
    try:
        return resolve_hub_sha(repo_id, revision)
    except (HubUnreachable, UserError):
        return None


def download(params: DataParams, out_dir: Path = OUT_DIR, report_path: Path = REPORT,
             fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load both splits, check their schema, save them as Arrow; return the provenance record."""
    import datasets

    splits, provenance = load_source(params, fingerprint)
    rows = {}
    for split in SPLITS:
        with atomic_dir(Path(out_dir) / split) as tmp:
            save_table(splits[split], tmp)
        rows[split] = splits[split].num_rows
        log.info("download: %d %s rows -> %s", rows[split], split, Path(out_dir) / split)
    record = {"source": params.source, **provenance, "rows": rows, "datasets_version": datasets.__version__}
    atomic_write_json(report_path, record)
    return record


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return download(params.data, fingerprint=current_fingerprint(params.data, FINGERPRINT))


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("download", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
