"""The registry: GTO versions and the prod stage in git projects, the promotion gate, model resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_ok

from tasks.register import register
from uqa.errors import UserError
from uqa.params.validation import params_from_dict
from uqa.registry.lookup import resolve_model
from uqa.registry.store import Registry, next_version

TINY = {"model_type": "xlm-roberta", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 40, "type_vocab_size": 1, "vocab_size": 50}


def _model(root: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    torch.manual_seed(seed)
    cfg = dict(TINY)
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.save_pretrained(str(root / "models" / "final"))


def _metrics(root: Path, f1: float, eval_set: str = "set-1", mode: str = "answerable-only",
             tune_fraction: float = 0.0) -> None:
    """metrics/eval.json as evaluate writes it for models/final: the weights it scored, the set it scored them on."""
    from uqa.model.settings import weights_sha256

    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "eval.json").write_text(json.dumps({
        "exact_match": f1 - 5, "f1": f1, "urdu_exact_match": f1 - 4, "urdu_f1": f1 + 1, "n_questions": 10,
        "mode": mode, "tuning": {"tune_fraction": tune_fraction}, "eval_set": {"sha256": eval_set, "rows": 10},
        "inference": {"n_best": 20, "max_answer_length": 30, "no_answer_threshold": None,
                      "weights_sha256": weights_sha256(root / "models" / "final")}}))


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

    from uqa.model.predict import Predictor
    from uqa.text.tokenizer import train_tokenizer

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

    from uqa.text.tokenizer import train_tokenizer
    from uqa_cli.main import main

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


# a data.source that broke the hand-written YAML front matter: ': ' and '#' in paths, a list, Urdu
HOSTILE_SOURCE = {"train": "/data/uqa: v2/train #1.parquet",
                  "validation": ["rel/val: part-0 #a.jsonl", "اردو/val'\"{x}: 1.jsonl"]}


def _front_matter(card_text: str) -> dict:
    """The README's YAML front matter read with a plain YAML parser (not huggingface_hub's)."""
    import yaml

    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text[4:].split("\n---\n", 1)[0])


def test_model_card_metadata_round_trips_a_hostile_source(tmp_path):
    """The card is built with huggingface_hub's ModelCardData/EvalResult: read back, its model-index
    has EM and F1, and a data.source with ': ' and '#' in it comes back exactly as given."""
    from huggingface_hub import ModelCard

    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0)
    files = {"train": [{"path": HOSTILE_SOURCE["train"], "size": 123, "sha256": "a" * 64}],
             "validation": [{"path": p, "size": 7, "sha256": f"{i}" * 64}
                            for i, p in enumerate(HOSTILE_SOURCE["validation"])]}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "download.json").write_text(json.dumps(
        {"source": HOSTILE_SOURCE, "kind": "files", "files": files, "rows": {"train": 10, "validation": 4}}))
    params = params_from_dict({"data": {"source": HOSTILE_SOURCE}, "register": {"min_f1": 0.0}})
    readme = Path(register(params, tmp_path)["model_card"])

    card = ModelCard.load(readme)
    meta = card.data.to_dict()
    assert meta == _front_matter(readme.read_text(encoding="utf-8"))  # what the Hub's YAML parser sees
    assert {k: meta[k] for k in ("library_name", "pipeline_tag", "language", "license", "base_model")} == {
        "library_name": "transformers", "pipeline_tag": "question-answering", "language": ["ur"],
        "license": "cc-by-sa-4.0", "base_model": "xlm-roberta-base"}
    assert {"extractive-qa", "urdu", "uqa", "squad_v2"} <= set(meta["tags"])
    assert "datasets" not in meta  # local files are not a Hub dataset id
    assert meta["model-index"][0]["name"] == "uqa-qa"
    results = card.data.eval_results
    assert [(r.metric_type, r.metric_value) for r in results] == [("exact_match", 55.0), ("f1", 60.0)]
    for r in results:
        assert (r.task_type, r.dataset_name, r.dataset_split, r.dataset_revision) == (
            "question-answering", "UQA", "validation", None)
        assert json.loads(r.dataset_type) == HOSTILE_SOURCE  # exactly, not split at ': ' or cut at '#'

    text = card.text  # the human part
    assert "| exact match | 55.00 | 56.00 |" in text and "| F1 | 60.00 | 61.00 |" in text
    assert f"```json\n{json.dumps(HOSTILE_SOURCE, ensure_ascii=False)}\n```" in text
    assert f"- train: `train #1.parquet` (123 bytes) sha256 `{'a' * 64}`" in text
    assert f"sha256 `{'1' * 64}`" in text
    assert '"learning_rate": 2e-05' in text  # the training params
    assert "uqa predict --model" in text
    record = json.loads((readme.parent / "registration.json").read_text())
    assert record["data_source"] == HOSTILE_SOURCE


@pytest.mark.parametrize("init", ["pretrained", "scratch"])
def test_model_card_for_a_hub_dataset(tmp_path, init):
    """A Hub source: datasets and the model-index name it, with the commit download resolved."""
    from huggingface_hub import ModelCard

    _model(tmp_path, 1)
    _metrics(tmp_path, 70.0)
    sha = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "download.json").write_text(json.dumps(
        {"source": "uqa/UQA", "kind": "hub", "revision": "v1.0", "resolved_revision": sha,
         "rows": {"train": 100, "validation": 10}}))
    model = {"init": init} if init == "pretrained" else {"init": "scratch", "config": dict(TINY)}
    params = params_from_dict({"data": {"source": "uqa/UQA", "revision": "v1.0"}, "model": model,
                               "register": {"min_f1": 0.0}})
    card = ModelCard.load(register(params, tmp_path)["model_card"])
    meta = card.data.to_dict()
    assert meta["datasets"] == ["uqa/UQA"]
    assert meta.get("base_model") == ("xlm-roberta-base" if init == "pretrained" else None)
    assert {(r.metric_type, r.metric_value, r.dataset_type, r.dataset_revision) for r in card.data.eval_results} == {
        ("exact_match", 65.0, "uqa/UQA", sha), ("f1", 70.0, "uqa/UQA", sha)}
    assert f"- resolved Hub commit: `{sha}`" in card.text and "- revision: v1.0" in card.text


def test_model_card_never_invents_a_score():
    """A metric eval.json does not have is 'n/a' in the table and absent from the model-index (not 0)."""
    from huggingface_hub import ModelCard

    from uqa.registry.model_card import model_card

    text = model_card("uqa-qa", "v0.0.1", params_from_dict({}), {"f1": 42.5}, {}, {}, True, "first")
    card = ModelCard(text)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("f1", 42.5)]
    assert card.data.eval_results[0].dataset_revision is None  # not known without reports/download.json
    assert "| exact match | n/a | n/a |" in card.text and "| F1 | 42.50 | n/a |" in card.text


def test_model_card_quotes_a_hostile_directory_source():
    """A local directory source with ': ' and ' #' in it: the YAML the old f-string card wrote did not load."""
    from huggingface_hub import ModelCard

    from uqa.registry.model_card import model_card

    source = "/data/uqa: v2 #1/"
    text = model_card("uqa-qa", "v0.0.1", params_from_dict({"data": {"source": source}}),
                      {"exact_match": 1.0, "f1": 2.0}, {}, {}, True, "first")
    meta = _front_matter(text)
    assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "UQA", "type": source, "split": "validation"}
    assert "datasets" not in meta  # a path, not a Hub dataset id
    assert {r.dataset_type for r in ModelCard(text).data.eval_results} == {source}


def test_metrics_of_other_weights_never_vouch_for_these(git_project):
    """metrics/eval.json records the sha256 of the weights it scored: after a retrain without a new
    evaluation, register refuses (DataError naming both files) and registers nothing."""
    from uqa.errors import DataError
    from uqa.model.settings import weights_sha256

    root = git_project
    _model(root, 1)
    scored = weights_sha256(root / "models" / "final")
    metrics = {"exact_match": 55.0, "f1": 60.0, "n_questions": 10, "inference": {"weights_sha256": scored}}
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps(metrics))
    assert register(_params(), root)["version"] == "v0.0.1"  # the weights it scored: registered

    _model(root, 2)  # retrained; metrics/eval.json still describes the seed-1 weights
    with pytest.raises(DataError, match=r"metrics/eval\.json scored other weights than .*models/final: rerun "
                                        r"the evaluate stage"):
        register(_params(), root)
    assert [v["version"] for v in Registry(root, "uqa-qa").versions()] == ["v0.0.1"]
    assert sorted(run_ok(["git", "tag"], root).stdout.split()) == ["uqa-qa#prod#1", "uqa-qa@v0.0.1"]


def test_a_run_killed_before_its_tags_is_finished_by_the_next(git_project):
    """kill -9 right after the index records a new version (failpoint write.after_rename@index.json, in a
    real process): the version is recorded as `gto: pending` with no tags. The next register() tags it
    (finish_pending_tags) before anything else, and does not register the same weights again."""
    import os
    import subprocess
    import sys

    root = git_project
    _model(root, 1)
    _metrics(root, 60.0)
    code = ("from tasks.register import register; from uqa.params.validation import params_from_dict; "
            "register(params_from_dict({'register': {'min_f1': 0.0}}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, UQA_FAILPOINT="write.after_rename@index.json"))
    assert r.returncode == -9, r.stderr[-3000:]  # killed at the failpoint, not finished
    index = json.loads((root / "registry" / "uqa-qa" / "index.json").read_text())
    assert [(v["version"], v["gto"]) for v in index["versions"]] == [("v0.0.1", "pending")]
    assert run_ok(["git", "tag"], root).stdout.split() == []  # recorded, never tagged

    report = register(_params(), root)
    assert (report["registered"], report["version"], report["promoted"]) == (False, "v0.0.1", True)
    index = json.loads((root / "registry" / "uqa-qa" / "index.json").read_text())
    assert [(v["version"], v["gto"]) for v in index["versions"]] == [("v0.0.1", "tagged")]
    assert sorted(run_ok(["git", "tag"], root).stdout.split()) == ["uqa-qa#prod#1", "uqa-qa@v0.0.1"]
    assert Registry(root, "uqa-qa").stage_version() == "v0.0.1"
    assert resolve_model("prod", root).name == "v0.0.1"


def test_model_card_widget_is_a_real_answerable_validation_question(tmp_path):
    """The Hub's question-answering box opens with the card's `widget:` example: a question and context of
    the version's own validation set, answerable, paragraph-sized, the same one on every run."""
    import datasets
    import pandas as pd
    from conftest import DEMO_SOURCE
    from huggingface_hub import ModelCard

    rows = pd.read_json(DEMO_SOURCE["validation"], lines=True, dtype=False)
    long_context = rows.iloc[0].to_dict() | {"id": "long", "context": "ب" * 5000}
    unanswerable = rows.iloc[1].to_dict() | {"id": "none", "is_impossible": True, "answer": ""}
    frame = pd.concat([pd.DataFrame([long_context, unanswerable]), rows], ignore_index=True)
    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(tmp_path / "data/filtered/validation"))
    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0)
    readme = Path(register(_params(), tmp_path)["model_card"])
    widget = ModelCard.load(readme).data.to_dict()["widget"]
    assert widget == _front_matter(readme.read_text(encoding="utf-8"))["widget"] and len(widget) == 1
    chosen = frame.set_index("id").loc[widget[0]["example_title"].removeprefix("UQA validation ")]
    assert widget[0]["text"] == chosen["question"].strip() and widget[0]["context"] == chosen["context"]
    assert not chosen["is_impossible"] and len(chosen["context"]) <= 1500
    from uqa.registry.evalset import widget_example

    assert widget_example(tmp_path / "data/filtered/validation") == widget[0]  # the same one every time
    assert widget_example(tmp_path / "absent") is None
