"""params.yaml: the public names, validation with clear errors, overrides written back with comments kept."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import REPO
from pydantic import TypeAdapter

from uqa.errors import UserError
from uqa.params.files import apply_overrides, load_params
from uqa.params.overrides import overrides_to_nested
from uqa.params.schema import Params, section_models
from uqa.params.validation import params_from_dict


def test_shipped_params_are_the_seed_recipe():
    p = load_params(REPO / "params.yaml")
    assert (p.data.source, p.data.revision, p.data.keep_unanswerable) == ("uqa/UQA", None, False)
    assert (p.model.name, p.model.tokenizer, p.model.init) == ("xlm-roberta-base", None, "pretrained")
    assert (p.tokenize.max_seq_length, p.tokenize.stride) == ("auto", 128)
    t = p.train
    assert (t.learning_rate, t.epochs, t.train_batch_size, t.eval_batch_size) == (2e-5, 6, 8, 8)
    assert (t.gradient_accumulation_steps, t.weight_decay, t.precision, t.seed) == (8, 0.01, "auto", 42)
    assert (p.evaluate.n_best, p.evaluate.max_answer_length) == (20, 30)
    assert t.metric_for_best_model == "f1"  # the seed chose by loss; every later decision is by F1
    assert (p.register.name, p.register.min_f1, p.register.push_to_hub) == ("uqa-qa", 0.0, False)
    assert p.model.trust_remote_code is False


def test_shipped_params_are_the_schema_defaults():
    """One definition of each default: the schema's (uqa/params/schema.py); params.yaml spells them out for
    the user and DVC, and predict falls back to them for a model without its settings."""
    from uqa.model.modeling import HARD_CAP
    from uqa.model.settings import DEFAULTS

    assert load_params(REPO / "params.yaml") == Params()
    d = Params()
    assert DEFAULTS == {"max_seq_length": HARD_CAP, "stride": d.tokenize.stride, "n_best": d.evaluate.n_best,
                        "max_answer_length": d.evaluate.max_answer_length, "no_answer_threshold": None}


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
        ({"train": {"metric_for_best_model": "accuracy"}}, "train.metric_for_best_model"),
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


# ---- the schema: strict types, one clear error per mistake --------------------------------------------

def _params_file(tmp_path, replace: dict[str, str]):
    """The project's params.yaml with some lines replaced (as a user would edit it)."""
    text = (REPO / "params.yaml").read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _assert_clear(message: str) -> None:
    for noise in ("Traceback", "pydantic", "errors.pydantic.dev", "Input should be", "validation error"):
        assert noise not in message


@pytest.mark.parametrize(
    ("line", "edited", "expected"),
    [
        ("learning_rate: 2.0e-5", "learning_rate: fast",
         "train.learning_rate: got 'fast' (a string); expected a number > 0"),
        ("num_processes: 1", 'num_processes: "2"',
         "train.launcher.num_processes: got '2' (a string); expected an integer >= 1 (remove the quotes)"),
        ("min_f1: 0.0 ", 'min_f1: "80" ',
         "register.min_f1: got '80' (a string); expected a number from 0 to 100 (remove the quotes)"),
        ("timeout_minutes: null", 'timeout_minutes: "30"',
         "train.timeout_minutes: got '30' (a string); expected a number > 0 or null (remove the quotes)"),
        ("push_to_hub: false", 'push_to_hub: "false"',
         "register.push_to_hub: got 'false' (a string); expected true or false (remove the quotes)"),
    ],
)
def test_a_mistyped_value_is_one_clear_error(tmp_path, line, edited, expected):
    path = _params_file(tmp_path, {line: edited})
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert message == f"{path}: {expected}"  # file, dotted key, the value as written, what is expected
    _assert_clear(message)
    # the same through apply_overrides (what the flow and `uqa run -S` do), and the file is left as it was
    before = path.read_text()
    with pytest.raises(UserError, match="expected"):
        apply_overrides(path, {"train": {"epochs": 1}})
    assert path.read_text() == before


def test_several_mistakes_are_one_error_one_line_each():
    with pytest.raises(UserError) as info:
        params_from_dict({"train": {"epochs": "3", "precision": "fp8", "launcher": {"num_procs": 2}},
                          "register": {"push_to_hub": "yes"}}, "params.yaml")
    lines = str(info.value).splitlines()
    assert lines == [
        "params.yaml: train.launcher: unknown key(s) num_procs (did you mean num_processes?); valid keys are "
        "num_processes, num_machines, machine_rank, main_process_ip, main_process_port, config_file, "
        "extra_args",
        "params.yaml: train.epochs: got '3' (a string); expected a number > 0 (remove the quotes)",
        "params.yaml: train.precision: got 'fp8' (a string); expected one of auto, bf16, fp16, fp32",
        "params.yaml: register.push_to_hub: got 'yes' (a string); expected true or false",
    ]
    _assert_clear(str(info.value))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"train_batch_size": True}},
         "train.train_batch_size: got true (a boolean); expected an integer >= 1"),
        ({"train": {"train_batch_size": 8.0}},
         "train.train_batch_size: got 8.0 (a number); expected an integer >= 1"),
        ({"tokenize": {"max_seq_length": "256"}},
         "tokenize.max_seq_length: got '256' (a string); expected auto or an integer >= 32 "
         "(remove the quotes)"),
        ({"tokenize": {"max_seq_length": 16}},
         "tokenize.max_seq_length: got 16 (an integer); expected auto or an integer >= 32"),
        ({"evaluate": {"no_answer_threshold": "0.5"}},
         "evaluate.no_answer_threshold: got '0.5' (a string); expected best or a number (remove the quotes)"),
        ({"model": {"init": "scratch"}}, "model.config: got null; expected a mapping with a model_type"),
        ({"model": {"config": {"hidden_size": 64}}},
         "model.config: got {'hidden_size': 64} (a mapping); expected a mapping with a model_type"),
        ({"data": {"revision": 20240101}},
         "data.revision: got 20240101 (an integer); expected a string or null (put it in quotes)"),
        ({"train": {"launcher": {"extra_args": ["--foo", 3]}}},
         "train.launcher.extra_args[1]: got 3 (an integer); expected a string"),
        ({"train": {"launcher": "two gpus"}},
         "train.launcher: got 'two gpus' (a string); expected a mapping"),
        (["train"], "got ['train'] (a list); expected a mapping"),
        ({"trian": {}}, "unknown key(s) trian (did you mean train?); valid keys are data, model, tokenize"),
    ],
)
def test_wrong_types_name_key_value_and_expectation(raw, message):
    with pytest.raises(UserError) as info:
        params_from_dict(raw, "p.yaml")
    assert str(info.value).startswith(f"p.yaml: {message}")
    assert "\n" not in str(info.value)
    _assert_clear(str(info.value))


def test_yaml_numbers_stay_valid():
    p = params_from_dict({
        "train": {"learning_rate": 3e-5, "epochs": 2, "weight_decay": 0, "timeout_minutes": 30,
                  "launcher": {"num_processes": 2, "main_process_port": 29500}},
        "tokenize": {"max_seq_length": 384},
        "evaluate": {"no_answer_threshold": 0},
        "register": {"min_f1": 80, "push_to_hub": True, "hub_repo_id": "me/uqa"},
        "model": None,  # an empty section = its defaults
    })
    assert (p.train.learning_rate, p.train.epochs, p.train.timeout_minutes) == (3e-5, 2, 30)
    assert isinstance(p.train.epochs, float) and isinstance(p.register.min_f1, float)
    assert p.train.launcher.num_processes == 2 and p.tokenize.max_seq_length == 384
    assert p.evaluate.no_answer_threshold == 0 and p.register.push_to_hub is True
    assert p.model == Params().model


def test_yaml_scalars_from_the_file_load_as_plain_values(tmp_path):
    path = _params_file(tmp_path, {"learning_rate: 2.0e-5": "learning_rate: 1e-5",  # YAML 1.2: a float
                                   "name: uqa-qa": 'name: "my-qa"',
                                   "attn_implementation: sdpa": "attn_implementation: 'eager'"})
    p = load_params(path)
    assert p.train.learning_rate == 1e-5 and type(p.train.learning_rate) is float
    assert p.register.name == "my-qa" and type(p.register.name) is str
    assert type(p.train.attn_implementation) is str


def test_unknown_keys_are_still_rejected(tmp_path):
    path = _params_file(tmp_path, {"    num_machines: 1": "    num_machines: 1\n    num_gpus: 2"})
    with pytest.raises(UserError, match=r"train\.launcher: unknown key\(s\) num_gpus; valid keys are num_"):
        load_params(path)
    with pytest.raises(UserError, match=r"^params.yaml: unknown key\(s\) stages; valid keys are data, model"):
        params_from_dict({"stages": {}})


def test_params_are_frozen_dataclasses():
    p = load_params(REPO / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.epochs = 1  # type: ignore[misc]
    assert dataclasses.asdict(p.train)["launcher"]["num_processes"] == 1  # run_fingerprint relies on asdict
    assert p.section("register") == {"name": "uqa-qa", "min_f1": 0.0, "push_to_hub": False,
                                     "hub_repo_id": None, "hub_private": True, "keep_last": None}
    assert p.model.tokenizer_source == "xlm-roberta-base"


def test_demo_params_laid_over_the_project_params_load(tmp_path):
    from uqa.workspace.demo import write_demo_params

    write_demo_params(tmp_path / "params.yaml")
    p = load_params(tmp_path / "params.yaml")
    assert p.model.init == "scratch" and p.model.config["model_type"] == "modernbert"
    assert p.model.tokenizer_source is None
    assert p.data.source == {"train": "demo-data/train.jsonl", "validation": "demo-data/validation.jsonl"}
    assert (p.train.learning_rate, p.train.epochs, p.train.group_by_length, p.register.min_f1) == (3e-3, 5, True, 50.0)
    assert p.train.weight_decay == 0.01  # what the demo does not set comes from the project's params.yaml


@pytest.mark.parametrize("demo", [False, True])
def test_to_dict_round_trips(tmp_path, demo):
    if demo:
        from uqa.workspace.demo import write_demo_params

        write_demo_params(tmp_path / "params.yaml")
        p = load_params(tmp_path / "params.yaml")
    else:
        p = load_params(REPO / "params.yaml")
    d = p.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(Params)]
    assert params_from_dict(d) == p
    assert params_from_dict(json.loads(json.dumps(d))) == p  # as the train worker gets it (its env)


def test_each_section_has_a_typed_json_schema():
    models = section_models()
    assert list(models) == ["data", "model", "tokenize", "train", "evaluate", "register"]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, cls in models.items():
        schema = TypeAdapter(cls).json_schema()
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["properties"]) == set(raw[name]), name
        for key, prop in schema["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"
            assert {"type", "anyOf", "enum", "const", "$ref"} & set(prop), f"{name}.{key} is untyped"
        json.dumps(schema)
    props = {name: TypeAdapter(cls).json_schema()["properties"] for name, cls in models.items()}
    assert props["train"]["learning_rate"]["type"] == "number"
    batch = props["train"]["train_batch_size"]
    assert (batch["type"], batch["minimum"]) == ("integer", 1)
    assert props["train"]["precision"]["enum"] == ["auto", "bf16", "fp16", "fp32"]
    assert props["register"]["push_to_hub"]["type"] == "boolean"
    assert props["register"]["min_f1"]["type"] == "number"
    assert props["model"]["init"]["enum"] == ["pretrained", "scratch"]
    assert props["tokenize"]["max_seq_length"]["anyOf"] == [{"const": "auto", "type": "string"},
                                                            {"minimum": 32, "type": "integer"}]
    assert props["evaluate"]["no_answer_threshold"]["anyOf"] == [{"const": "best", "type": "string"},
                                                                 {"type": "number"}]
    assert "shortest length" in props["tokenize"]["max_seq_length"]["description"]  # params.yaml's comment
    launcher = TypeAdapter(models["train"]).json_schema()["$defs"]["LauncherParams"]["properties"]
    assert (launcher["num_processes"]["type"], launcher["num_processes"]["minimum"]) == ("integer", 1)
