"""A dataset split as Arrow shards, in bounded memory: reading rows of a `save_to_disk` directory
through a memory map that is closed again after each read, and writing a split chunk by chunk as a
multi-shard `save_to_disk` directory (`data-0000k-of-0000n.arrow` + state.json + dataset_info.json)
that `datasets.load_from_disk` reads as one dataset.

`datasets` itself can write in bounded memory (Dataset.from_generator, save_to_disk(num_shards=...)),
but only from Python rows: measured on the tokenize stage's features it took several times longer
(benchmarks/README.md, "Shard writer"), so the shards are written here with datasets' own ArrowWriter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from uqa.errors import UserError
from uqa.ops.hashing import update_from_file

WRITER_BATCH_ROWS = 1000  # rows per Arrow record batch in a shard (datasets' save_to_disk default)


@dataclass(frozen=True)
class ArrowSource:
    """A filtered split as save_to_disk wrote it: its Arrow files (IPC streams), in order."""

    path: Path
    files: tuple[str, ...]
    num_rows: int

    @classmethod
    def open(cls, path: Path) -> ArrowSource:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if ds._indices is not None:  # save_to_disk writes the selected rows, never an indices mapping
            raise UserError(f"{path}: a dataset with an indices mapping; write it with save_to_disk")
        files = tuple(c["filename"] for c in ds.cache_files)
        n = ds.num_rows
        del ds
        return cls(Path(path), files, n)


def read_rows(files: tuple[str, ...], start: int, stop: int, take: np.ndarray | None,
              columns: tuple[str, ...]) -> dict[str, Any]:
    """Columns of rows start..stop-1 (or of the rows `take`, within that range) as Python lists
    (strings) and numpy arrays (numbers), copied out of a memory map that is closed again: the
    pages read do not stay in the resident set. `answer` also gives `answer_chars` (code points)."""
    batches: list[pa.RecordBatch] = []
    offset = 0
    schema = None
    for path in files:
        if offset >= stop:
            break
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            schema = reader.schema
            for batch in reader:  # zero-copy: skipping a batch reads only its metadata
                n = batch.num_rows
                if offset + n > start and offset < stop:
                    lo = max(start - offset, 0)
                    batches.append(batch.slice(lo, min(stop - offset, n) - lo).select(list(columns)))
                offset += n
                if offset >= stop:
                    break
    if not batches:
        schema = pa.schema([schema.field(name) for name in columns])
    table = pa.Table.from_batches(batches, schema=None if batches else schema)
    if take is not None:
        table = table.take(pa.array(np.asarray(take, dtype=np.int64) - start))
    out: dict[str, Any] = {}
    for name in columns:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = col.to_pylist()
        else:
            out[name] = np.array(col.to_numpy(zero_copy_only=False), copy=True)
        if name == "answer":
            out["answer_chars"] = np.array(pc.utf8_length(col).to_numpy(zero_copy_only=False), copy=True)
    del table, batches
    return out


def column_values(source: ArrowSource, column: str, chunk_rows: int):
    for a in range(0, source.num_rows, chunk_rows):
        yield from read_rows(source.files, a, min(source.num_rows, a + chunk_rows), None, (column,))[column]


def write_shard(table: pa.Table, path: str) -> tuple[dict, str]:
    """One shard as Dataset.save_to_disk writes one (datasets' ArrowWriter: the features in the
    schema metadata, record batches of 1000 rows); (its features, a hash of its bytes)."""
    import xxhash
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    features = Features.from_arrow_schema(table.schema)
    writer = ArrowWriter(features=features, path=path, embed_local_files=True)
    try:
        for start in range(0, max(1, table.num_rows), WRITER_BATCH_ROWS):
            writer.write_table(table.slice(start, WRITER_BATCH_ROWS))
        writer.finalize()
    finally:
        writer.close()
    return features.to_dict(), update_from_file(xxhash.xxh64(), path).hexdigest()


def write_dataset_files(directory: Path, count: int, features: dict, digests: list[str]) -> None:
    """state.json and dataset_info.json of a save_to_disk directory with `count` shards."""
    from datasets import DatasetInfo, Features
    from datasets.utils.py_utils import asdict

    state = {
        "_data_files": [{"filename": f"data-{k:05d}-of-{count:05d}.arrow"} for k in range(count)],
        # from the shards' bytes: the same features give the same fingerprint (DVC sees no change)
        "_fingerprint": combine_digests(digests),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    info = asdict(DatasetInfo(features=Features.from_dict(features)))
    (directory / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2),
                                                 encoding="utf-8")


def save_table(table: pa.Table, directory: Path) -> None:
    """`Dataset(table).save_to_disk(directory)`, as one shard, with the fingerprint taken from the
    shard's bytes: datasets would fingerprint an in-memory table by pickling all of it (1.3 s of the
    download stage's 3.6 s on full UQA), and save_to_disk writes the same files otherwise."""
    name = "data-00000-of-00001.arrow"
    features, digest = write_shard(table, str(Path(directory) / name))
    write_dataset_files(Path(directory), 1, features, [digest])


def combine_digests(digests: list[str]) -> str:
    import xxhash

    return xxhash.xxh64("".join(digests).encode()).hexdigest()
