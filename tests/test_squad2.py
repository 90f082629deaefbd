"""SQuAD2 mode (data.keep_unanswerable: true): CLS labels, null scores, a tuned no-answer threshold."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_SOURCE, demo_tiny_params

from tasks.download import download
from tasks.evaluate import evaluate
from tasks.filter import filter_rows
from tasks.tokenize import tokenize_splits
from uqa.errors import UserError
from uqa.evaluation.scoring import score_predictions, split_for_tuning
from uqa.model.predict import Predictor
from uqa.model.trainer import make_trainer
from uqa.params.overrides import deep_merge
from uqa.params.validation import params_from_dict
from uqa.workspace.dvc_ops import working_dir

DEMO = DEMO_SOURCE


def test_threshold_is_tuned_for_f1_and_applied():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "span_text": ["لاہور", "کراچی", "1947", "پشاور"]})
    refs = {"a": ["لاہور"], "b": [], "c": ["1948"], "d": []}
    # margin = null score - best span score: high = more likely no answer
    margins = {"a": -4.0, "b": 2.0, "c": 1.0, "d": 3.0}
    _, m = score_predictions(frame, refs, margins, "best")
    # cuts by margin (a -4, c 1, b 2, d 3), "" above the cut: none answered 2/4 (b, d); answer a 3/4;
    # answer a, c 3/4 (c wrong either way); answer a, c, b 2/4; all 1/4. Best 3/4, first at "answer a":
    # the threshold lies between a's margin and the next one (-4 and 1: -1.5)
    assert m["best_f1"] == 75.0 and m["best_f1_thresh"] == -1.5
    assert m["no_answer_threshold"] == -1.5
    assert (m["exact_match"], m["f1"]) == (75.0, 75.0)  # applied: exactly the best
    _, at_em = score_predictions(frame, refs, margins, m["best_exact_thresh"])
    assert at_em["exact_match"] == m["best_exact"]  # and best_exact at its own threshold
    assert (m["HasAns_exact"], m["NoAns_exact"]) == (50.0, 100.0)
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 2
    assert m["tuning"]["tuned_on_questions"] == m["tuning"]["reported_on_questions"] == 4
    assert "same questions" in m["tuning"]["threshold_source"]
    _, fixed = score_predictions(frame, refs, margins, 10.0)  # a fixed threshold: always answer
    assert (fixed["exact_match"], fixed["NoAns_exact"]) == (25.0, 0.0)
    assert fixed["tuning"]["threshold_source"].startswith("fixed")


def test_issue_case_no_answer_everywhere_is_applied():
    # every margin negative and answering never pays: the best is "" everywhere, and it is what is
    # applied (the official search said 0.0, which answers everything: f1 far below best_f1)
    frame = pd.DataFrame({"id": ["a", "b", "c"], "span_text": ["x", "y", "z"]})
    refs = {"a": [], "b": [], "c": ["w"]}
    margins = {"a": -0.5, "b": -2.0, "c": -1.0}
    _, m = score_predictions(frame, refs, margins, "best")
    assert m["best_f1_thresh"] < -2.0 and m["NoAns_f1"] == 100.0
    assert m["f1"] == m["best_f1"] == pytest.approx(200 / 3)
    assert m["exact_match"] == m["best_exact"]
    assert score_predictions(frame, refs, margins, m["best_exact_thresh"])[1]["exact_match"] == m["best_exact"]


def test_tune_split_is_by_question_id_and_fixed():
    ids = [f"q{i:03d}" for i in range(200)]
    tune, report = split_for_tuning(ids, 0.5)
    assert len(tune) == len(report) == 100 and not set(tune) & set(report) and set(tune) | set(report) == set(ids)
    assert split_for_tuning(list(reversed(ids)), 0.5) == (tune[::-1], report[::-1])  # order does not matter
    assert split_for_tuning(ids + ids[:5], 0.5) == (tune, report)  # one entry per id
    assert split_for_tuning(ids, 0.0) == (ids, ids)
    assert len(split_for_tuning(ids, 0.25)[0]) == 50
    assert len(split_for_tuning(ids[:2], 0.01)[0]) == 1 and len(split_for_tuning(ids[:2], 0.99)[1]) == 1
    with pytest.raises(UserError, match="at least 2"):
        split_for_tuning(ids[:1], 0.5)


def test_threshold_tuned_on_one_part_is_reported_on_the_other():
    rng = np.random.default_rng(0)
    n = 40
    ids = [f"id{i}" for i in range(n)]
    refs = {q: ([] if i % 3 == 0 else [f"w{i}"]) for i, q in enumerate(ids)}
    spans = {q: (f"w{i}" if i % 2 else "zz") for i, q in enumerate(ids)}
    margins = {q: float(rng.normal()) for q in ids}
    frame = pd.DataFrame({"id": ids, "span_text": [spans[q] for q in ids]})
    out, m = score_predictions(frame, refs, margins, "best", tune_fraction=0.5)
    tune, report = split_for_tuning(ids, 0.5)
    t = m["no_answer_threshold"]
    assert m["tuning"] == {
        "tune_fraction": 0.5, "tuned_on_questions": 20, "reported_on_questions": 20, "threshold": t,
        "threshold_source": "tuned for F1 on the tune part (20 questions); reported on the other 20",
        "best_scores_on": "the tune part (20 questions)",
        "checkpoint_selected_on": "validation (f1), the reported part (20 questions; each epoch's threshold tuned "
                                  "on the tune part): the epoch kept is the one whose reported score is best"}
    _, by_loss = score_predictions(frame, refs, margins, "best", tune_fraction=0.5, selected_by="eval_loss")
    assert by_loss["tuning"]["checkpoint_selected_on"] == "validation (eval_loss), all 40 questions: the reported " \
                                                          "part included"
    # best_f1 is on the tune part (applying t there gives it back); f1 is on the report part only
    _, tuned = score_predictions(frame[frame["id"].isin(tune)], refs, margins, t)
    _, reported = score_predictions(frame[frame["id"].isin(report)], refs, margins, t)
    assert tuned["f1"] == m["best_f1"] and m["n_questions"] == 20
    assert (m["f1"], m["exact_match"], m["NoAns_total"]) == (reported["f1"], reported["exact_match"],
                                                             reported["NoAns_total"])
    # every question keeps its prediction (the threshold applied) and says which part it is in
    assert out["part"].value_counts().to_dict() == {"tune": 20, "report": 20}
    assert (out["no_answer"] == (out["id"].map(margins) > t)).all()
    assert set(out.loc[out["part"] == "report", "id"]) == set(report)


def test_answerable_only_mode_reports_on_every_question():
    frame = pd.DataFrame({"id": ["a", "b"], "span_text": ["x", "y"]})
    _, m = score_predictions(frame, {"a": ["x"], "b": ["z"]}, None, "best", tune_fraction=0.5)
    assert m["n_questions"] == 2 and m["f1"] == 50.0 and "best_f1" not in m
    assert m["tuning"]["threshold"] is None and m["tuning"]["tune_fraction"] == 0.0
    assert m["tuning"]["threshold_source"].startswith("none: answerable-only")


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
    assert metrics["f1"] == metrics["best_f1"]  # threshold 'best' is applied: exactly its score
    assert metrics["exact_match"] <= metrics["best_exact"]
    assert metrics["no_answer_threshold"] == metrics["best_f1_thresh"] == metrics["inference"]["no_answer_threshold"]
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
