"""Stage `evaluate`: the trained model on the validation windows -> scored predictions.

inputs:  models/final, data/tokenized/validation, data/filtered/validation; params evaluate,
         train.eval_batch_size, train.precision, data.keep_unanswerable
outputs: metrics/eval.json (official SQuAD v2 EM/F1 and Urdu-normalized EM/F1, 0-100),
         reports/predictions.parquet (one row per question id), reports/errors.md

A question id is scored once, against all of its reference answers (UQA validation repeats ids,
one row per reference).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from uqa.atomic import atomic_file, atomic_write_json, atomic_write_text
from uqa.errors import UserError
from uqa.params import Params

log = logging.getLogger(__name__)

MODEL_DIR = Path("models/final")
FEATURES = Path("data/tokenized/validation")
EXAMPLES = Path("data/filtered/validation")
METRICS_FILE = Path("metrics/eval.json")
PREDICTIONS = Path("reports/predictions.parquet")
ERRORS = Path("reports/errors.md")
PARAMS = ["evaluate", "train.eval_batch_size", "train.precision", "data.keep_unanswerable"]
DEPS = [str(MODEL_DIR), str(FEATURES), str(EXAMPLES)]
OUTS = [str(PREDICTIONS), str(ERRORS)]
METRICS = [str(METRICS_FILE)]


def references_by_id(examples: pd.DataFrame) -> dict[str, list[str]]:
    """All reference answers of each id ([] for an unanswerable question), duplicates kept once."""
    refs: dict[str, list[str]] = {}
    for qid, answer, impossible in zip(examples["id"], examples["answer"], examples["is_impossible"], strict=True):
        bucket = refs.setdefault(qid, [])
        if not impossible and answer and answer not in bucket:
            bucket.append(answer)
    return refs


def score_predictions(frame: pd.DataFrame, references: dict[str, list[str]],
                      margins: dict[str, float] | None, threshold: float | str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-question EM/F1 (official and Urdu) and the aggregate metrics.

    `frame` has one row per id with `span_text` (the best span). In SQuAD2 mode (`margins` given)
    the prediction is "" when null - best_span > threshold; threshold 'best' is tuned for F1."""
    from uqa.metrics import find_best_thresh, normalize_official, question_scores, squad_v2_evaluate

    ids = frame["id"].tolist()
    spans = dict(zip(ids, frame["span_text"], strict=True))
    metrics: dict[str, Any] = {}
    chosen = None
    if margins is not None:
        has_ans = {q: bool(references[q]) for q in ids}
        per_q = {q: question_scores(spans[q], references[q]) for q in ids}
        raw = {q: em for q, (em, _) in per_q.items()}
        raw_f1 = {q: f1 for q, (_, f1) in per_q.items()}
        best_f1, best_f1_thresh = find_best_thresh(spans, raw_f1, margins, has_ans)
        best_em, best_em_thresh = find_best_thresh(spans, raw, margins, has_ans)
        chosen = best_f1_thresh if threshold == "best" else float(threshold)
        metrics.update(best_exact=best_em, best_exact_thresh=best_em_thresh, best_f1=best_f1,
                       best_f1_thresh=best_f1_thresh, no_answer_threshold=chosen)
        predictions = {q: ("" if margins[q] > chosen else spans[q]) for q in ids}
    else:
        predictions = spans
    official = squad_v2_evaluate(predictions, {q: references[q] for q in ids}, normalize=normalize_official)
    urdu = squad_v2_evaluate(predictions, {q: references[q] for q in ids}, normalize="urdu")
    metrics = {
        "exact_match": official["exact"],
        "f1": official["f1"],
        "urdu_exact_match": urdu["exact"],
        "urdu_f1": urdu["f1"],
        "n_questions": official["total"],
        **{k: v for k, v in official.items() if k.startswith(("HasAns", "NoAns"))},
        **{f"urdu_{k}": v for k, v in urdu.items() if k.startswith(("HasAns", "NoAns")) and not k.endswith("total")},
        **metrics,
    }
    frame = frame.copy()
    frame["prediction"] = [predictions[q] for q in ids]
    frame["references"] = [references[q] for q in ids]
    per = [question_scores(predictions[q], references[q]) for q in ids]
    per_urdu = [question_scores(predictions[q], references[q], "urdu") for q in ids]
    frame["exact_match"] = [100.0 * em for em, _ in per]
    frame["f1"] = [100.0 * f for _, f in per]
    frame["urdu_exact_match"] = [100.0 * em for em, _ in per_urdu]
    frame["urdu_f1"] = [100.0 * f for _, f in per_urdu]
    return frame, metrics


def evaluate(params: Params, model_dir: Path = MODEL_DIR, features_dir: Path = FEATURES,
             examples_dir: Path = EXAMPLES) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from uqa.analysis import add_buckets, errors_markdown
    from uqa.features import windows_from_table
    from uqa.inference import pick_device, spans_for_windows, window_logits
    from uqa.postprocess import no_answer_margin

    if not Path(model_dir).exists():
        raise UserError(f"{model_dir} is missing: run the train stage first (dvc repro train)")
    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir)).to(device)
    features = datasets.load_from_disk(str(features_dir)).data.table
    examples = datasets.load_from_disk(str(examples_dir)).to_pandas()
    windows = windows_from_table(features)

    started = time.time()
    logits = window_logits(model, windows, tokenizer.pad_token_id, params.train.eval_batch_size,
                           params.train.precision, device)
    inference_s = time.time() - started
    spans = spans_for_windows(logits, windows, params.evaluate.n_best, params.evaluate.max_answer_length)
    rows = examples.iloc[spans.example]
    span_text = spans.texts(examples["context"].tolist())  # also trims whitespace off the offsets
    frame = pd.DataFrame({
        "id": rows["id"].to_numpy(),
        "question": rows["question"].to_numpy(),
        "example_row": spans.example,
        "span_text": span_text,
        "answer_start_char": spans.char_start,
        "answer_end_char": spans.char_end,
        "score": spans.score,
        "probability": spans.probability,
        "no_answer_margin": no_answer_margin(spans),
        "context_length": rows["context"].str.len().to_numpy(),
    })
    references = references_by_id(examples)
    squad2 = params.data.keep_unanswerable
    margins = dict(zip(frame["id"], frame["no_answer_margin"], strict=True)) if squad2 else None
    frame, metrics = score_predictions(frame, references, margins, params.evaluate.no_answer_threshold)
    frame = add_buckets(frame)
    metrics.update(
        mode="squad2" if squad2 else "answerable-only",
        n_features=int(windows.n_windows),
        inference_seconds=round(inference_s, 3),
        device=str(device),
        torch_threads=torch.get_num_threads(),
    )
    with atomic_file(PREDICTIONS) as tmp:
        frame.drop(columns=["span_text"]).to_parquet(tmp, index=False)
    atomic_write_text(ERRORS, errors_markdown(frame, metrics))
    atomic_write_json(METRICS_FILE, metrics)
    log.info(
        "evaluate: %d questions, EM %.2f F1 %.2f (Urdu-normalized EM %.2f F1 %.2f)",
        metrics["n_questions"], metrics["exact_match"], metrics["f1"], metrics["urdu_exact_match"], metrics["urdu_f1"],
    )
    return metrics


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return evaluate(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage import stage_main

    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
