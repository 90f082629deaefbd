"""The registry: GTO versions and the prod stage in git projects, the promotion gate, model resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_ok

from tasks.register import register
from uqa.errors import UserError
from uqa.params import params_from_dict
from uqa.registry import Registry, next_version, resolve_model

TINY = {"model_type": "xlm-roberta", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 40, "type_vocab_size": 1, "vocab_size": 50}


def _model(root: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    torch.manual_seed(seed)
    cfg = dict(TINY)
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.save_pretrained(str(root / "models" / "final"))


def _metrics(root: Path, f1: float) -> None:
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps({"exact_match": f1 - 5, "f1": f1, "urdu_exact_match": f1 - 4,
                                                            "urdu_f1": f1 + 1, "n_questions": 10}))


def _params(min_f1=0.0):
    return params_from_dict({"register": {"min_f1": min_f1}})


@pytest.fixture
def git_project(tmp_path):
    run_ok(["git", "init", "-q"], tmp_path)
    (tmp_path / "README.md").write_text("x")
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    return tmp_path


def test_promotion_gate_in_a_git_project(git_project):
    root = git_project
    head = run_ok(["git", "rev-parse", "HEAD"], root).stdout
    _model(root, 1)
    _metrics(root, 60.0)
    first = register(_params(), root)
    assert (first["version"], first["promoted"], first["prod_version"]) == ("v0.0.1", True, "v0.0.1")

    _model(root, 2)  # a worse model: registered, not promoted
    _metrics(root, 50.0)
    second = register(_params(), root)
    assert (second["version"], second["registered"], second["promoted"]) == ("v0.0.2", True, False)
    assert "< prod v0.0.1" in second["reason"]
    assert Registry(root, "uqa-qa").stage_version() == "v0.0.1"

    _model(root, 3)  # better, but under the gate
    _metrics(root, 70.0)
    third = register(_params(min_f1=80.0), root)
    assert (third["version"], third["promoted"]) == ("v0.0.3", False)
    assert "min_f1" in third["reason"]

    _model(root, 4)
    _metrics(root, 75.0)
    fourth = register(_params(), root)
    assert (fourth["version"], fourth["promoted"]) == ("v0.0.4", True)

    # GTO sees it all: semver tags, the prod assignment
    tags = run_ok(["git", "tag"], root).stdout.split()
    assert {"uqa-qa@v0.0.1", "uqa-qa@v0.0.2", "uqa-qa@v0.0.3", "uqa-qa@v0.0.4"} <= set(tags)
    assert any(t.startswith("uqa-qa#prod#") for t in tags)
    import gto.api

    assert gto.api.find_versions_in_stage(str(root), "uqa-qa", "prod")[0].version == "v0.0.4"
    # the user's branch, index and working tree are untouched
    assert run_ok(["git", "rev-parse", "HEAD"], root).stdout == head
    assert run_ok(["git", "status", "--porcelain", "--untracked-files=no"], root).stdout == ""
    # the registered directory is a complete model with a card, and prod resolves to it
    prod = resolve_model("prod", root)
    assert prod == root / "registry" / "uqa-qa" / "v0.0.4"
    card = (prod / "README.md").read_text()
    assert "uqa-qa v0.0.4" in card and "| F1 | 75.00 | 76.00 |" in card
    assert not (prod / "training_args.bin").exists()
    assert resolve_model("uqa-qa@v0.0.2", root) == root / "registry" / "uqa-qa" / "v0.0.2"
    assert resolve_model("uqa-qa:prod", root) == prod


def test_same_weights_are_not_registered_twice(git_project):
    _model(git_project, 1)
    _metrics(git_project, 60.0)
    assert register(_params(), git_project)["version"] == "v0.0.1"
    again = register(_params(), git_project)
    assert (again["registered"], again["version"]) == (False, "v0.0.1")


def test_registry_without_git_uses_its_index(tmp_path):
    _model(tmp_path, 1)
    _metrics(tmp_path, 40.0)
    assert register(_params(), tmp_path)["promoted"] is True
    _model(tmp_path, 2)
    _metrics(tmp_path, 30.0)
    assert register(_params(), tmp_path)["promoted"] is False
    assert Registry(tmp_path, "uqa-qa").stage_version() == "v0.0.1"
    assert resolve_model("prod", tmp_path).name == "v0.0.1"


def test_resolve_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="no version of 'uqa-qa' is in stage 'prod'"):
        resolve_model("prod", tmp_path)


def test_next_version():
    assert next_version([]) == "v0.0.1"
    assert next_version(["v0.0.1", "v0.0.9", "v0.1.0"]) == "v0.1.1"


def test_registered_model_loads_with_transformers_auto_classes(git_project):
    """transformers 5 removed pipeline("question-answering"); the Auto classes and uqa's Predictor load it."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from uqa.predict import Predictor
    from uqa.tokenizer import train_tokenizer

    tok = train_tokenizer(["لاہور پاکستان کا ایک شہر ہے۔ لاہور کہاں ہے؟"] * 3, vocab_size=50)
    _model(git_project, 1)
    tok.save_pretrained(str(git_project / "models" / "final"))
    _metrics(git_project, 60.0)
    path = Path(register(_params(), git_project)["path"])
    model = AutoModelForQuestionAnswering.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    inputs = tokenizer("لاہور کہاں ہے؟", "لاہور پاکستان کا ایک شہر ہے۔", return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    assert out.start_logits.shape == inputs["input_ids"].shape
    context = "لاہور پاکستان کا ایک شہر ہے۔"
    answer = Predictor(path)(["لاہور کہاں ہے؟"], [context])[0]
    assert answer.answer and context[answer.start:answer.end] == answer.answer


def test_predict_cli_batch_mode_and_bad_input(git_project, tmp_path, capsys):
    import pandas as pd

    from uqa.cli import main
    from uqa.tokenizer import train_tokenizer

    tok = train_tokenizer(["لاہور پاکستان کا ایک شہر ہے۔ لاہور کہاں ہے؟"] * 3, vocab_size=50)
    _model(git_project, 1)
    tok.save_pretrained(str(git_project / "models" / "final"))
    _metrics(git_project, 60.0)
    register(_params(), git_project)
    rows = pd.DataFrame({"id": ["a", "b"], "question": ["لاہور کہاں ہے؟", "کیا ہے؟"],
                         "context": ["لاہور پاکستان کا ایک شہر ہے۔", "یہ ایک شہر ہے۔ " * 60]})
    rows.to_parquet(tmp_path / "q.parquet")
    out = tmp_path / "answers.jsonl"
    assert main(["predict", "--project", str(git_project), "--model", "prod", "--input", str(tmp_path / "q.parquet"),
                 "--output", str(out)]) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["a", "b"]
    for a, context in zip(answers, rows["context"], strict=True):
        assert a["answer"] and context[a["start"]:a["end"]] == a["answer"]
    rows.drop(columns=["context"]).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    assert main(["predict", "--project", str(git_project), "--input", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl: missing column 'context'" in capsys.readouterr().err
