"""The promotion gate compares like with like and fails closed (issue 19): each fail-open case is a test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_registry_failclosed
from conftest import REPO, run_ok
from test_register import _metrics, _model, _params
from test_registry_failclosed import _index, _refused

from tasks.register import register
from uqa.errors import DataError
from uqa.registry.gate import decide, differences, eval_set_fingerprint
from uqa.registry.store import Registry, RegistryInconsistent

NAME = "uqa-qa"


@pytest.fixture
def registered(tmp_path):
    """A git project whose prod is v0.0.1 (F1 60), with a better model (F1 90) ready to register."""
    return test_registry_failclosed.registered.__wrapped__(tmp_path)


# -- GTO's tags and the index must agree ---------------------------------------------------------------


def test_prod_tag_deleted_stops_registration_naming_the_repair(registered):
    """The measured case: prod's tag gone (a partial tag fetch); a far worse model was promoted as 'first prod'."""
    run_ok(["git", "tag", "-d", "uqa-qa#prod#1"], registered)
    _metrics(registered, 29.74)
    _refused(registered, rf"^{_index(registered)} records uqa-qa v0\.0\.1 in prod but git has no 'uqa-qa#prod#N' tag "
                         r"for it \(deleted, or not fetched\): fetch the tags \(`git fetch --tags`\), or restore the "
                         r"assignment \(`gto assign uqa-qa --version v0\.0\.1 --stage prod`\)")


def test_tags_and_index_name_different_prods(registered):
    import gto.api

    _metrics(registered, 50.0)  # v0.0.2: registered, not promoted
    assert register(_params(), registered)["promoted"] is False
    gto.api.assign(str(registered), NAME, "prod", version="v0.0.2", message="by hand", author="t",
                   author_email="t@localhost")
    _model(registered, 3)
    _metrics(registered, 55.0)
    _refused(registered, r"^git's tags put uqa-qa v0\.0\.2 in prod \(tag 'uqa-qa#prod#2'\) but .*index\.json records "
                         r"v0\.0\.1 there: fetch the tags")


def test_index_record_without_its_version_tag(registered):
    index = json.loads(_index(registered).read_text())
    extra = dict(index["versions"][0], version="v0.0.5", stages=[])
    index["versions"].append(extra)
    _index(registered).write_text(json.dumps(index))
    _refused(registered, r"records v0\.0\.5 of uqa-qa but git has no tag 'uqa-qa@v0\.0\.5': fetch the tags")


# -- version numbers are never reused ------------------------------------------------------------------


def test_missing_index_with_version_directories_is_not_an_empty_registry(tmp_path):
    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0)
    register(_params(), tmp_path)
    _index(tmp_path).unlink()
    _model(tmp_path, 2)
    _metrics(tmp_path, 10.0)
    # before: v0.0.1 again, written over the existing one, and promoted as the "first prod model"
    _refused(tmp_path, r"registry/uqa-qa has version directories \(v0\.0\.1\) but no index\.json: restore it from "
                       r"DVC \(`dvc pull registry`\)")


def test_a_version_directory_outside_the_index_keeps_its_number(tmp_path):
    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0)
    register(_params(), tmp_path)
    store = tmp_path / "registry" / NAME
    shutil.copytree(store / "v0.0.1", store / "v0.0.2")  # e.g. written by a run killed before its index record
    before = (store / "v0.0.2" / "registration.json").read_bytes()
    _model(tmp_path, 2)
    _metrics(tmp_path, 70.0)
    assert register(_params(), tmp_path)["version"] == "v0.0.3"
    assert (store / "v0.0.2" / "registration.json").read_bytes() == before


# -- pending tags are verified and gated before they are assigned ----------------------------------------


def _make_pending(root: Path, version: str, gate_prod: str | None = None) -> None:
    """As a run killed between its index record and its GTO tags leaves it (promoted, tags pending)."""
    for tag in run_ok(["git", "tag", "-l", f"{NAME}@{version}", f"{NAME}#prod#*"], root).stdout.split():
        if tag.startswith(f"{NAME}@") or run_ok(["git", "rev-parse", f"{tag}^{{}}"], root).stdout == run_ok(
                ["git", "rev-parse", f"{NAME}@{version}^{{}}"], root).stdout:
            run_ok(["git", "tag", "-d", tag], root)
    index = json.loads(_index(root).read_text())
    for entry in index["versions"]:
        entry["stages"] = []
        if entry["version"] == version:
            entry.update(gto="pending", promoted=True, stages=["prod"])
            entry.pop("gate", None)
            if gate_prod:
                entry["gate"] = {"prod": gate_prod, "min_f1": 0.0}
    _index(root).write_text(json.dumps(index))


def test_pending_version_with_other_weights_is_not_tagged(registered):
    assert register(_params(), registered)["version"] == "v0.0.2"
    _make_pending(registered, "v0.0.2")
    weights = registered / "registry" / NAME / "v0.0.2" / "model.safetensors"
    shutil.copy2(registered / "registry" / NAME / "v0.0.1" / "model.safetensors", weights)
    _model(registered, 3)
    _metrics(registered, 95.0)
    tags = run_ok(["git", "tag"], registered).stdout
    with pytest.raises(RegistryInconsistent, match=r"records v0\.0\.2 with GTO tags pending, but the weights in .* are "
                                                   r"not the ones its record names"):
        register(_params(), registered)
    assert run_ok(["git", "tag"], registered).stdout == tags  # neither v0.0.2 nor a prod assignment was tagged


def test_pending_promotion_is_gated_again_against_prod_now(registered):
    """v0.0.2 (F1 90) is prod by its tags; v0.0.3 (F1 80) is recorded as promoted with its tags pending (its
    decision was made against v0.0.1, F1 60): completing its tags must not put a worse model in prod."""
    assert register(_params(), registered)["prod_version"] == "v0.0.2"
    _model(registered, 3)
    _metrics(registered, 80.0)
    assert register(_params(), registered)["promoted"] is False
    _make_pending(registered, "v0.0.3", gate_prod="v0.0.1")
    index = json.loads(_index(registered).read_text())
    index["versions"][1]["stages"] = []  # the pending record took prod from v0.0.2 in the index
    _index(registered).write_text(json.dumps(index))
    run_ok(["git", "tag", "-a", "uqa-qa#prod#9", "-m", "prod", "uqa-qa@v0.0.2^{}"], registered)

    _model(registered, 4)
    _metrics(registered, 70.0)
    report = register(_params(), registered)
    registry = Registry(registered, NAME)
    assert registry.stage_version() == "v0.0.2"
    assert registry.record("v0.0.3")["promoted"] is False
    assert "promotion withdrawn when its tags were completed: F1 80.00 < prod v0.0.2 F1 90.00" in \
        registry.record("v0.0.3")["reason"]
    assert "uqa-qa@v0.0.3" in run_ok(["git", "tag"], registered).stdout
    assert (report["version"], report["promoted"], report["prod_version"]) == ("v0.0.4", False, "v0.0.2")


# -- metrics must name their weights; git errors are errors ---------------------------------------------


def test_metrics_that_do_not_name_their_weights_vouch_for_nothing(registered):
    metrics = json.loads((registered / "metrics" / "eval.json").read_text())
    del metrics["inference"]
    (registered / "metrics" / "eval.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match=r"eval\.json does not name the weights it scored \(no "
                                        r"inference\.weights_sha256\): rerun the evaluate stage"):
        register(_params(), registered)


def test_a_git_error_is_not_index_mode(registered):
    """Before: any git failure read as "not a git project", and the index alone decided prod."""
    with open(registered / ".git" / "config", "a") as fh:
        fh.write("[broken\n")
    index = _index(registered).read_bytes()
    with pytest.raises(RegistryInconsistent, match=r"^git cannot read .* \(fatal: bad config line .*\): fix that "
                                                   r"first .*the registry is never read without its GTO tags on a git "
                                                   r"error$"):
        register(_params(), registered)
    assert _index(registered).read_bytes() == index
    assert sorted(p.name for p in (registered / "registry" / NAME).iterdir()) == ["index.json", "v0.0.1"]


# -- like with like ---------------------------------------------------------------------------------


def test_eval_set_fingerprint_is_the_rows_not_their_order():
    import pandas as pd

    rows = [{"id": "a", "question": "q1", "context": "c", "answer": "x", "is_impossible": False},
            {"id": "b", "question": "q2", "context": "c", "answer": "", "is_impossible": True}]
    one, two = pd.DataFrame(rows), pd.DataFrame(rows[::-1])
    assert eval_set_fingerprint(one) == eval_set_fingerprint(two)
    assert eval_set_fingerprint(one)["rows"] == 2
    changed = pd.DataFrame([rows[0], dict(rows[1], answer="y")])
    assert eval_set_fingerprint(changed) != eval_set_fingerprint(one)


def _m(f1, eval_set="s1", mode="squad2", tune=0.0):
    return {"f1": f1, "eval_set": {"sha256": eval_set}, "mode": mode, "tuning": {"tune_fraction": tune}}


@pytest.mark.parametrize("other", [_m(90, eval_set="s2"), _m(90, mode="answerable-only"), _m(90, tune=0.3),
                                   {"f1": 90}])
def test_unlike_evaluations_rescore_prod(other):
    prod = {"metrics": _m(99.0)}
    assert differences(other, prod["metrics"])
    calls = []

    def rescore():
        calls.append(1)
        return 40.0

    promote, reason = decide(90.0, 0.0, "v0.0.1", prod, other, rescore)
    assert promote and calls == [1]
    assert reason.startswith("F1 90.00 >= min_f1 0.00 and >= prod v0.0.1 F1 40.00 re-scored on this run's "
                             "evaluation (its recorded F1 99.00 was on another:")
    # without a way to re-score, unlike numbers are never compared: not promoted
    promote, reason = decide(100.0, 0.0, "v0.0.1", prod, other, None)
    assert not promote and "not comparable" in reason


def test_like_evaluations_compare_recorded_numbers():
    def rescore():
        raise AssertionError("prod is not re-scored on the same evaluation")

    assert decide(90.0, 0.0, "v0.0.1", {"metrics": _m(99.0)}, _m(90.0), rescore) == (
        False, "F1 90.00 < prod v0.0.1 F1 99.00")


def _tiny_qa_model(directory: Path, seed: int) -> None:
    """A tiny untrained QA model with a tokenizer trained on the demo data (what Predictor loads)."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from uqa.text.tokenizer import train_tokenizer

    texts = [json.loads(line)["context"] + " " + json.loads(line)["question"]
             for line in (REPO / "demo/data/train.jsonl").read_text(encoding="utf-8").splitlines()[:200]]
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(seed)
    config = AutoConfig.for_model("xlm-roberta", vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=258,
                                  type_vocab_size=1)
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


def test_prod_is_rescored_on_the_challengers_validation_set(tmp_path):
    """A new validation dump: prod's recorded F1 (99 on the old set) is not compared with the challenger's
    (on the new set); prod is evaluated on the new set and the reason says so."""
    import datasets
    import pandas as pd

    from uqa.registry.evalset import model_f1_on

    _tiny_qa_model(tmp_path / "models" / "final", 1)
    _metrics(tmp_path, 99.0, eval_set="old-set")
    assert register(_params(), tmp_path)["prod_version"] == "v0.0.1"

    rows = [json.loads(line) for line in (REPO / "demo/data/validation.jsonl").read_text(encoding="utf-8")
            .splitlines()[:24]]
    examples = pd.DataFrame(rows)
    datasets.Dataset.from_pandas(examples).save_to_disk(str(tmp_path / "data" / "filtered" / "validation"))
    _tiny_qa_model(tmp_path / "models" / "final", 2)
    _metrics(tmp_path, 98.0, eval_set=eval_set_fingerprint(examples)["sha256"])
    prod_f1 = model_f1_on(tmp_path / "registry" / NAME / "v0.0.1", tmp_path / "data" / "filtered" / "validation",
                          _params(), squad2=False)
    assert prod_f1 < 98.0  # an untrained model

    report = register(_params(), tmp_path)  # before: "F1 98.00 < prod v0.0.1 F1 99.00", comparing two sets
    assert (report["version"], report["promoted"]) == ("v0.0.2", True)
    assert report["reason"].startswith(f"F1 98.00 >= min_f1 0.00 and >= prod v0.0.1 F1 {prod_f1:.2f} re-scored on "
                                       "this run's evaluation (its recorded F1 99.00 was on another: eval_set old-set")
    record = Registry(tmp_path, NAME).record("v0.0.2")
    assert record["metrics"]["eval_set"]["sha256"] == eval_set_fingerprint(examples)["sha256"]


def test_unlike_evaluation_without_the_validation_set_stops(tmp_path):
    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0, eval_set="old-set")
    register(_params(), tmp_path)
    _model(tmp_path, 2)
    _metrics(tmp_path, 70.0, eval_set="new-set")
    with pytest.raises(DataError, match=r"data/filtered/validation is missing, and prod must be re-scored on this "
                                        r"run's validation set to compare like with like"):
        register(_params(), tmp_path)
    assert Registry(tmp_path, NAME).versions()[-1]["version"] == "v0.0.1"


def test_prod_is_never_rescored_on_a_set_other_than_the_challengers(tmp_path):
    """The challenger was scored on one set (its eval_set fingerprint); the only validation set here is
    another (a sweep winner in SQuAD2 mode beside the project's answerable-only set): the gate stops."""
    import datasets
    import pandas as pd

    _tiny_qa_model(tmp_path / "models" / "final", 1)
    _metrics(tmp_path, 60.0, eval_set="old-set")
    register(_params(), tmp_path)
    rows = [json.loads(line) for line in (REPO / "demo/data/validation.jsonl").read_text(encoding="utf-8")
            .splitlines()[:24]]
    datasets.Dataset.from_pandas(pd.DataFrame(rows)).save_to_disk(str(tmp_path / "data" / "filtered" / "validation"))
    _tiny_qa_model(tmp_path / "models" / "final", 2)
    _metrics(tmp_path, 70.0, eval_set="the-winners-set")
    with pytest.raises(DataError, match=r"re-scored on the set the challenger was scored on \(eval_set the-winners- "
                                        r"\(10 rows\)\), and none of \S*data/filtered/validation \(24 rows, eval_set "
                                        r"[0-9a-f]{12}\) is that set"):
        register(_params(), tmp_path)
    assert Registry(tmp_path, NAME).versions()[-1]["version"] == "v0.0.1"
