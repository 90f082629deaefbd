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

  1. tokenize: every question and distinct context of the chunk once (as their distinct words,
     where the tokenizer cuts there anyway: uqa/text/segments.py), without special tokens (one
     tokenizer pipeline through all the chunks: the next chunk is read and cut into words in a
     helper thread while the tokenizer works, the first ones while the tokenizer loads);
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

import contextlib
import itertools
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from uqa import layout
from uqa.data.arrow_shards import ArrowSource, column_values, read_rows, write_dataset_files
from uqa.errors import UserError
from uqa.ops.atomic import atomic_dir, atomic_write_json
from uqa.params.schema import PARAMS_FILE, Params
from uqa.text import passes as tokenize_passes
from uqa.text.encoding import prepare_backend
from uqa.text.passes import COUNTS, SPILL, Runner, Tokenizing, Windowing, make_chunks, split_report
from uqa.text.windows import PairTemplate

log = logging.getLogger(__name__)

SPLITS = layout.SPLITS
IN_DIR = layout.FILTERED_DIR
OUT_DIR = layout.TOKENIZED_DIR
TOKENIZER_DIR = layout.TOKENIZER_DIR
REPORT = layout.report("tokenize")

# examples per chunk (= per shard): ~35k windows of real UQA, ~0.1-0.2 GB of working memory
CHUNK_ROWS = 32_768


def get_tokenizer(params: Params, train_texts=None):
    from uqa.text.tokenizer import load_tokenizer, train_tokenizer

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


def tokenize_splits(params: Params, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR,
                    report_path: Path = REPORT, chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    clock = _Clock()
    sources, kept, n_rows = _open_splits(Path(in_dir))
    train = sources["train"]
    texts = itertools.chain(column_values(train, "question", chunk_rows), column_values(train, "context", chunk_rows))
    clock.lap("read")
    # both splits' temporary directories at once: the spill files live in them, and a failure
    # anywhere leaves the previous outputs in place; train is renamed first, as before
    with atomic_dir(Path(out_dir) / "validation") as val_tmp, atomic_dir(Path(out_dir) / "train") as train_tmp:
        tmp = {"train": train_tmp, "validation": val_tmp}
        chunks = {}
        for s in SPLITS:
            (tmp[s] / SPILL).mkdir()
            chunks[s] = make_chunks(s, sources[s], kept[s], n_rows[s], chunk_rows, tmp[s])
        every = chunks["train"] + chunks["validation"]
        num_proc = max(1, min(params.tokenize.num_proc, len(every)))
        # in one process, the first chunks are read and cut into words while the tokenizer loads
        with tokenize_passes.read_ahead(every) if num_proc == 1 else contextlib.nullcontext() as ahead:
            tokenizer = get_tokenizer(params, texts)
            clock.lap("load_tokenizer")
            report, done = _two_passes(params, tokenizer, chunks, num_proc, ahead, clock)
        for s in SPLITS:
            report[s] = _finish_split(s, tmp[s], done[s])
        clock.lap("write")
    with atomic_dir(Path(out_dir) / "tokenizer") as tmp_tok:
        tokenizer.save_pretrained(str(tmp_tok))
    clock.lap("write")
    report["seconds"] = clock.totals
    atomic_write_json(report_path, report)
    return report


def _two_passes(params: Params, tokenizer, chunks: dict[str, list], num_proc: int, ahead,
                clock: _Clock) -> tuple[dict, dict]:
    """Pass 1 over every chunk of both splits (tokens spilled; the window size follows from the
    longest pair), then pass 2 (windows, labels, shards): (the report so far, each split's chunk
    results). `ahead`: pass 1's pairs, already being read (num_proc 1)."""
    from uqa.model.modeling import sequence_limit

    backend = prepare_backend(tokenizer.backend_tokenizer)
    tok = Tokenizing(backend, PairTemplate.of(backend), "token_type_ids" in tokenizer.model_input_names)
    every = chunks["train"] + chunks["validation"]
    n_train = len(chunks["train"])
    with Runner(tok, num_proc) as runner:
        firsts = runner.tokenize(every, ahead)
        clock.lap("tokenize_texts")
        report = _window_size(params, firsts, sequence_limit(params.model, tokenizer), tok.template.n_special)
        report.update(tokenizer=params.model.tokenizer_source or "trained on train split", vocab_size=len(tokenizer))
        by_split = {"train": firsts[:n_train], "validation": firsts[n_train:]}
        ids_type = {s: "uint16" if max(f["max_id"] for f in by_split[s]) < 2**16 else "int32" for s in SPLITS}
        results = runner.features(every, Windowing(report["max_seq_length"], report["stride"], ids_type))
    clock.add_chunk_times(results)
    return report, {"train": results[:n_train], "validation": results[n_train:]}


def _open_splits(in_dir: Path) -> tuple[dict[str, ArrowSource], dict[str, np.ndarray | None], dict[str, int]]:
    """The filtered splits, the rows kept of each (validation: one example per question id, as UQA
    repeats ids with one row per reference answer; train: every row) and how many."""
    sources = {s: ArrowSource.open(in_dir / s) for s in SPLITS}
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
    write_dataset_files(tmp, len(done), features[0], [r["digest"] for r in done])
    report = split_report({k: sum(r["counts"][k] for r in done) for k in COUNTS})
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


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return tokenize_splits(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("tokenize", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
