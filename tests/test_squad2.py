"""SQuAD2 mode (data.keep_unanswerable: true): CLS labels, null scores, a tuned no-answer threshold."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_SOURCE, demo_tiny_params

from tasks.download import download
from tasks.evaluate import evaluate, score_predictions
from tasks.filter import filter_rows
from tasks.tokenize import tokenize_splits
from tasks.train_worker import make_trainer
from uqa.params import deep_merge, params_from_dict
from uqa.predict import Predictor
from uqa.stages import working_dir

DEMO = DEMO_SOURCE


def test_threshold_is_tuned_for_f1_and_applied():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "span_text": ["لاہور", "کراچی", "1947", "پشاور"]})
    refs = {"a": ["لاہور"], "b": [], "c": ["1948"], "d": []}
    # margin = null score - best span score: high = more likely no answer
    margins = {"a": -4.0, "b": 2.0, "c": 1.0, "d": 3.0}
    _, m = score_predictions(frame, refs, margins, "best")
    # official search, by margin: a (+1: 3 of 4 right) is the first best; c adds 0, b and d cost 1 each.
    # threshold -4: "" for c, b, d; a answered (right), c wrong, b and d right -> 3/4
    assert m["best_f1_thresh"] == -4.0 and m["best_f1"] == 75.0
    assert m["no_answer_threshold"] == -4.0
    assert (m["exact_match"], m["f1"]) == (75.0, 75.0)
    assert (m["HasAns_exact"], m["NoAns_exact"]) == (50.0, 100.0)
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 2
    _, fixed = score_predictions(frame, refs, margins, 10.0)  # a fixed threshold: always answer
    assert (fixed["exact_match"], fixed["NoAns_exact"]) == (25.0, 0.0)


@pytest.mark.slow
def test_squad2_mode_end_to_end(tmp_path):
    p = params_from_dict(deep_merge(demo_tiny_params(epochs=2, logging_steps=50),
                                    {"data": {"keep_unanswerable": True}}))
    with working_dir(tmp_path):
        download(p.data)
        report = filter_rows(p.data)
        assert report["train"]["unanswerable_kept"] > 400 and "unanswerable" not in report["train"]["dropped"]
        tokenize_splits(p)
        train = datasets.load_from_disk("data/tokenized/train")
        filtered = datasets.load_from_disk("data/filtered/train").to_pandas()
        impossible = set(np.flatnonzero(filtered["is_impossible"].to_numpy()))
        # every window of an unanswerable question is labelled at CLS (0)
        assert len(impossible) > 0
        assert sum(s == 0 for s in train["start_positions"]) >= len(impossible)
        trainer, info = make_trainer(p, tmp_path / "ck", save_strategy="no", eval_strategy="no",
                                     load_best_model_at_end=False)
        trainer.train()
        trainer.save_model("models/final")
        info["tokenizer"].save_pretrained("models/final")
        metrics = evaluate(p)
    assert metrics["mode"] == "squad2"
    for key in ("best_f1_thresh", "best_f1", "HasAns_f1", "NoAns_f1", "HasAns_total", "NoAns_total",
                "urdu_f1", "exact_match"):
        assert key in metrics
    assert metrics["NoAns_total"] > 0 and metrics["HasAns_total"] > 0
    assert metrics["f1"] == pytest.approx(metrics["best_f1"])  # threshold 'best' is applied
    predictions = pd.read_parquet(tmp_path / "reports" / "predictions.parquet")
    assert (predictions["references"].map(len) == 0).sum() == metrics["NoAns_total"]
    assert "unanswerable" in (tmp_path / "reports" / "errors.md").read_text()
    # predict says "no answer" when the margin is above the threshold
    row = predictions.iloc[0]
    context = pd.read_json(DEMO["validation"], lines=True).set_index("id").loc[row.id, "context"]
    always = Predictor(tmp_path / "models" / "final", no_answer_threshold=-1e9)([row.question], [context])[0]
    never = Predictor(tmp_path / "models" / "final", no_answer_threshold=1e9)([row.question], [context])[0]
    assert always.no_answer and always.answer == "" and always.start == -1
    assert not never.no_answer and context[never.start:never.end] == never.answer
