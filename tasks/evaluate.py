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

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from uqa import layout
from uqa.errors import UserError
from uqa.evaluation.answers import score_logits
from uqa.model.settings import INFERENCE_FILE, inference_record
from uqa.ops.atomic import atomic_file, atomic_write_json, atomic_write_text
from uqa.ops.jsonfile import read_json
from uqa.params.schema import PARAMS_FILE, Params

log = logging.getLogger(__name__)

MODEL_DIR = layout.MODEL_DIR
FEATURES = layout.VALIDATION_FEATURES
EXAMPLES = layout.VALIDATION_EXAMPLES
METRICS_FILE = layout.METRICS_FILE
PREDICTIONS = layout.PREDICTIONS
ERRORS = layout.ERRORS


def predict_logits(params: Params, model_dir: Path, features_dir: Path):
    """The model's logits on every validation window: (the logits, the windows, the device, seconds)."""
    import datasets
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from uqa.model.inference import pick_device, window_logits
    from uqa.text.windows import windows_from_table

    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir)).to(device)
    windows = windows_from_table(datasets.load_from_disk(str(features_dir)).data.table)
    started = time.time()
    logits = window_logits(model, windows, tokenizer.pad_token_id, params.train.eval_batch_size,
                           params.train.precision, device, progress="evaluate")
    return logits, windows, device, time.time() - started


def write_outputs(frame: pd.DataFrame, metrics: dict[str, Any]) -> None:
    """reports/predictions.parquet, reports/errors.md (on the reported questions), metrics/eval.json."""
    from uqa.evaluation.analysis import errors_markdown

    with atomic_file(PREDICTIONS) as tmp:
        frame.drop(columns=["span_text"]).to_parquet(tmp, index=False)
    atomic_write_text(ERRORS, errors_markdown(frame[frame["part"] != "tune"], metrics))
    atomic_write_json(METRICS_FILE, metrics)


def evaluate(params: Params, model_dir: Path = MODEL_DIR, features_dir: Path = FEATURES,
             examples_dir: Path = EXAMPLES) -> dict[str, Any]:
    import datasets
    import torch

    from uqa.evaluation.analysis import add_buckets
    from uqa.registry.gate import eval_set_fingerprint

    if not Path(model_dir).exists():
        raise UserError(f"{model_dir} is missing: run the train stage first (dvc repro train)")
    examples = datasets.load_from_disk(str(examples_dir)).to_pandas()
    logits, windows, device, inference_s = predict_logits(params, Path(model_dir), Path(features_dir))
    squad2 = params.data.keep_unanswerable
    selected_by = read_json(Path(model_dir) / INFERENCE_FILE).get(
        "checkpoint_selected_by", params.train.metric_for_best_model)
    # the same scoring the trainer ran at every epoch (uqa/evaluation/answers.py)
    frame, metrics = score_logits(logits, windows, examples, params.evaluate, squad2, selected_by,
                                  sources=(features_dir, examples_dir))
    metrics.update(
        mode="squad2" if squad2 else "answerable-only",
        eval_set=eval_set_fingerprint(examples),  # which questions: the promotion gate compares like with like
        n_features=int(windows.n_windows),
        inference_seconds=round(inference_s, 3),
        device=str(device),
        torch_threads=torch.get_num_threads(),
        inference=inference_record(params, Path(model_dir), metrics.get("no_answer_threshold"), features_dir),
    )
    write_outputs(add_buckets(frame), metrics)
    log.info(
        "evaluate: %d questions, EM %.2f F1 %.2f (Urdu-normalized EM %.2f F1 %.2f)%s",
        metrics["n_questions"], metrics["exact_match"], metrics["f1"], metrics["urdu_exact_match"], metrics["urdu_f1"],
        f"; no-answer threshold {metrics['no_answer_threshold']:.4g}: {metrics['tuning']['threshold_source']}"
        if squad2 else "",
    )
    return metrics


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return evaluate(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
