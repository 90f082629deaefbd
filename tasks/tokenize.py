"""Stage `tokenize`: filtered rows -> sliding-window features, cached as Arrow.

inputs:  data/filtered/{train,validation}; params model.name, model.tokenizer, model.init, tokenize
outputs: data/tokenized/{train,validation} (Arrow, unpadded), data/tokenized/tokenizer (the tokenizer
         used: train and evaluate load it from here, so features and model always agree),
         reports/tokenize.json

Train features: input_ids, start_positions, end_positions (CLS when the answer is not in the window).
Validation features (one example per question id: the id's first row; evaluation scores against all
of the id's answers) add example_index, example_id and context-only character offsets.

Memory stays flat however large the corpus (benchmarks/README.md, section 6): the rows are read and
processed in chunks of CHUNK_ROWS examples, and each chunk's features are written as one shard of the
split (`data-0000k-of-0000n.arrow`, a multi-file `save_to_disk` directory that
`datasets.load_from_disk` reads as one dataset). Two passes over the chunks:

  1. tokenize: every question and distinct context of the chunk once, without special tokens (one
     tokenizer pipeline through all the chunks: the next chunk is read while the tokenizer works);
     the tokens go to a spill file inside the split's temporary output directory, and only the
     longest pair / question and the largest token id are kept (`max_seq_length: auto` needs the
     longest pair of both splits before any window is cut, and every shard needs the same
     input_ids type);
  2. features: the chunk's tokens back from the spill, windows, labels, one shard, partial counts
     (they add up to the report's figures).

The input is read through a memory map opened per chunk and closed after it, so the mapped input
does not accumulate in the resident set either. `tokenize.num_proc` > 1 runs the chunks of each pass
in that many (spawned) processes; the chunks, hence the shards, are the same for any num_proc, and so
is the output, byte for byte (rows in the same order, same columns and types, same labels, same
report except timings). A script that calls `tokenize_splits` with num_proc > 1 needs the usual
`if __name__ == "__main__":` guard (multiprocessing's spawn imports the main module).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from uqa import layout
from uqa.atomic import atomic_dir, atomic_write_json
from uqa.errors import UserError
from uqa.features import EncodedPairs, Labels, PairTemplate, Windows, encode_stream, prepare_backend
from uqa.params import Params

log = logging.getLogger(__name__)

SPLITS = layout.SPLITS
IN_DIR = layout.FILTERED_DIR
OUT_DIR = layout.TOKENIZED_DIR
TOKENIZER_DIR = layout.TOKENIZER_DIR
REPORT = layout.report("tokenize")

# examples per chunk (= per shard): ~35k windows of real UQA, ~0.1-0.2 GB of working memory
CHUNK_ROWS = 32_768
TASK_CHUNKS = 2  # chunks per worker task in the tokenizer pass (num_proc > 1)
SPILL = ".spill"  # per split, inside its temporary output directory: gone before the rename
WRITER_BATCH_ROWS = 1000  # rows per Arrow record batch in a shard (datasets' save_to_disk default)


def get_tokenizer(params: Params, train_texts=None):
    from uqa.tokenizer import load_tokenizer, train_tokenizer

    source = params.model.tokenizer_source
    if source is not None:
        return load_tokenizer(source, params.model.trust_remote_code)
    if train_texts is None:
        raise UserError("model.tokenizer is null with model.init: scratch, and there is no train data to train one on")
    log.info("tokenize: training a tokenizer (%d pieces at most) on the train split", params.tokenize.vocab_size)
    return train_tokenizer(train_texts, params.tokenize.vocab_size)


def first_row_per_id(ids: list[str]) -> np.ndarray:
    """Row indices of the first occurrence of each id, in row order."""
    _, first = np.unique(np.asarray(ids, dtype=object), return_index=True)
    return np.sort(first)


def _list_array(values: np.ndarray, row_splits: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(row_splits.astype(np.int32)), pa.array(values))


def features_table(windows: Windows, labels: Labels, extra: dict[str, pa.Array] | None = None,
                   ids_type: np.dtype | type | None = None) -> pa.Table:
    """Unpadded features; the narrowest integer types that hold them (a 32k vocabulary fits uint16).

    `ids_type` fixes the input_ids type (the stage decides it once per split, so that every shard
    has the same schema); None = uint16 when these windows' ids fit, else int32."""
    ids = windows.input_ids
    if ids_type is not None:
        ids = ids.astype(ids_type)
    elif len(ids) == 0 or int(ids.max()) < 2**16:
        ids = ids.astype(np.uint16)
    cols: dict[str, pa.Array] = {"input_ids": _list_array(ids, windows.row_splits)}
    if windows.token_type_ids is not None:
        cols["token_type_ids"] = _list_array(windows.token_type_ids, windows.row_splits)
    cols["start_positions"] = pa.array(labels.start_positions.astype(np.int16))  # < 512
    cols["end_positions"] = pa.array(labels.end_positions.astype(np.int16))
    cols.update(extra or {})
    return pa.table(cols)


_COUNTS = ("examples", "answerable_examples", "features", "features_with_answer", "tokens",
           "answers_lost_to_truncation", "label_span_text_exact", "labelled_examples")


def split_counts(windows: Windows, labels: Labels, contexts: list[str], answers: list[str],
                 answerable: np.ndarray) -> dict[str, int]:
    """The report's counts for some examples and all of their windows (they add up over chunks)."""
    n_examples = len(contexts)
    labelled_examples = np.zeros(n_examples, dtype=bool)
    labelled_examples[windows.window_to_example[labels.has_answer]] = True
    # exact-text rate of the label spans: the first labelled window of each answerable example
    win = np.flatnonzero(labels.has_answer)
    ex = windows.window_to_example[win]
    _, first = np.unique(ex, return_index=True)
    win, ex = win[first], ex[first]
    cs, ce = labels.start_char[win], labels.end_char[win]
    # stripped: a Metaspace piece's offsets may include the space before the word
    exact = sum(contexts[e][s:t].strip() == answers[e]
                for e, s, t in zip(ex.tolist(), cs.tolist(), ce.tolist(), strict=True))
    return {
        "examples": n_examples,
        "answerable_examples": int(answerable.sum()),
        "features": windows.n_windows,
        "features_with_answer": int(labels.has_answer.sum()),
        "tokens": int(len(windows.input_ids)),
        "answers_lost_to_truncation": int((answerable & ~labelled_examples).sum()),
        "label_span_text_exact": int(exact),
        "labelled_examples": int(len(win)),
    }


def split_report(counts: dict[str, int]) -> dict[str, Any]:
    """The split's section of reports/tokenize.json from its summed counts."""
    features = counts["features"]
    return {
        "examples": counts["examples"],
        "answerable_examples": counts["answerable_examples"],
        "features": features,
        "features_with_answer": counts["features_with_answer"],
        "tokens": counts["tokens"],
        # = round(mean of the window lengths, 2): the sum of integers is exact in float64 either way
        "mean_feature_length": round(counts["tokens"] / features, 2) if features else 0.0,
        "answers_lost_to_truncation": counts["answers_lost_to_truncation"],
        "label_span_text_exact": counts["label_span_text_exact"],
        "label_span_text_exact_fraction": round(counts["label_span_text_exact"]
                                                / max(1, counts["labelled_examples"]), 6),
    }


def split_stats(windows: Windows, labels: Labels, contexts: list[str], answers: list[str],
                starts: np.ndarray, answerable: np.ndarray) -> dict[str, Any]:
    return split_report(split_counts(windows, labels, contexts, answers, answerable))


# ---------------------------------------------------------------------------------------------------
# reading the filtered splits in bounded memory


@dataclass(frozen=True)
class _Source:
    """A filtered split as save_to_disk wrote it: its Arrow files (IPC streams), in order."""

    path: Path
    files: tuple[str, ...]
    num_rows: int

    @classmethod
    def open(cls, path: Path) -> _Source:
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


def _texts(source: _Source, column: str, chunk_rows: int):
    for a in range(0, source.num_rows, chunk_rows):
        yield from read_rows(source.files, a, min(source.num_rows, a + chunk_rows), None, (column,))[column]


# ---------------------------------------------------------------------------------------------------
# the two passes, one chunk at a time (in this process, or in worker processes)


@dataclass(frozen=True)
class _Chunk:
    split: str
    index: int
    count: int  # chunks in the split
    files: tuple[str, ...]
    start: int  # input rows start..stop-1 hold the chunk's examples
    stop: int
    take: np.ndarray | None  # the examples' input rows, when not all of start..stop-1 (validation)
    spill: str
    shard: str


@dataclass(frozen=True)
class _Tokenizing:
    """What every chunk needs: the tokenizer (no padding, no truncation) and its pair template."""

    backend: Any
    template: PairTemplate
    with_type_ids: bool


@dataclass(frozen=True)
class _Windowing:
    max_seq_length: int
    stride: int
    ids_type: dict[str, str]  # split -> numpy dtype name of input_ids


def _tokenize_chunks(chunks: list[_Chunk], tok: _Tokenizing) -> list[dict[str, Any]]:
    """Pass 1: tokenize each chunk's questions and distinct contexts (one tokenizer pipeline through
    all the chunks given); the tokens to the chunk's spill file, its longest pair / question back."""
    def pairs():
        for chunk in chunks:
            rows = read_rows(chunk.files, chunk.start, chunk.stop, chunk.take, ("question", "context"))
            yield rows["question"], rows["context"]

    out = []
    for chunk, encoded in zip(chunks, encode_stream(tok.backend, tok.template, pairs(), tok.with_type_ids),
                              strict=True):
        encoded.save(chunk.spill)
        out.append({
            "longest": int(encoded.lengths.max()),
            "longest_question": int(encoded.questions.lengths.max()),
            "max_id": encoded.max_token_id(),
        })
        del encoded
    return out


def _feature_chunk(chunk: _Chunk, win: _Windowing, tok: _Tokenizing) -> dict[str, Any]:
    """Pass 2: the chunk's windows and labels from its spilled tokens; one shard; partial counts."""
    seconds: dict[str, float] = {}
    last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - last
        last = now

    validation = chunk.split == "validation"
    columns = ("context", "answer", "answer_start", "is_impossible") + (("id",) if validation else ())
    c = read_rows(chunk.files, chunk.start, chunk.stop, chunk.take, columns)
    encoded = EncodedPairs.load(chunk.spill, tok.template, tok.with_type_ids)
    os.unlink(chunk.spill)
    layout = encoded.layout(win.max_seq_length, win.stride)
    # train stores no offsets: its labels come from the contexts' offsets, not the windows'
    windows = encoded.assemble(layout, with_offsets=validation)
    lap("assemble_windows")
    starts = c["answer_start"].astype(np.int64)
    ends = starts + c["answer_chars"]
    answerable = ~c["is_impossible"].astype(bool)
    starts = np.where(answerable, starts, -1)
    labels = encoded.labels(layout, starts, ends, cls_index=0)
    lap("labels")
    extra = None
    if validation:
        wte = windows.window_to_example
        extra = {
            # row of data/filtered/validation the window belongs to
            "example_index": pa.array(np.asarray(chunk.take)[wte].astype(np.int32)),
            "example_id": pa.array([c["id"][i] for i in wte.tolist()], type=pa.string()),
            "offset_start": _list_array(windows.char_start, windows.row_splits),
            "offset_end": _list_array(windows.char_end, windows.row_splits),
        }
    ids_type = np.dtype(win.ids_type[chunk.split])
    if len(windows.input_ids) and int(windows.input_ids.max()) > np.iinfo(ids_type).max:  # cannot happen
        raise AssertionError(f"{chunk.split} chunk {chunk.index}: a token id does not fit {ids_type}")
    table = features_table(windows, labels, extra, ids_type)
    features, digest = _write_shard(table, chunk.shard)
    lap("write")
    counts = split_counts(windows, labels, c["context"], c["answer"], answerable)
    lap("stats")
    return {"counts": counts, "features": features, "digest": digest, "seconds": seconds}


def _write_shard(table: pa.Table, path: str) -> tuple[dict, str]:
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
    h = xxhash.xxh64()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return features.to_dict(), h.hexdigest()


def _write_dataset_files(directory: Path, count: int, features: dict, digests: list[str]) -> None:
    """state.json and dataset_info.json of a save_to_disk directory with `count` shards."""
    from datasets import DatasetInfo, Features
    from datasets.utils.py_utils import asdict

    state = {
        "_data_files": [{"filename": f"data-{k:05d}-of-{count:05d}.arrow"} for k in range(count)],
        # from the shards' bytes: the same features give the same fingerprint (DVC sees no change)
        "_fingerprint": _combine(digests),
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


def _combine(digests: list[str]) -> str:
    import xxhash

    return xxhash.xxh64("".join(digests).encode()).hexdigest()


# worker processes (tokenize.num_proc > 1): the tokenizer arrives once, as JSON, in the initializer
_WORKER: dict[str, _Tokenizing] = {}


def _init_worker(tokenizer_json: str, template: PairTemplate, with_type_ids: bool, threads: int) -> None:
    from uqa.procs import die_with_parent

    die_with_parent()  # a SIGKILLed stage takes its workers with it
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # the tokenizer's threads: cores / workers
    from tokenizers import Tokenizer

    _WORKER["tok"] = _Tokenizing(Tokenizer.from_str(tokenizer_json), template, with_type_ids)


def _tokenize_in_worker(chunks: list[_Chunk]):
    return _tokenize_chunks(chunks, _WORKER["tok"])


def _feature_in_worker(chunk: _Chunk, win: _Windowing):
    return _feature_chunk(chunk, win, _WORKER["tok"])


class _Runner:
    """Runs a pass over chunks here (num_proc 1) or in a pool of spawned processes; results in order."""

    def __init__(self, tok: _Tokenizing, num_proc: int) -> None:
        self.tok = tok
        self.pool: ProcessPoolExecutor | None = None
        if num_proc > 1:
            import multiprocessing

            threads = max(1, (os.cpu_count() or 1) // num_proc)
            self.pool = ProcessPoolExecutor(
                max_workers=num_proc, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(tok.backend.to_str(), tok.template, tok.with_type_ids, threads))

    def tokenize(self, chunks: list[_Chunk]) -> list[dict[str, Any]]:
        if self.pool is None:
            return _tokenize_chunks(chunks, self.tok)
        # a few consecutive chunks per task: one tokenizer pipeline through them
        groups = [chunks[a : a + TASK_CHUNKS] for a in range(0, len(chunks), TASK_CHUNKS)]
        return [r for done in self.pool.map(_tokenize_in_worker, groups) for r in done]

    def features(self, chunks: list[_Chunk], win: _Windowing) -> list[dict[str, Any]]:
        if self.pool is None:
            return [_feature_chunk(c, win, self.tok) for c in chunks]
        return list(self.pool.map(functools.partial(_feature_in_worker, win=win), chunks))

    def close(self, failed: bool) -> None:
        if self.pool is None:
            return
        if failed:  # do not wait for the other chunks: stop the workers now
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _chunks(split: str, source: _Source, rows: np.ndarray | None, n_rows: int, chunk_rows: int,
            tmp: Path) -> list[_Chunk]:
    count = -(-n_rows // chunk_rows)
    out = []
    for k in range(count):
        a, b = k * chunk_rows, min(n_rows, (k + 1) * chunk_rows)
        take = None if rows is None else rows[a:b]
        start, stop = (a, b) if take is None else (int(take[0]), int(take[-1]) + 1)
        out.append(_Chunk(split, k, count, source.files, start, stop, take, str(tmp / SPILL / f"{k:05d}.npz"),
                          str(tmp / f"data-{k:05d}-of-{count:05d}.arrow")))
    return out


def tokenize_splits(params: Params, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR,
                    report_path: Path = REPORT, chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    clock = _Clock()
    sources, kept, n_rows = _open_splits(Path(in_dir))
    train = sources["train"]
    texts = itertools.chain(_texts(train, "question", chunk_rows), _texts(train, "context", chunk_rows))
    clock.lap("read")
    tokenizer = get_tokenizer(params, texts)
    clock.lap("load_tokenizer")
    backend = prepare_backend(tokenizer.backend_tokenizer)
    tok = _Tokenizing(backend, PairTemplate.of(backend), "token_type_ids" in tokenizer.model_input_names)
    from uqa.modeling import sequence_limit

    limit = sequence_limit(params.model, tokenizer)
    report: dict[str, Any] = {}
    # both splits' temporary directories at once: the spill files live in them, and a failure
    # anywhere leaves the previous outputs in place; train is renamed first, as before
    with atomic_dir(Path(out_dir) / "validation") as val_tmp, atomic_dir(Path(out_dir) / "train") as train_tmp:
        tmp = {"train": train_tmp, "validation": val_tmp}
        chunks = {}
        for s in SPLITS:
            (tmp[s] / SPILL).mkdir()
            chunks[s] = _chunks(s, sources[s], kept[s], n_rows[s], chunk_rows, tmp[s])
        every = chunks["train"] + chunks["validation"]
        n_train = len(chunks["train"])
        runner = _Runner(tok, max(1, min(params.tokenize.num_proc, len(every))))
        failed = True
        try:
            # pass 1: every question and every distinct context, once; lengths kept, tokens spilled
            firsts = runner.tokenize(every)
            clock.lap("tokenize_texts")
            report.update(_window_size(params, firsts, limit, tok.template.n_special))
            report.update(tokenizer=params.model.tokenizer_source or "trained on train split",
                          vocab_size=len(tokenizer))
            by_split = {"train": firsts[:n_train], "validation": firsts[n_train:]}
            ids_type = {s: "uint16" if max(f["max_id"] for f in by_split[s]) < 2**16 else "int32" for s in SPLITS}
            # pass 2: windows, labels and one shard per chunk
            results = runner.features(every, _Windowing(report["max_seq_length"], report["stride"], ids_type))
            failed = False
        finally:
            runner.close(failed)
        clock.add_chunk_times(results)
        done = {"train": results[:n_train], "validation": results[n_train:]}
        for s in SPLITS:
            report[s] = _finish_split(s, tmp[s], done[s])
        clock.lap("write")
    with atomic_dir(Path(out_dir) / "tokenizer") as tmp_tok:
        tokenizer.save_pretrained(str(tmp_tok))
    clock.lap("write")
    report["seconds"] = clock.totals
    atomic_write_json(report_path, report)
    return report


def _open_splits(in_dir: Path) -> tuple[dict[str, _Source], dict[str, np.ndarray | None], dict[str, int]]:
    """The filtered splits, the rows kept of each (validation: one example per question id, as UQA
    repeats ids with one row per reference answer; train: every row) and how many."""
    sources = {s: _Source.open(in_dir / s) for s in SPLITS}
    val = sources["validation"]
    val_rows = first_row_per_id(read_rows(val.files, 0, val.num_rows, None, ("id",))["id"])
    kept: dict[str, np.ndarray | None] = {"train": None, "validation": val_rows}
    n_rows = {"train": sources["train"].num_rows, "validation": len(val_rows)}
    for s in SPLITS:
        if not n_rows[s]:
            raise UserError(f"{in_dir / s}: no rows left after filtering; see reports/filter.json")
    return sources, kept, n_rows


def _window_size(params: Params, firsts: list[dict[str, Any]], limit: int, n_special: int) -> dict[str, Any]:
    """max_seq_length (auto: the longest pair, capped at the model's limit) and stride, checked to
    leave the longest question room for context next to it."""
    stride = params.tokenize.stride
    longest = max(f["longest"] for f in firsts)
    if params.tokenize.max_seq_length == "auto":
        max_seq_length = min(longest, limit)
    else:
        max_seq_length = int(params.tokenize.max_seq_length)
        if max_seq_length > limit:
            raise UserError(f"tokenize.max_seq_length {max_seq_length} exceeds the model's limit {limit}")
    longest_question = max(f["longest_question"] for f in firsts)
    room = max_seq_length - longest_question - n_special
    if room < 8 or (longest > max_seq_length and room <= stride):  # with auto, windowing may not be needed
        raise UserError(
            f"tokenize: max_seq_length {max_seq_length} leaves {room} context tokens next to the longest "
            f"question ({longest_question} tokens), with stride {stride}; lower tokenize.stride or raise "
            "tokenize.max_seq_length"
        )
    return {"max_seq_length": max_seq_length, "max_seq_length_param": params.tokenize.max_seq_length,
            "longest_pair_tokens": longest, "model_limit": limit, "stride": stride}


def _finish_split(split: str, tmp: Path, done: list[dict[str, Any]]) -> dict[str, Any]:
    """The split's shards made one dataset (datasets' own metadata files); its report."""
    shutil.rmtree(tmp / SPILL)
    features = [r["features"] for r in done]
    if any(f != features[0] for f in features):
        raise AssertionError(f"{split}: shards with different features: {features}")
    _write_dataset_files(tmp, len(done), features[0], [r["digest"] for r in done])
    report = split_report({k: sum(r["counts"][k] for r in done) for k in _COUNTS})
    log.info("tokenize [%s]: %s (%d shards)", split, report, len(done))
    return report


class _Clock:
    """Wall time per step, for the report (where the stage's time goes)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[name] = round(self.totals.get(name, 0.0) + now - self.last, 3)
        self.last = now

    def add_chunk_times(self, results: list[dict[str, Any]]) -> None:
        """The chunks' own step times of the window pass (summed over processes when num_proc > 1)."""
        self.last = time.perf_counter()
        for r in results:
            for k, v in r["seconds"].items():
                self.totals[k] = round(self.totals.get(k, 0.0) + v, 3)


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return tokenize_splits(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("tokenize", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
