"""Scoring predicted spans: each question id once, against all of its reference answers, with the
no-answer threshold tuned on one part of the ids and the metrics reported on the other (the evaluate
stage's arithmetic; benchmarks/oracle_ceiling.py uses it too)."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from uqa.errors import UserError

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
    if same:
        checkpoint = f"validation ({selected_by}), the same questions"
    elif selected_by.endswith("loss"):
        checkpoint = f"validation ({selected_by}), all {n_all} questions: the reported part included"
    else:  # each epoch scored as here: the threshold tuned on the tune part, the score on the reported part
        checkpoint = (f"validation ({selected_by}), the reported part ({n_report} questions; each epoch's threshold "
                      "tuned on the tune part): the epoch kept is the one whose reported score is best")
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
                      selected_by: str = "f1") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-question EM/F1 (official and Urdu) and the aggregate metrics.

    `frame` has one row per id with `span_text` (the best span). In SQuAD2 mode (`margins` given)
    the prediction is "" when null - best_span > threshold; threshold 'best' is tuned for F1 on the
    tune part (`split_for_tuning`), and best_exact/best_f1 (and their thresholds) are the best
    scores any threshold reaches there - applying best_f1_thresh gives best_f1 exactly. The returned
    frame has every question (column `part`: tune, report or both); the metrics are on the report part."""
    from uqa.evaluation.squad import (
        best_margin_threshold,
        normalize_official,
        question_scores,
        squad_v2_evaluate,
    )

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
