"""Stage `evaluate`: the trained model on the validation windows -> scored predictions.

inputs:  models/final, data/tokenized/validation, data/filtered/validation; params evaluate,
         train.eval_batch_size, train.precision, data.keep_unanswerable
outputs: metrics/eval.json (official SQuAD v2 EM/F1 and Urdu-normalized EM/F1, 0-100; `tuning`: what
         was tuned on which questions; `inference`: the settings applied, for uqa predict and register),
         reports/predictions.parquet (one row per question id), reports/errors.md

A question id is scored once, against all of its reference answers (UQA validation repeats ids,
one row per reference). In SQuAD2 mode the no-answer threshold (`evaluate.no_answer_threshold: best`)
is tuned for F1 on the tune part of the question ids (`evaluate.tune_fraction`; 0 = all of them) and
the metrics are reported on the other part (0: on the same questions, which the record says).
models/final is train's output: nothing here writes into it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from uqa import layout
from uqa.atomic import atomic_file, atomic_write_json, atomic_write_text
from uqa.errors import UserError
from uqa.params import Params

log = logging.getLogger(__name__)

MODEL_DIR = layout.MODEL_DIR
FEATURES = layout.TOKENIZED_DIR / "validation"
EXAMPLES = layout.FILTERED_DIR / "validation"
TOKENIZE_REPORT = layout.report("tokenize")
METRICS_FILE = layout.METRICS_FILE
PREDICTIONS = layout.PREDICTIONS
ERRORS = layout.ERRORS
SPLIT_SALT = "uqa-tune:"  # the tune/report split ranks question ids by sha256(SPLIT_SALT + id)


def references_by_id(examples: pd.DataFrame) -> dict[str, list[str]]:
    """All reference answers of each id ([] for an unanswerable question), duplicates kept once."""
    refs: dict[str, list[str]] = {}
    for qid, answer, impossible in zip(examples["id"], examples["answer"], examples["is_impossible"], strict=True):
        bucket = refs.setdefault(qid, [])
        if not impossible and answer and answer not in bucket:
            bucket.append(answer)
    return refs


def split_for_tuning(ids: list[str], tune_fraction: float) -> tuple[list[str], list[str]]:
    """(tune ids, report ids), each in the order of `ids` (one entry per question id).

    tune_fraction 0: both are all ids. Otherwise the ids ranked by sha256(SPLIT_SALT + id) - the same
    split on every run and machine, whatever the row order - and the first round(fraction x n) of
    them (at least one, and at least one left to report on) are the tune part."""
    unique = list(dict.fromkeys(ids))
    if tune_fraction <= 0:
        return unique, unique
    if len(unique) < 2:
        raise UserError(f"evaluate.tune_fraction {tune_fraction} needs at least 2 validation questions "
                        f"to tune on some and report on others; there are {len(unique)}")
    n_tune = min(max(round(tune_fraction * len(unique)), 1), len(unique) - 1)
    ranked = sorted(unique, key=lambda q: hashlib.sha256(f"{SPLIT_SALT}{q}".encode()).hexdigest())
    tune = set(ranked[:n_tune])
    return [q for q in unique if q in tune], [q for q in unique if q not in tune]


def _tuning_record(squad2: bool, threshold: float | str, tune_fraction: float, n_all: int, n_tune: int,
                   n_report: int, chosen: float | None, selected_by: str) -> dict[str, Any]:
    same = not squad2 or tune_fraction <= 0
    if not squad2:
        source = "none: answerable-only mode, every question is answered (evaluate.tune_fraction does not apply)"
    elif threshold != "best":
        source = "fixed: evaluate.no_answer_threshold (not tuned)"
    elif same:
        source = ("tuned for F1 on the same questions it is reported on: f1 equals best_f1 and is optimistic "
                  "(evaluate.tune_fraction > 0 reports on questions the threshold never saw)")
    else:
        source = f"tuned for F1 on the tune part ({n_tune} questions); reported on the other {n_report}"
    checkpoint = f"validation ({selected_by}), " + (
        "the same questions" if same else f"all {n_all} questions: the reported part included")
    return {
        "tune_fraction": tune_fraction if squad2 else 0.0,
        "tuned_on_questions": n_tune,
        "reported_on_questions": n_report,
        "threshold": chosen,
        "threshold_source": source,
        "best_scores_on": ("no threshold" if not squad2 else
                           "the same questions" if same else f"the tune part ({n_tune} questions)"),
        "checkpoint_selected_on": checkpoint,
    }


def score_predictions(frame: pd.DataFrame, references: dict[str, list[str]],
                      margins: dict[str, float] | None, threshold: float | str, tune_fraction: float = 0.0,
                      selected_by: str = "eval_loss") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-question EM/F1 (official and Urdu) and the aggregate metrics.

    `frame` has one row per id with `span_text` (the best span). In SQuAD2 mode (`margins` given)
    the prediction is "" when null - best_span > threshold; threshold 'best' is tuned for F1 on the
    tune part (`split_for_tuning`), and best_exact/best_f1 (and their thresholds) are the best
    scores any threshold reaches there - applying best_f1_thresh gives best_f1 exactly. The returned
    frame has every question (column `part`: tune, report or both); the metrics are on the report part."""
    from uqa.metrics import best_margin_threshold, normalize_official, question_scores, squad_v2_evaluate

    ids = frame["id"].tolist()
    spans = dict(zip(ids, frame["span_text"], strict=True))
    metrics: dict[str, Any] = {}
    chosen = None
    squad2 = margins is not None
    if squad2:
        tune_ids, report_ids = split_for_tuning(ids, tune_fraction)
        answer = {q: question_scores(spans[q], references[q]) for q in tune_ids}
        null = {q: question_scores("", references[q]) for q in tune_ids}
        best_em, best_em_thresh = best_margin_threshold(
            {q: s[0] for q, s in answer.items()}, {q: s[0] for q, s in null.items()}, margins)
        best_f1, best_f1_thresh = best_margin_threshold(
            {q: s[1] for q, s in answer.items()}, {q: s[1] for q, s in null.items()}, margins)
        chosen = best_f1_thresh if threshold == "best" else float(threshold)
        metrics.update(best_exact=best_em, best_exact_thresh=best_em_thresh, best_f1=best_f1,
                       best_f1_thresh=best_f1_thresh, no_answer_threshold=chosen)
        predictions = {q: ("" if margins[q] > chosen else spans[q]) for q in ids}
    else:
        tune_ids, report_ids = [], list(dict.fromkeys(ids))
        predictions = spans
    report_refs = {q: references[q] for q in report_ids}
    report_preds = {q: predictions[q] for q in report_ids}
    official = squad_v2_evaluate(report_preds, report_refs, normalize=normalize_official)
    urdu = squad_v2_evaluate(report_preds, report_refs, normalize="urdu")
    metrics = {
        "exact_match": official["exact"],
        "f1": official["f1"],
        "urdu_exact_match": urdu["exact"],
        "urdu_f1": urdu["f1"],
        "n_questions": official["total"],
        **{k: v for k, v in official.items() if k.startswith(("HasAns", "NoAns"))},
        **{f"urdu_{k}": v for k, v in urdu.items() if k.startswith(("HasAns", "NoAns")) and not k.endswith("total")},
        **metrics,
        "tuning": _tuning_record(squad2, threshold, tune_fraction, len(ids), len(tune_ids), len(report_ids),
                                 chosen, selected_by),
    }
    frame = frame.copy()
    tune_set, report_set = set(tune_ids), set(report_ids)
    frame["part"] = ["both" if q in tune_set and q in report_set else "tune" if q in tune_set else "report"
                     for q in ids]
    frame["prediction"] = [predictions[q] for q in ids]
    frame["no_answer"] = [predictions[q] == "" for q in ids]
    frame["references"] = [references[q] for q in ids]
    per = [question_scores(predictions[q], references[q]) for q in ids]
    per_urdu = [question_scores(predictions[q], references[q], "urdu") for q in ids]
    frame["exact_match"] = [100.0 * em for em, _ in per]
    frame["f1"] = [100.0 * f for _, f in per]
    frame["urdu_exact_match"] = [100.0 * em for em, _ in per_urdu]
    frame["urdu_f1"] = [100.0 * f for _, f in per_urdu]
    return frame, metrics


def inference_record(params: Params, model_dir: Path, threshold: float | None,
                     features_dir: Path = FEATURES) -> dict[str, Any]:
    """What evaluate applied, for `uqa predict` (models/final in a project) and the register stage."""
    from uqa.predict import INFERENCE_FILE, read_json_file, weights_sha256, window_settings

    own = read_json_file(Path(model_dir) / INFERENCE_FILE)
    if own is None or not all(isinstance(own.get(k), int) for k in ("max_seq_length", "stride")):
        log.warning("evaluate: %s has no %s with the windowing (a model not saved by the train stage): "
                    "taking it from %s", model_dir, INFERENCE_FILE, TOKENIZE_REPORT)
        own = window_settings(params, Path(features_dir).parent, TOKENIZE_REPORT)
    return {
        "max_seq_length": own["max_seq_length"],
        "stride": own["stride"],
        "n_best": params.evaluate.n_best,
        "max_answer_length": params.evaluate.max_answer_length,
        "no_answer_threshold": threshold,
        "weights_sha256": weights_sha256(model_dir),
    }


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
                           params.train.precision, device, progress="evaluate")
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
    scored = set(frame["id"])
    unscored = [q for q in references if q not in scored]
    if unscored:  # every question must be scored: a silently smaller validation set is no honest number
        shown = ", ".join(repr(q) for q in unscored[:5])
        raise UserError(f"{features_dir} has no windows for {len(unscored)} of the {len(references)} question ids "
                        f"in {examples_dir} (e.g. {shown}): the features are from other data; rerun the tokenize "
                        "stage (dvc repro tokenize)")
    squad2 = params.data.keep_unanswerable
    margins = dict(zip(frame["id"], frame["no_answer_margin"], strict=True)) if squad2 else None
    from uqa.predict import INFERENCE_FILE, read_json_file

    selected_by = (read_json_file(Path(model_dir) / INFERENCE_FILE) or {}).get(
        "checkpoint_selected_by", params.train.metric_for_best_model)
    frame, metrics = score_predictions(frame, references, margins, params.evaluate.no_answer_threshold,
                                       params.evaluate.tune_fraction, selected_by)
    frame = add_buckets(frame)
    from uqa.gate import eval_set_fingerprint

    metrics.update(
        mode="squad2" if squad2 else "answerable-only",
        eval_set=eval_set_fingerprint(examples),  # which questions: the promotion gate compares like with like
        n_features=int(windows.n_windows),
        inference_seconds=round(inference_s, 3),
        device=str(device),
        torch_threads=torch.get_num_threads(),
        inference=inference_record(params, Path(model_dir), metrics.get("no_answer_threshold"), features_dir),
    )
    with atomic_file(PREDICTIONS) as tmp:
        frame.drop(columns=["span_text"]).to_parquet(tmp, index=False)
    # the error analysis is on the questions the metrics are reported on
    atomic_write_text(ERRORS, errors_markdown(frame[frame["part"] != "tune"], metrics))
    atomic_write_json(METRICS_FILE, metrics)
    log.info(
        "evaluate: %d questions, EM %.2f F1 %.2f (Urdu-normalized EM %.2f F1 %.2f)%s",
        metrics["n_questions"], metrics["exact_match"], metrics["f1"], metrics["urdu_exact_match"], metrics["urdu_f1"],
        f"; no-answer threshold {metrics['no_answer_threshold']:.4g}: {metrics['tuning']['threshold_source']}"
        if squad2 else "",
    )
    return metrics


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return evaluate(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
