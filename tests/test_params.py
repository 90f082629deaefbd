"""params.yaml: the public names, validation with clear errors, overrides written back with comments kept."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import REPO

from uqa.errors import UserError
from uqa.params import Params, apply_overrides, load_params, overrides_to_nested, params_from_dict


def test_shipped_params_are_the_seed_recipe():
    p = load_params(REPO / "params.yaml")
    assert (p.data.source, p.data.revision, p.data.keep_unanswerable) == ("uqa/UQA", None, False)
    assert (p.model.name, p.model.tokenizer, p.model.init) == ("xlm-roberta-base", None, "pretrained")
    assert (p.tokenize.max_seq_length, p.tokenize.stride) == ("auto", 128)
    t = p.train
    assert (t.learning_rate, t.epochs, t.train_batch_size, t.eval_batch_size) == (2e-5, 6, 8, 8)
    assert (t.gradient_accumulation_steps, t.weight_decay, t.precision, t.seed) == (8, 0.01, "auto", 42)
    assert (p.evaluate.n_best, p.evaluate.max_answer_length) == (20, 30)
    assert (p.register.name, p.register.min_f1, p.register.push_to_hub) == ("uqa-qa", 0.0, False)
    assert p.model.trust_remote_code is False


def test_shipped_params_file_sets_every_field():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in dataclasses.fields(Params):
        names = {f.name for f in dataclasses.fields(section.default_factory())}
        assert set(raw[section.name]) == names, section.name


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epoch": 3}}, "unknown key(s) epoch"),
        ({"model": {"init": "random"}}, "model.init"),
        ({"model": {"init": "scratch"}}, "model.config"),
        ({"tokenize": {"max_seq_length": 10}}, "tokenize.max_seq_length"),
        ({"tokenize": {"stride": -1}}, "tokenize.stride"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"train": {"train_batch_size": 0}}, "train.train_batch_size"),
        ({"evaluate": {"no_answer_threshold": "tuned"}}, "evaluate.no_answer_threshold"),
        ({"data": "uqa/UQA"}, "expected a mapping"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        params_from_dict(raw)


def test_override_syntax():
    assert overrides_to_nested(["train.epochs=1", "data.keep_unanswerable=true", "model.tokenizer=null"]) == {
        "train": {"epochs": 1}, "data": {"keep_unanswerable": True}, "model": {"tokenizer": None}}
    assert overrides_to_nested({"train.learning_rate": 3e-5}) == {"train": {"learning_rate": 3e-5}}
    with pytest.raises(UserError, match="KEY=VALUE"):
        overrides_to_nested(["train.epochs"])


def test_overrides_are_written_back_keeping_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params, changed = apply_overrides(path, {"train": {"epochs": 2}, "tokenize.stride": 64})
    assert changed and params.train.epochs == 2 and params.tokenize.stride == 64
    text = path.read_text()
    assert "# the seed drops is_impossible rows" in text  # comments survive
    changed_lines = [a for a, b in zip((REPO / "params.yaml").read_text().splitlines(), text.splitlines(), strict=True)
                     if a != b]
    assert [line.split("#")[0].strip() for line in changed_lines] == ["stride: 128", "epochs: 6"]
    assert load_params(path).train.epochs == 2
    _, changed_again = apply_overrides(path, {"train": {"epochs": 2}})
    assert not changed_again
    with pytest.raises(UserError, match="unknown key"):
        apply_overrides(path, {"train": {"epoks": 2}})
    assert load_params(path).train.epochs == 2  # a rejected override leaves the file as it was
