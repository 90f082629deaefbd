"""Stage `tokenize`: filtered rows -> sliding-window features, cached as Arrow.

inputs:  data/filtered/{train,validation}; params model.name, model.tokenizer, model.init, tokenize
outputs: data/tokenized/{train,validation} (Arrow, unpadded), data/tokenized/tokenizer (the tokenizer
         used: train and evaluate load it from here, so features and model always agree),
         reports/tokenize.json

Train features: input_ids, start_positions, end_positions (CLS when the answer is not in the window).
Validation features (one example per question id: the id's first row; evaluation scores against all
of the id's answers) add example_index, example_id and context-only character offsets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from uqa.atomic import atomic_dir, atomic_write_json
from uqa.errors import UserError
from uqa.features import Labels, Windows, encode_pairs
from uqa.params import Params

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
IN_DIR = Path("data/filtered")
OUT_DIR = Path("data/tokenized")
TOKENIZER_DIR = OUT_DIR / "tokenizer"
REPORT = Path("reports/tokenize.json")
PARAMS = ["model.name", "model.tokenizer", "model.init", "tokenize"]
DEPS = [str(IN_DIR / s) for s in SPLITS]
OUTS = [str(OUT_DIR / s) for s in SPLITS] + [str(TOKENIZER_DIR)]
METRICS = [str(REPORT)]


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


def features_table(windows: Windows, labels: Labels, extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """Unpadded features; the narrowest integer types that hold them (a 32k vocabulary fits uint16)."""
    ids = windows.input_ids
    if len(ids) == 0 or int(ids.max()) < 2**16:
        ids = ids.astype(np.uint16)
    cols: dict[str, pa.Array] = {"input_ids": _list_array(ids, windows.row_splits)}
    if windows.token_type_ids is not None:
        cols["token_type_ids"] = _list_array(windows.token_type_ids, windows.row_splits)
    cols["start_positions"] = pa.array(labels.start_positions.astype(np.int16))  # < 512
    cols["end_positions"] = pa.array(labels.end_positions.astype(np.int16))
    cols.update(extra or {})
    return pa.table(cols)


def split_stats(windows: Windows, labels: Labels, contexts: list[str], answers: list[str],
                starts: np.ndarray, answerable: np.ndarray) -> dict[str, Any]:
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
    n_answerable = int(answerable.sum())
    lost = int((answerable & ~labelled_examples).sum())
    return {
        "examples": n_examples,
        "answerable_examples": n_answerable,
        "features": windows.n_windows,
        "features_with_answer": int(labels.has_answer.sum()),
        "tokens": int(len(windows.input_ids)),
        "mean_feature_length": round(float(windows.lengths.mean()), 2) if windows.n_windows else 0.0,
        "answers_lost_to_truncation": lost,
        "label_span_text_exact": exact,
        "label_span_text_exact_fraction": round(exact / max(1, len(win)), 6),
    }


def tokenize_splits(params: Params, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR,
                    report_path: Path = REPORT) -> dict[str, Any]:
    import datasets

    tables = {s: datasets.load_from_disk(str(Path(in_dir) / s)).data.table for s in SPLITS}
    # validation: one example per question id (UQA repeats ids, one row per reference answer)
    val_rows = first_row_per_id(tables["validation"].column("id").to_pylist())
    tables["validation"] = tables["validation"].take(pa.array(val_rows))

    columns = {s: {c: tables[s].column(c).to_pylist() for c in ("question", "context", "answer")} for s in SPLITS}
    columns["validation"]["id"] = tables["validation"].column("id").to_pylist()
    for s in SPLITS:
        columns[s]["answer_start"] = tables[s].column("answer_start").to_numpy()
        columns[s]["is_impossible"] = tables[s].column("is_impossible").to_numpy(zero_copy_only=False)
        columns[s]["source_row"] = tables[s].column("source_row").to_numpy()
        if not columns[s]["question"]:
            raise UserError(f"{Path(in_dir) / s}: no rows left after filtering; see reports/filter.json")

    texts = (t for c in (columns["train"]["question"], columns["train"]["context"]) for t in c)
    clock = _Clock()
    tokenizer = get_tokenizer(params, texts)
    clock.lap("load_tokenizer")
    backend = tokenizer.backend_tokenizer
    with_type_ids = "token_type_ids" in tokenizer.model_input_names
    from uqa.modeling import sequence_limit

    limit = sequence_limit(params.model, tokenizer)
    stride = params.tokenize.stride

    # one tokenizer pass: every question and every distinct context, once
    encoded = {s: encode_pairs(backend, columns[s]["question"], columns[s]["context"], with_type_ids) for s in SPLITS}
    clock.lap("tokenize_texts")
    longest = int(max(encoded[s].lengths.max() for s in SPLITS))
    if params.tokenize.max_seq_length == "auto":
        max_seq_length = min(longest, limit)
    else:
        max_seq_length = int(params.tokenize.max_seq_length)
        if max_seq_length > limit:
            raise UserError(f"tokenize.max_seq_length {max_seq_length} exceeds the model's limit {limit}")
    longest_question = int(max(encoded[s].questions.lengths.max() for s in SPLITS))
    room = max_seq_length - longest_question - encoded["train"].template.n_special
    if room < 8 or (longest > max_seq_length and room <= stride):  # with auto, windowing may not be needed
        raise UserError(
            f"tokenize: max_seq_length {max_seq_length} leaves {room} context tokens next to the longest "
            f"question ({longest_question} tokens), with stride {stride}; lower tokenize.stride or raise "
            "tokenize.max_seq_length"
        )

    report: dict[str, Any] = {
        "max_seq_length": max_seq_length,
        "max_seq_length_param": params.tokenize.max_seq_length,
        "longest_pair_tokens": longest,
        "model_limit": limit,
        "stride": stride,
        "tokenizer": params.model.tokenizer_source or "trained on train split",
        "vocab_size": len(tokenizer),
    }
    for split in SPLITS:
        c = columns[split]
        layout = encoded[split].layout(max_seq_length, stride)
        # train stores no offsets: its labels come from the contexts' offsets, not the windows'
        windows = encoded[split].assemble(layout, with_offsets=split == "validation")
        clock.lap("assemble_windows")
        starts = c["answer_start"].astype(np.int64)
        ends = starts + pc.utf8_length(tables[split].column("answer")).to_numpy(zero_copy_only=False)
        answerable = ~c["is_impossible"].astype(bool)
        starts = np.where(answerable, starts, -1)
        labels = encoded[split].labels(layout, starts, ends, cls_index=0)
        clock.lap("labels")
        extra = None
        if split == "validation":
            wte = windows.window_to_example
            extra = {
                # row of data/filtered/validation the window belongs to
                "example_index": pa.array(val_rows[wte].astype(np.int32)),
                "example_id": pa.array([c["id"][i] for i in wte.tolist()], type=pa.string()),
                "offset_start": _list_array(windows.char_start, windows.row_splits),
                "offset_end": _list_array(windows.char_end, windows.row_splits),
            }
        table = features_table(windows, labels, extra)
        with atomic_dir(Path(out_dir) / split) as tmp:
            datasets.Dataset(table).save_to_disk(str(tmp))
        clock.lap("write")
        report[split] = split_stats(windows, labels, c["context"], c["answer"], starts, answerable)
        clock.lap("stats")
        log.info("tokenize [%s]: %s", split, report[split])
    with atomic_dir(Path(out_dir) / "tokenizer") as tmp:
        tokenizer.save_pretrained(str(tmp))
    clock.lap("write")
    report["seconds"] = clock.totals
    atomic_write_json(report_path, report)
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


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return tokenize_splits(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage import stage_main

    return stage_main("tokenize", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
