"""EM/F1 at every epoch (uqa/evaluation/answers.py) without training: the Trainer's gathered logits, as
it really pads them, score exactly as the evaluate stage scores window_logits' logits; progress lines and
the Prefect artifact show them; F1 as the best-checkpoint metric needs the scorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_SOURCE
from transformers import EvalPrediction

from uqa.evaluation.answers import epoch_metrics, score_logits, trainer_logits
from uqa.model.inference import WindowLogits
from uqa.model.postprocess import pad_ragged
from uqa.params.schema import EvaluateParams


@pytest.fixture(scope="module")
def demo_windows():
    from uqa.text.encoding import encode_windows
    from uqa.text.tokenizer import train_tokenizer

    rows = pd.read_json(DEMO_SOURCE["validation"], lines=True, dtype=False).head(60)
    rows = pd.concat([rows, rows.head(5).assign(answer="x")], ignore_index=True)  # repeated ids: several references
    tok = train_tokenizer(list(rows["question"]) + list(rows["context"]), vocab_size=400)
    contexts = [c * (1 + i % 3) for i, c in enumerate(rows["context"])]  # several windows for some
    windows = encode_windows(tok.backend_tokenizer, rows["question"].str.strip().tolist(), contexts, 64, 16)
    return rows.assign(context=contexts), windows


def _window_logits(windows, seed: int = 0) -> WindowLogits:
    """What window_logits returns: a number on each window's tokens, -inf past its end."""
    real = pad_ragged(np.ones(len(windows.input_ids), bool), windows.row_splits, False, bool)
    rng = np.random.default_rng(seed)
    return WindowLogits(np.where(real, rng.normal(size=real.shape), -np.inf).astype(np.float32),
                        np.where(real, rng.normal(size=real.shape), -np.inf).astype(np.float32))


def _as_the_trainer_gathers(logits: WindowLogits, windows, batch: int = 8, pad_to: int = 8):
    """The Trainer's predictions for the same logits: each batch padded to its longest window (rounded to
    `pad_to`) with the pad tokens' own logits (real numbers), batches concatenated padded with -100."""
    rng = np.random.default_rng(1)
    width = logits.start.shape[1]
    full = ((width + pad_to - 1) // pad_to) * pad_to + pad_to  # wider than any batch: -100 beyond
    out = []
    for values in (logits.start, logits.end):
        gathered = np.full((values.shape[0], full), -100.0, dtype=np.float32)
        for b in range(0, values.shape[0], batch):
            rows = slice(b, b + batch)
            longest = int(windows.lengths[rows].max())
            batch_width = ((longest + pad_to - 1) // pad_to) * pad_to
            block = rng.normal(size=(values[rows].shape[0], batch_width)).astype(np.float32) * 10  # pad logits
            real = np.isfinite(values[rows, :batch_width])
            block[real] = values[rows, :batch_width][real]
            gathered[rows, :batch_width] = block
        out.append(gathered)
    return tuple(out)


@pytest.mark.parametrize("squad2", [False, True])
def test_the_trainers_logits_score_as_evaluate_scores(demo_windows, squad2):
    rows, windows = demo_windows
    evaluate = EvaluateParams(tune_fraction=0.5 if squad2 else 0.0)
    examples = rows.assign(is_impossible=[i % 4 == 0 for i in range(len(rows))]) if squad2 else rows
    logits = _window_logits(windows)
    predictions = _as_the_trainer_gathers(logits, windows)
    cut = trainer_logits(predictions, windows)
    np.testing.assert_array_equal(cut.start, logits.start)  # -inf past each end, exactly as window_logits
    np.testing.assert_array_equal(cut.end, logits.end)
    _, metrics = score_logits(logits, windows, examples, evaluate, squad2)
    got = epoch_metrics(windows, examples, evaluate, squad2)(EvalPrediction(predictions=predictions, label_ids=None))
    assert got == {"exact": metrics["exact_match"], "f1": metrics["f1"]}
    assert 0 <= got["f1"] <= 100 and metrics["n_questions"] == metrics["tuning"]["reported_on_questions"] > 0


def test_logits_of_another_set_are_refused(demo_windows):
    rows, windows = demo_windows
    start, end = _as_the_trainer_gathers(_window_logits(windows), windows)
    with pytest.raises(ValueError, match=f"logits for {windows.n_windows - 1} windows"):
        trainer_logits((start[1:], end[1:]), windows)


def test_a_question_without_windows_is_an_error_not_a_smaller_set(demo_windows):
    from uqa.errors import UserError

    rows, windows = demo_windows
    extra = rows.head(1).assign(id="no-windows")
    with pytest.raises(UserError, match="has no windows for 1 of the"):
        score_logits(_window_logits(windows), windows, pd.concat([rows, extra], ignore_index=True),
                     EvaluateParams(), False, sources=("features", "examples"))


def test_progress_shows_each_evaluation_and_the_best():
    from uqa.model.progress import describe_progress, eval_record

    record = {"step": 120, "total": 180, "epoch": 2.0, "loss": 1.9, "first_step": 0, "elapsed_s": 4.0,
              "evals": [eval_record(1.0, {"eval_f1": 26.41, "eval_exact": 20.43}),
                        eval_record(2.0, {"eval_f1": 33.94, "eval_exact": 27.83})]}
    text = describe_progress(record)
    assert text.startswith("step 120/180 (epoch 2), ETA 0m02s, loss 1.9")
    assert text.endswith("; validation F1 33.94, EM 27.83 (epoch 2)")
    record["evals"].append(eval_record(3.0, {"eval_f1": 30.0}))
    assert describe_progress(record).endswith("validation F1 30.00 (epoch 3), best F1 33.94 (epoch 2)")
    assert "validation" not in describe_progress({"step": 1, "total": 2, "evals": "junk"})


def test_the_epochs_artifact_marks_the_kept_checkpoint():
    from flows.artifacts import epochs_markdown

    report = {"metric_for_best_model": "f1", "best_metric": 33.9351, "best_checkpoint": "models/checkpoints/checkpoint-120",
              "eval_history": [{"epoch": 1.0, "step": 60, "eval_loss": 2.06, "eval_exact": 20.43, "eval_f1": 26.41},
                               {"epoch": 2.0, "step": 120, "eval_loss": 1.66, "eval_exact": 27.83, "eval_f1": 33.94},
                               {"epoch": 3.0, "step": 180, "eval_loss": 1.60}]}
    text = epochs_markdown(report)
    assert "best by **f1** (33.94)" in text
    assert "| 2 | 120 | 27.83 | 33.94 | 1.6600 | ✓ |" in text
    assert "| 1 | 60 | 20.43 | 26.41 | 2.0600 |  |" in text and "| 3 | 180 |  |  | 1.6000 |  |" in text
    assert "no evaluation ran" in epochs_markdown({"metric_for_best_model": "f1"})


def test_f1_as_the_best_checkpoint_metric_needs_the_scorer(tmp_path):
    from conftest import DEMO_TINY_CONFIG
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from uqa.model.trainer import build_trainer
    from uqa.params.validation import params_from_dict
    from uqa.text.tokenizer import train_tokenizer

    tok = train_tokenizer(["ab cd", "ef gh"], vocab_size=60)
    cfg = dict(DEMO_TINY_CONFIG, vocab_size=len(tok))
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    params = params_from_dict({})
    with pytest.raises(ValueError, match="metric_for_best_model 'f1' is scored by compute_metrics"):
        build_trainer(params, model, tok, [], [], tmp_path)
    trainer, _ = build_trainer(params_from_dict({"train": {"metric_for_best_model": "loss"}}), model, tok, [], [],
                               tmp_path, eval_ds=[{"input_ids": [0, 1]}])
    assert trainer.args.metric_for_best_model == "loss" and trainer.args.greater_is_better is False
