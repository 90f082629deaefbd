"""The ceiling a tokenizer puts on EM/F1: one-hot logits at the gold token labels -> postprocess -> score.

Runs the pipeline's own filter, windows, labels, span search and scoring on real UQA validation, as
the evaluate stage does (one example per question id, scored against all of the id's answers), with
a perfect "model". What is lost is lost to tokenization: subword tokens glue punctuation to words.

    python benchmarks/oracle_ceiling.py [--shared ../shared] [--tokenizer PATH]   -> benchmarks/results/oracle_ceiling.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import write_result  # noqa: E402

from tasks.filter import check_row  # noqa: E402
from tasks.tokenize import first_row_per_id  # noqa: E402
from uqa.evaluation.scoring import references_by_id, score_predictions  # noqa: E402
from uqa.model.inference import WindowLogits, spans_for_windows  # noqa: E402
from uqa.model.postprocess import pad_ragged  # noqa: E402
from uqa.text.encoding import encode_labelled_windows  # noqa: E402
from uqa.text.tokenizer import load_tokenizer  # noqa: E402


def oracle(rows: pd.DataFrame, tokenizer_path: str, max_seq_length: int = 512, stride: int = 128) -> dict:
    kept = [r for r in (check_row(row, keep_unanswerable=False) for row in rows.to_dict("records")) if r[0] is None]
    examples = pd.DataFrame([r for _, r in kept]).reset_index(drop=True)
    first = first_row_per_id(examples["id"].tolist())
    ex = examples.iloc[first].reset_index(drop=True)
    tok = load_tokenizer(tokenizer_path)
    starts = ex["answer_start"].to_numpy()
    windows, labels = encode_labelled_windows(tok.backend_tokenizer, ex["question"].tolist(), ex["context"].tolist(),
                                              starts, starts + ex["answer"].str.len().to_numpy(), max_seq_length,
                                              stride)
    real = pad_ragged(np.ones(len(windows.input_ids), bool), windows.row_splits, False, bool)
    start = np.where(real, 0.0, -np.inf).astype(np.float32)
    end = start.copy()
    hit = np.flatnonzero(labels.has_answer)
    start[hit, labels.start_positions[hit]] = 10.0
    end[hit, labels.end_positions[hit]] = 10.0
    spans = spans_for_windows(WindowLogits(start, end), windows, n_best=20, max_answer_length=10_000)
    texts = spans.texts(ex["context"].tolist())
    frame = pd.DataFrame({"id": ex["id"].to_numpy()[spans.example], "span_text": texts})
    _, metrics = score_predictions(frame, references_by_id(examples), None, "best")
    token_exact = float(np.mean([t == ex["answer"][i] for t, i in zip(texts, spans.example, strict=True)]))
    return {
        "questions": int(len(ex)),
        "answers_exactly_a_token_span": round(100 * token_exact, 2),
        **{k: round(metrics[k], 2) for k in ("exact_match", "f1", "urdu_exact_match", "urdu_f1")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()
    shared = Path(args.shared)
    rows = pd.read_parquet(shared / "data" / "uqa" / "validation.parquet")
    result = oracle(rows, args.tokenizer or str(shared / "models" / "urdu-xlmr-32k"))
    print("| questions | answer = a token span (%) | EM | F1 | Urdu EM | Urdu F1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['questions']} | {result['answers_exactly_a_token_span']} | {result['exact_match']} | "
          f"{result['f1']} | {result['urdu_exact_match']} | {result['urdu_f1']} |")
    write_result("oracle_ceiling", result)


if __name__ == "__main__":
    main()
