"""`uqa predict` answers exactly as the evaluation scored: same windows, span search and threshold.

The tiny demo model is trained by the train stage's own recipe (tasks/train_recipe.run, which writes
models/final/uqa_inference.json), evaluated by the evaluate stage, and then `python -m uqa_cli
predict --model <project>/models/final` (a real subprocess, run from elsewhere) answers every
validation question; every answer - text, character span, no-answer - must be evaluate's."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import DEMO_SOURCE, demo_tiny_params

from tasks.download import download
from tasks.evaluate import evaluate
from tasks.filter import filter_rows
from tasks.tokenize import tokenize_splits
from uqa.errors import UserError
from uqa.model.predict import Predictor
from uqa.model.settings import (
    INFERENCE_FILE,
    registry_settings,
    resolve_settings,
    weights_sha256,
    window_settings,
)
from uqa.params.overrides import deep_merge
from uqa.params.validation import params_from_dict
from uqa.workspace.dvc_ops import working_dir

MODES = {
    "answerable": {},
    # SQuAD2 mode, the threshold tuned on half of the question ids and applied to all of them
    "squad2": {"data": {"keep_unanswerable": True}, "evaluate": {"tune_fraction": 0.5}},
}


@pytest.fixture(scope="module", params=list(MODES))
def trained_project(request, tmp_path_factory):
    from tasks.train_recipe import run as train_recipe

    root = tmp_path_factory.mktemp(request.param)
    p = params_from_dict(deep_merge(demo_tiny_params(epochs=2, logging_steps=50), MODES[request.param]))
    with working_dir(root):
        download(p.data)
        filter_rows(p.data)
        tokenize_splits(p)
        train_recipe(p)  # what `accelerate launch -m tasks.train_recipe` runs, in this process
        metrics = evaluate(p)
    return root, request.param, metrics


def _questions(root: Path) -> pd.DataFrame:
    """Every question evaluate scored, as the user has it (the demo file: question not stripped)."""
    scored = pd.read_parquet(root / "reports" / "predictions.parquet")
    raw = pd.read_json(DEMO_SOURCE["validation"], lines=True, dtype=False).drop_duplicates("id").set_index("id")
    return scored.assign(question=raw.loc[scored["id"], "question"].to_numpy(),
                         context=raw.loc[scored["id"], "context"].to_numpy())


def _assert_same(scored: pd.DataFrame, answers: list[dict]) -> None:
    assert len(answers) == len(scored)
    mismatches = []
    for row, ans in zip(scored.itertuples(), answers, strict=True):
        if row.prediction == "":
            ok = ans["no_answer"] and ans["answer"] == "" and (ans["start"], ans["end"]) == (-1, -1)
        else:
            ok = (not ans["no_answer"] and ans["answer"] == row.prediction
                  and (ans["start"], ans["end"]) == (row.answer_start_char, row.answer_end_char)
                  and row.context[ans["start"]:ans["end"]] == ans["answer"])
        if not ok:
            mismatches.append((row.id, row.prediction, row.answer_start_char, row.answer_end_char, ans))
    assert mismatches == []


@pytest.mark.slow
def test_settings_travel_with_the_model(trained_project):
    root, mode, metrics = trained_project
    settings = json.loads((root / "models" / "final" / INFERENCE_FILE).read_text())
    tokenize = json.loads((root / "reports" / "tokenize.json").read_text())
    assert settings["max_seq_length"] == tokenize["max_seq_length"] and isinstance(settings["max_seq_length"], int)
    assert settings["stride"] == tokenize["stride"] == 128
    assert settings["squad2"] is (mode == "squad2")
    assert "no_answer_threshold" not in settings  # known only after evaluate, which never writes models/final
    p = params_from_dict(deep_merge(demo_tiny_params(), MODES[mode]))
    assert window_settings(p, root / "data" / "tokenized", report=root / "absent.json") == {
        "max_seq_length": settings["max_seq_length"], "stride": 128}  # without the report: from the data
    inference = metrics["inference"]
    assert inference == {"max_seq_length": settings["max_seq_length"], "stride": 128, "n_best": 20,
                         "max_answer_length": 30, "no_answer_threshold": metrics.get("no_answer_threshold"),
                         "weights_sha256": weights_sha256(root / "models" / "final")}
    tuning = metrics["tuning"]
    if mode == "squad2":
        assert tuning["tune_fraction"] == 0.5 and tuning["threshold"] == inference["no_answer_threshold"]
        assert tuning["tuned_on_questions"] + tuning["reported_on_questions"] == len(_questions(root))
        assert metrics["n_questions"] == tuning["reported_on_questions"]
        assert "tune part" in tuning["threshold_source"]
    else:
        assert inference["no_answer_threshold"] is None and tuning["threshold"] is None
        assert tuning["checkpoint_selected_on"] == "validation (f1), the same questions"


@pytest.mark.slow
def test_evaluate_scores_the_kept_checkpoint_as_its_epoch_did(trained_project):
    """EM/F1 every epoch come from the evaluate stage's own scoring: the checkpoint kept is the best by
    F1, and evaluate's metrics for it are exactly its epoch's (same questions, same settings; in SQuAD2
    mode the same tuned threshold and tune/report split)."""
    root, mode, metrics = trained_project
    report = json.loads((root / "reports" / "train.json").read_text())
    history = report["eval_history"]
    assert [round(h["epoch"]) for h in history] == [1, 2]
    assert report["metric_for_best_model"] == "f1"
    kept = [h for h in history if report["best_checkpoint"].endswith(f"checkpoint-{h['step']}")]
    assert len(kept) == 1, (report["best_checkpoint"], history)
    assert kept[0]["eval_f1"] == max(h["eval_f1"] for h in history) == report["best_metric"]
    assert metrics["f1"] == pytest.approx(kept[0]["eval_f1"], abs=1e-9)
    assert metrics["exact_match"] == pytest.approx(kept[0]["eval_exact"], abs=1e-9)
    # dvclive wrote one row per epoch (the curves `dvc plots` draws, declared in dvc.yaml)
    for name in ("f1", "exact"):
        rows = (root / "dvclive" / "plots" / "metrics" / "eval" / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t") == ["step", name] and len(rows) == 1 + len(history)
        assert [float(r.split("\t")[1]) for r in rows[1:]] == pytest.approx([h[f"eval_{name}"] for h in history])


@pytest.mark.slow
def test_uqa_predict_answers_as_evaluate_scored(trained_project, tmp_path):
    root, mode, _ = trained_project
    scored = _questions(root)
    questions = tmp_path / "Q.jsonl"
    scored[["id", "question", "context"]].to_json(questions, orient="records", lines=True, force_ascii=False)
    out = tmp_path / "A.jsonl"
    r = subprocess.run([sys.executable, "-m", "uqa_cli", "predict", "--model", str(root / "models" / "final"),
                        "--input", str(questions), "--output", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    answers = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["id"] for a in answers] == scored["id"].tolist()
    _assert_same(scored, answers)
    assert "max_seq_length" in r.stderr and "Traceback" not in r.stderr
    if mode == "squad2":  # the threshold came from the project's evaluation of these weights
        assert str(root / "metrics" / "eval.json") in r.stderr
        assert 0 < sum(a["no_answer"] for a in answers) < len(answers)


@pytest.mark.slow
def test_a_registered_copy_answers_the_same(trained_project):
    """The version the register stage writes (register(): models/final's files, and uqa_inference.json
    merged with evaluate's settings) answers every question exactly as evaluate scored them."""
    from tasks.register import register

    root, mode, metrics = trained_project
    final = root / "models" / "final"
    before = (final / INFERENCE_FILE).read_bytes()
    report = register(params_from_dict(deep_merge(demo_tiny_params(), MODES[mode])), root)
    version = Path(report["path"])
    assert report["registered"] and version.name == report["version"] == "v0.0.1"
    assert version.is_relative_to(root / "registry")
    assert (final / INFERENCE_FILE).read_bytes() == before  # a new file: models/final's is not touched
    settings = json.loads((version / INFERENCE_FILE).read_text())
    assert settings == registry_settings(final, metrics)
    assert settings["no_answer_threshold"] == metrics.get("no_answer_threshold")
    assert (settings["n_best"], settings["max_answer_length"]) == (20, 30)
    predictor = Predictor(version)
    assert set(predictor.sources.values()) == {str(version / INFERENCE_FILE)}
    scored = _questions(root)
    answers = predictor(scored["question"].tolist(), scored["context"].tolist())
    _assert_same(scored, [a.to_dict() for a in answers])


@pytest.mark.slow
def test_too_long_question_is_a_clear_error(trained_project, tmp_path, capsys):
    from uqa_cli.main import main

    root, _, _ = trained_project
    model = str(root / "models" / "final")
    limit = json.loads((root / "models" / "final" / INFERENCE_FILE).read_text())["max_seq_length"]
    long_question = " ".join(["سوال"] * (3 * limit)) + "؟"
    context = "یہ ایک مختصر سیاق ہے۔"
    assert main(["predict", "--model", model, "--question", long_question, "--context", context]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the question ('سوال سوال") and f"max_seq_length {limit}" in err
    assert "tokens long" in err and "Traceback" not in err
    rows = tmp_path / "batch.jsonl"
    rows.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "ok-1", "question": "کیا؟", "context": context},
        {"id": "too-long", "question": long_question, "context": context},
    ]) + "\n", encoding="utf-8")
    assert main(["predict", "--model", model, "--input", str(rows)]) == 2
    err = capsys.readouterr().err
    assert f"error: {rows}: row 1 (id 'too-long'): the question" in err and f"max_seq_length {limit}" in err
    with pytest.raises(UserError, match="row 0"):
        Predictor(model)([long_question], [context], ids=[0])


@pytest.mark.slow
def test_a_long_question_with_a_long_context_is_answered(trained_project):
    """A question leaving no more context tokens per window than the stride: that row's windows overlap
    by half a window (the model's stride is kept for every other row)."""
    root, _, _ = trained_project
    predictor = Predictor(root / "models" / "final", no_answer_threshold=1e9)  # always answer
    scored = _questions(root)
    question = " ".join([scored["question"].iloc[0]] * 3)
    context = " ".join(scored["context"].iloc[:12])  # far longer than one window
    short = scored["question"].iloc[1], scored["context"].iloc[1]
    answers = predictor([question, short[0]], [context, short[1]])
    assert not answers[0].no_answer and context[answers[0].start:answers[0].end] == answers[0].answer
    alone = predictor([short[0]], [short[1]])[0]
    assert (answers[1].answer, answers[1].start, answers[1].end) == (alone.answer, alone.start, alone.end)


# ---- where each setting comes from (no model needed) -------------------------------------------------


def _fake_model(path: Path, weights: bytes = b"w") -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_settings_fall_back_to_defaults_with_a_warning(tmp_path, caplog):
    model = _fake_model(tmp_path / "somewhere")
    with caplog.at_level(logging.WARNING, logger="uqa.model.predict"):
        settings, sources = resolve_settings(model, {"n_best": 5, "stride": None})
    assert settings == {"max_seq_length": 512, "stride": 128, "n_best": 5, "max_answer_length": 30,
                        "no_answer_threshold": None}
    assert sources["n_best"] == "given" and sources["stride"] == "default"
    assert f"has no {INFERENCE_FILE}" in caplog.text


def test_settings_from_the_model_then_the_project_evaluation(tmp_path, caplog):
    model = _fake_model(tmp_path / "proj" / "models" / "final")
    (model / INFERENCE_FILE).write_text(json.dumps({"max_seq_length": 96, "stride": 32, "squad2": True}))
    eval_json = tmp_path / "proj" / "metrics" / "eval.json"
    eval_json.parent.mkdir()
    record = {"max_seq_length": 96, "stride": 32, "n_best": 7, "max_answer_length": 12,
              "no_answer_threshold": -1.25, "weights_sha256": weights_sha256(model)}
    eval_json.write_text(json.dumps({"f1": 50.0, "inference": record}))
    settings, sources = resolve_settings(model, {"max_answer_length": 40})
    assert settings == {"max_seq_length": 96, "stride": 32, "n_best": 7, "max_answer_length": 40,
                        "no_answer_threshold": -1.25}
    assert sources["stride"] == str(model / INFERENCE_FILE) and sources["no_answer_threshold"] == str(eval_json)
    # retrained since the evaluation: its settings are not used, and a SQuAD2 model says it has no threshold
    (model / "model.safetensors").write_bytes(b"other weights")
    with caplog.at_level(logging.WARNING, logger="uqa.model.predict"):
        settings, sources = resolve_settings(model)
    assert settings["no_answer_threshold"] is None and settings["n_best"] == 20
    assert "did not score the weights" in caplog.text and "no no-answer threshold was found" in caplog.text


def test_a_version_registered_before_the_settings_file_keeps_its_threshold(tmp_path):
    model = _fake_model(tmp_path / "v0.0.1")
    (model / "registration.json").write_text(json.dumps({"metrics": {"f1": 1.0, "no_answer_threshold": 0.75}}))
    settings, sources = resolve_settings(model)
    assert settings["no_answer_threshold"] == 0.75 and sources["no_answer_threshold"].endswith("registration.json")
