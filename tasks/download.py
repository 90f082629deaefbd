"""Stage `download`: UQA (hub id, local dataset dir, or data files) -> data/raw/{train,validation}.

inputs:  params data.source, data.revision; data/source.json (what the source is now: the `source` stage)
outputs: data/raw/train, data/raw/validation (Arrow, save_to_disk), reports/download.json (provenance)

A hub dataset is loaded at the commit the `source` stage resolved, so the data matches the
fingerprint DVC recorded; local files must still hash to what the fingerprint says.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.atomic import atomic_dir, atomic_write_json
from uqa.errors import DataError, UserError
from uqa.hub import hub_error, looks_local
from uqa.params import DataParams, Params
from uqa.schema import check_schema, conform

log = logging.getLogger(__name__)

SPLITS = layout.SPLITS
OUT_DIR = layout.RAW_DIR
REPORT = layout.report("download")
FINGERPRINT = layout.SOURCE_FINGERPRINT  # written by the `source` stage (tasks/source.py)

BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_for(spec: Any, where: str) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else list(spec or [])
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(Path(str(pattern)).expanduser())))
        if not matched:
            raise UserError(f"{where}: no file matches {pattern!r}")
        files.extend(matched)
    return files


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
            first = (str(exc).splitlines() or [""])[0][:300]
            raise DataError(f"{f}: could not be read as {builder}: {type(exc).__name__}: {first}") from None
        check_schema(part.data.table.schema, f)
        parts.append(datasets.Dataset(conform(part.data.table)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


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
    """{split: [{path, size, sha256}, ...]}: every file that will be read, by content."""
    return {s: [{"path": f, "size": os.path.getsize(f), "sha256": sha256_file(f)} for f in fs]
            for s, fs in files.items()}


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
    """Returns ({split: Dataset with the canonical UQA schema}, provenance dict).

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
        out[split] = datasets.Dataset(conform(ds[split].data.table))
    provenance = {"kind": "hub", "revision": params.revision,
                  "resolved_revision": resolved or _hub_sha(source, params.revision)}
    return out, provenance


def _hub_sha(repo_id: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:  # provenance is best effort: the data itself already loaded
        return None


def download(params: DataParams, out_dir: Path = OUT_DIR, report_path: Path = REPORT,
             fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load both splits, check their schema, save them as Arrow; return the provenance record."""
    import datasets

    splits, provenance = load_source(params, fingerprint)
    rows = {}
    for split in SPLITS:
        with atomic_dir(Path(out_dir) / split) as tmp:
            splits[split].save_to_disk(str(tmp))
        rows[split] = len(splits[split])
        log.info("download: %d %s rows -> %s", rows[split], split, Path(out_dir) / split)
    record = {"source": params.source, **provenance, "rows": rows, "datasets_version": datasets.__version__}
    atomic_write_json(report_path, record)
    return record


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    from tasks.source import current_fingerprint

    return download(params.data, fingerprint=current_fingerprint(params.data, FINGERPRINT))


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("download", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
