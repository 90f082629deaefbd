"""Window logits -> one answer per question -> the evaluation's metrics.

The evaluate stage and the trainer's evaluation at every epoch both score through `score_logits`: the
same span search (uqa.model.postprocess, via spans_for_windows), the same references, the same
no-answer threshold and tune/report split (uqa.evaluation.scoring). So the F1 that picks the best
checkpoint is the F1 evaluate reports for it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from uqa.errors import UserError
from uqa.evaluation.scoring import references_by_id, score_predictions
from uqa.layout import VALIDATION_EXAMPLES, VALIDATION_FEATURES


def answer_frame(logits, windows, examples: pd.DataFrame, n_best: int, max_answer_length: int) -> pd.DataFrame:
    """One row per question of `windows` (its best span, score, probability and no-answer margin)."""
    from uqa.model.inference import spans_for_windows
    from uqa.model.postprocess import no_answer_margin

    spans = spans_for_windows(logits, windows, n_best, max_answer_length)
    rows = examples.iloc[spans.example]
    return pd.DataFrame({
        "id": rows["id"].to_numpy(),
        "question": rows["question"].to_numpy(),
        "example_row": spans.example,
        "span_text": spans.texts(examples["context"].tolist()),  # also trims whitespace off the offsets
        "answer_start_char": spans.char_start,
        "answer_end_char": spans.char_end,
        "score": spans.score,
        "probability": spans.probability,
        "no_answer_margin": no_answer_margin(spans),
        "context_length": rows["context"].str.len().to_numpy(),
    })


def check_every_question_scored(frame: pd.DataFrame, references: dict[str, list[str]],
                                sources: tuple[Any, Any]) -> None:
    """A silently smaller validation set is no honest number: every question id needs windows."""
    scored = set(frame["id"])
    unscored = [q for q in references if q not in scored]
    if unscored:
        features_dir, examples_dir = sources
        shown = ", ".join(repr(q) for q in unscored[:5])
        raise UserError(f"{features_dir} has no windows for {len(unscored)} of the {len(references)} question ids "
                        f"in {examples_dir} (e.g. {shown}): the features are from other data; rerun the tokenize "
                        "stage (dvc repro tokenize)")


def score_logits(logits, windows, examples: pd.DataFrame, evaluate, squad2: bool, selected_by: str | None = None,
                 sources: tuple[Any, Any] = (VALIDATION_FEATURES, VALIDATION_EXAMPLES),
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(the scored answer frame, the metrics) of these logits. `evaluate`: params.evaluate (n_best,
    max_answer_length, no_answer_threshold, tune_fraction); `sources`: where the windows and the
    examples were read (named when a question has no window)."""
    frame = answer_frame(logits, windows, examples, evaluate.n_best, evaluate.max_answer_length)
    references = references_by_id(examples)
    check_every_question_scored(frame, references, sources)
    margins = dict(zip(frame["id"], frame["no_answer_margin"], strict=True)) if squad2 else None
    kwargs = {"selected_by": selected_by} if selected_by else {}
    frame, metrics = score_predictions(frame, references, margins, evaluate.no_answer_threshold,
                                       evaluate.tune_fraction, **kwargs)
    return frame, metrics


def trainer_logits(predictions, windows):
    """The Trainer's evaluation predictions (start, end) as the WindowLogits of `windows`, exactly as
    window_logits gives them: cut to the windows' width and -inf past each window's end (the Trainer
    pads each batch with pad tokens, whose logits are real numbers, and pads across batches with -100)."""
    from uqa.model.inference import WindowLogits

    start, end = np.asarray(predictions[0]), np.asarray(predictions[1])
    if start.shape[0] != windows.n_windows or end.shape[0] != windows.n_windows:
        raise ValueError(f"the trainer returned logits for {start.shape[0]} windows, the validation features "
                         f"hold {windows.n_windows}: the evaluation order or set is not the features'")
    width = int(windows.lengths.max()) if windows.n_windows else 0
    past_end = np.arange(width)[None, :] >= np.asarray(windows.lengths)[:, None]
    out = []
    for logits in (start, end):
        cut = np.array(logits[:, :width], dtype=np.float32)  # a copy: the Trainer's arrays stay as they were
        cut[past_end] = -np.inf
        out.append(cut)
    return WindowLogits(*out)


def epoch_metrics(windows, examples: pd.DataFrame, evaluate, squad2: bool,
                  sources: tuple[Any, Any] = (VALIDATION_FEATURES, VALIDATION_EXAMPLES)):
    """The Trainer's `compute_metrics`: exact and F1 (0-100) of each evaluation, through score_logits,
    so the Trainer logs them as eval_exact and eval_f1 (dvclive: eval/exact, eval/f1) and
    `metric_for_best_model: f1` keeps the checkpoint the evaluate stage would score best."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        _, metrics = score_logits(trainer_logits(eval_prediction.predictions, windows), windows, examples,
                                  evaluate, squad2, sources=sources)
        return {"exact": float(metrics["exact_match"]), "f1": float(metrics["f1"])}

    return compute_metrics
