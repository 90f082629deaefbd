"""The tokenize stage's work, one chunk of examples at a time, in this process or in worker
processes (tasks/tokenize.py describes the two passes):

  1. tokenize_chunks: every question and distinct context of the chunks once, tokens spilled to a
     file per chunk, the longest pair / question and the largest token id kept;
  2. feature_chunk: the chunk's windows and labels from its spilled tokens, one Arrow shard, and the
     report's counts for the chunk (they add up over chunks).

Chunks, hence shards, are the same for any number of processes, and so is the output, byte for byte.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from uqa.data.arrow_shards import ArrowSource, read_rows, write_shard
from uqa.text.encoding import ChunksAhead, encode_stream
from uqa.text.windows import EncodedPairs, Labels, PairTemplate, Windows

TASK_CHUNKS = 2  # chunks per worker task in the tokenizer pass (num_proc > 1)
SPILL = ".spill"  # per split, inside its temporary output directory: gone before the rename


def list_array(values: np.ndarray, row_splits: np.ndarray) -> pa.Array:
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
    cols: dict[str, pa.Array] = {"input_ids": list_array(ids, windows.row_splits)}
    if windows.token_type_ids is not None:
        cols["token_type_ids"] = list_array(windows.token_type_ids, windows.row_splits)
    cols["start_positions"] = pa.array(labels.start_positions.astype(np.int16))  # < 512
    cols["end_positions"] = pa.array(labels.end_positions.astype(np.int16))
    cols.update(extra or {})
    return pa.table(cols)


COUNTS = ("examples", "answerable_examples", "features", "features_with_answer", "tokens",
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


@dataclass(frozen=True)
class Chunk:
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
class Tokenizing:
    """What every chunk needs: the tokenizer (no padding, no truncation) and its pair template."""

    backend: Any
    template: PairTemplate
    with_type_ids: bool


@dataclass(frozen=True)
class Windowing:
    max_seq_length: int
    stride: int
    ids_type: dict[str, str]  # split -> numpy dtype name of input_ids


def read_pairs(chunks: list[Chunk]) -> Iterator[tuple[list[str], list[str]]]:
    """Each chunk's questions and contexts."""
    for chunk in chunks:
        rows = read_rows(chunk.files, chunk.start, chunk.stop, chunk.take, ("question", "context"))
        yield rows["question"], rows["context"]


def read_ahead(chunks: list[Chunk]) -> ChunksAhead:
    """The chunks' pairs, read and cut into words in a helper thread from now on (tokenize_chunks' `ahead`)."""
    return ChunksAhead(read_pairs(chunks))


def tokenize_chunks(chunks: list[Chunk], tok: Tokenizing, ahead: ChunksAhead | None = None) -> list[dict[str, Any]]:
    """Pass 1: tokenize each chunk's questions and distinct contexts (one tokenizer pipeline through
    all the chunks given); the tokens to the chunk's spill file, its longest pair / question back.
    `ahead`: these chunks' pairs, already being read (`ChunksAhead(read_pairs(chunks))`)."""
    pairs = read_pairs(chunks) if ahead is None else ahead
    out = []
    for chunk, encoded in zip(chunks, encode_stream(tok.backend, tok.template, pairs, tok.with_type_ids),
                              strict=True):
        encoded.save(chunk.spill)
        out.append({
            "longest": int(encoded.lengths.max()),
            "longest_question": int(encoded.questions.lengths.max()),
            "max_id": encoded.max_token_id(),
        })
        del encoded
    return out


def feature_chunk(chunk: Chunk, win: Windowing, tok: Tokenizing) -> dict[str, Any]:
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
            "offset_start": list_array(windows.char_start, windows.row_splits),
            "offset_end": list_array(windows.char_end, windows.row_splits),
        }
    ids_type = np.dtype(win.ids_type[chunk.split])
    if len(windows.input_ids) and int(windows.input_ids.max()) > np.iinfo(ids_type).max:  # cannot happen
        raise AssertionError(f"{chunk.split} chunk {chunk.index}: a token id does not fit {ids_type}")
    table = features_table(windows, labels, extra, ids_type)
    features, digest = write_shard(table, chunk.shard)
    lap("write")
    counts = split_counts(windows, labels, c["context"], c["answer"], answerable)
    lap("stats")
    return {"counts": counts, "features": features, "digest": digest, "seconds": seconds}


# worker processes (tokenize.num_proc > 1): the tokenizer arrives once, as JSON, in the initializer
_WORKER: dict[str, Tokenizing] = {}


def _init_worker(tokenizer_json: str, template: PairTemplate, with_type_ids: bool, threads: int) -> None:
    from uqa.ops.procs import die_with_parent

    die_with_parent()  # a SIGKILLed stage takes its workers with it
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # the tokenizer's threads: cores / workers
    from tokenizers import Tokenizer

    _WORKER["tok"] = Tokenizing(Tokenizer.from_str(tokenizer_json), template, with_type_ids)


def _tokenize_in_worker(chunks: list[Chunk]):
    return tokenize_chunks(chunks, _WORKER["tok"])


def _feature_in_worker(chunk: Chunk, win: Windowing):
    return feature_chunk(chunk, win, _WORKER["tok"])


class Runner:
    """Runs a pass over chunks here (num_proc 1) or in a pool of spawned processes; results in order."""

    def __init__(self, tok: Tokenizing, num_proc: int) -> None:
        self.tok = tok
        self.pool: ProcessPoolExecutor | None = None
        if num_proc > 1:
            import multiprocessing

            threads = max(1, (os.cpu_count() or 1) // num_proc)
            self.pool = ProcessPoolExecutor(
                max_workers=num_proc, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(tok.backend.to_str(), tok.template, tok.with_type_ids, threads))

    def tokenize(self, chunks: list[Chunk], ahead: ChunksAhead | None = None) -> list[dict[str, Any]]:
        """`ahead` (num_proc 1 only): the chunks' pairs, already being read."""
        if self.pool is None:
            return tokenize_chunks(chunks, self.tok, ahead)
        if ahead is not None:
            raise ValueError("chunks read ahead in this process cannot go to worker processes")
        # a few consecutive chunks per task: one tokenizer pipeline through them
        groups = [chunks[a : a + TASK_CHUNKS] for a in range(0, len(chunks), TASK_CHUNKS)]
        return [r for done in self.pool.map(_tokenize_in_worker, groups) for r in done]

    def features(self, chunks: list[Chunk], win: Windowing) -> list[dict[str, Any]]:
        if self.pool is None:
            return [feature_chunk(c, win, self.tok) for c in chunks]
        return list(self.pool.map(functools.partial(_feature_in_worker, win=win), chunks))

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool) -> None:
        if self.pool is None:
            return
        if failed:  # do not wait for the other chunks: stop the workers now
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_chunks(split: str, source: ArrowSource, rows: np.ndarray | None, n_rows: int, chunk_rows: int,
            tmp: Path) -> list[Chunk]:
    count = -(-n_rows // chunk_rows)
    out = []
    for k in range(count):
        a, b = k * chunk_rows, min(n_rows, (k + 1) * chunk_rows)
        take = None if rows is None else rows[a:b]
        start, stop = (a, b) if take is None else (int(take[0]), int(take[-1]) + 1)
        out.append(Chunk(split, k, count, source.files, start, stop, take, str(tmp / SPILL / f"{k:05d}.npz"),
                          str(tmp / f"data-{k:05d}-of-{count:05d}.arrow")))
    return out
