"""params.yaml's schema: one frozen, strict pydantic dataclass per stage section, every
default and bound in one place (params.yaml spells them out; tests/test_params.py checks).

Strict where YAML makes mistakes easy: a quoted number or boolean (`"2"`, `"false"`) is an
error, not coerced; YAML numbers, and integers where a float is expected, are fine.
`section_models()` gives each section's class, for its JSON schema."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

PARAMS_FILE = "params.yaml"

# strict scalars: YAML already typed the value, so "2" (a string) is not an integer, nor "false" a bool
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an int is still a valid float (epochs: 6)
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

_CONFIG = ConfigDict(extra="forbid")


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value  # `train:` with nothing under it = the defaults


_EMPTY_IF_NONE = BeforeValidator(_none_is_empty)


def _doc(description: str, **constraints: Any) -> Any:
    """A field's description (from the comments in params.yaml: it goes into the JSON schema) and bounds."""
    return Field(description=description, **constraints)


@dataclass(frozen=True, config=_CONFIG)
class DataParams:
    source: Annotated[
        Annotated[str, Strict(), Field(min_length=1)] | dict[Str, Str | list[Str]],
        _doc("hub dataset id, a local dataset directory, or {train: file(s), validation: file(s)}"),
    ] = "uqa/UQA"
    revision: Annotated[Str | None, _doc("hub revision to pin")] = None
    keep_unanswerable: Annotated[
        Bool, _doc("the seed drops is_impossible rows; true = SQuAD2-style training")] = False


@dataclass(frozen=True, config=_CONFIG)
class ModelParams:
    name: Annotated[Str, _doc("hub id or local directory with weights")] = "xlm-roberta-base"
    tokenizer: Annotated[Str | None, _doc(
        "hub id or local directory; null = same as model.name "
        "(with init: scratch, a tokenizer trained on the train split)")] = None
    init: Annotated[Literal["pretrained", "scratch"], _doc(
        "pretrained = load model.name; scratch = build from model.config (demo, tests)")] = "pretrained"
    config: Annotated[dict[Str, Any] | None, _doc(
        "transformers config for init: scratch, "
        "e.g. {model_type: xlm-roberta, hidden_size: 64, num_hidden_layers: 2, ...}")] = None
    trust_remote_code: Annotated[Bool, _doc("never on by default: it runs code from the model repo")] = False

    @model_validator(mode="after")
    def _rules(self) -> ModelParams:
        if self.init == "scratch" and not self.config:
            raise _rule("config", self.config,
                        "a mapping with a model_type, required with model.init: scratch "
                        "(e.g. {model_type: xlm-roberta, hidden_size: 64, ...})")
        if self.config is not None and "model_type" not in self.config:
            raise _rule("config", self.config, "a mapping with a model_type (e.g. xlm-roberta or bert)")
        return self

    @property
    def tokenizer_source(self) -> str | None:
        if self.tokenizer:
            return self.tokenizer
        return None if self.init == "scratch" else self.name


@dataclass(frozen=True, config=_CONFIG)
class TokenizeParams:
    max_seq_length: Annotated[Literal["auto"] | Annotated[Int, Field(ge=32)], _doc(
        "auto = shortest length that fits the longest question+context pair, capped at 512 and the "
        "model's limit; or a number of tokens (>= 32)")] = "auto"
    stride: Annotated[Int, _doc("tokens shared by consecutive windows of a long context", ge=0)] = 128
    vocab_size: Annotated[Int, _doc(
        "only when a tokenizer is trained (model.init: scratch and model.tokenizer: null)", ge=1)] = 8000
    num_proc: Annotated[Int, _doc(
        "processes that tokenize chunks of rows in parallel (1 = none); the output is the same for any value",
        ge=1)] = 1


@dataclass(frozen=True, config=_CONFIG)
class LauncherParams:
    num_processes: Annotated[Int, _doc("processes (GPUs) in all", ge=1)] = 1
    num_machines: Annotated[Int, _doc("machines in all", ge=1)] = 1
    machine_rank: Annotated[Int, _doc("this machine's rank (0 = the main one)", ge=0)] = 0
    main_process_ip: Annotated[Str | None, _doc("the main machine's address")] = None
    main_process_port: Annotated[
        Annotated[Int, Field(ge=1, le=65535)] | None, _doc("the main machine's port")] = None
    config_file: Annotated[Str | None, _doc(
        "an `accelerate config` file; overrides nothing else given here")] = None
    extra_args: Annotated[list[Str], _doc("more `accelerate launch` arguments")] = field(default_factory=list)


@dataclass(frozen=True, config=_CONFIG)
class TrainParams:
    learning_rate: Annotated[Float, _doc("peak learning rate", gt=0)] = 2.0e-5
    epochs: Annotated[Float, _doc("training epochs", gt=0)] = 6.0
    train_batch_size: Annotated[Int, _doc("per-device train batch size", ge=1)] = 8
    eval_batch_size: Annotated[Int, _doc("per-device eval batch size", ge=1)] = 8
    gradient_accumulation_steps: Annotated[Int, _doc("batches per optimizer step", ge=1)] = 8
    weight_decay: Annotated[Float, _doc("AdamW weight decay", ge=0)] = 0.01
    warmup_ratio: Annotated[Float, _doc("learning-rate warmup, a ratio of the optimizer steps", ge=0)] = 0.0
    precision: Annotated[Literal["auto", "bf16", "fp16", "fp32"], _doc(
        "auto = bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU")] = "auto"
    seed: Annotated[Int, _doc("random seed", ge=0)] = 42
    max_steps: Annotated[Int, _doc(
        "> 0 stops after that many optimizer steps (smoke runs); -1 = epochs decide")] = -1
    group_by_length: Annotated[Bool, _doc(
        "batches of similar length: far less padding (benchmarks/README.md)")] = True
    pad_to_multiple_of: Annotated[Int, _doc(
        "per-batch padding, rounded for tensor cores (0 = not rounded)", ge=0)] = 8
    attn_implementation: Annotated[Str | None, _doc(
        "transformers attention implementation (sdpa, eager, ...); null = the model's default")] = "sdpa"
    torch_compile: Annotated[Bool, _doc("compile the model with torch.compile")] = False
    metric_for_best_model: Annotated[Literal["f1", "exact", "loss", "eval_f1", "eval_exact", "eval_loss"], _doc(
        "the metric that picks the best checkpoint: f1/exact are scored every epoch on the validation "
        "questions by the evaluate stage's code")] = "f1"
    save_total_limit: Annotated[Int, _doc("checkpoints kept (the best one is always kept)", ge=1)] = 2
    logging_steps: Annotated[Int, _doc("optimizer steps between log lines", ge=1)] = 50
    dataloader_num_workers: Annotated[Int, _doc("data loader worker processes", ge=0)] = 0
    timeout_minutes: Annotated[Annotated[Float, Field(gt=0)] | None, _doc(
        "kill training after this long (null = no limit)")] = None
    launcher: Annotated[LauncherParams, _EMPTY_IF_NONE, _doc(
        "accelerate launch arguments: several GPUs / machines (README)")] = field(
        default_factory=LauncherParams)


@dataclass(frozen=True, config=_CONFIG)
class EvaluateParams:
    n_best: Annotated[Int, _doc("start and end candidates per window", ge=1)] = 20
    max_answer_length: Annotated[Int, _doc("the longest answer, in tokens", ge=1)] = 30
    no_answer_threshold: Annotated[Literal["best"] | Float, _doc(
        'SQuAD2 mode: null-minus-best-span margin above which "" is predicted; '
        "best = tuned for F1 on validation (on its tune part when tune_fraction > 0)")] = "best"
    tune_fraction: Annotated[Float, _doc(
        "SQuAD2 mode: the part of the validation question ids (a fixed split by a hash of the id) the "
        "no-answer threshold is tuned on; the metrics are reported on the rest. 0 = tune and report on "
        "all of validation (the reported F1 is then optimistic)", ge=0, lt=1)] = 0.0


DEFAULT_NAME = "uqa-qa"  # the registered model's name unless params.yaml says otherwise

# GTO's artifact name rule (gto.constants.name_re): the name is a directory under registry/ and part of git tags
GTO_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-/_]*[a-zA-Z0-9])?")


@dataclass(frozen=True, config=_CONFIG)
class RegisterParams:
    name: Annotated[Str, _doc("the registered model's name (GTO's rule: letters, digits, -, _ and /, starting and "
                              "ending with a letter or digit)", min_length=1)] = DEFAULT_NAME
    min_f1: Annotated[Float, _doc("promotion gate: the F1 (0-100) a model needs", ge=0, le=100)] = 0.0
    push_to_hub: Annotated[Bool, _doc("seed's push_to_hub; needs HF_TOKEN")] = False
    hub_repo_id: Annotated[Str | None, _doc("e.g. your-name/xlm-roberta-base-uqa")] = None
    hub_private: Annotated[Bool, _doc("create the Hub repo private (public only when you say so)")] = True
    keep_last: Annotated[Int | None, _doc(
        "retention: keep the files of the newest N versions (and any version in a stage) and the newest N "
        "DVC experiments; older ones are pruned (their records stay) and the DVC cache is collected. "
        "null = keep everything", ge=1)] = None

    @model_validator(mode="after")
    def _rules(self) -> RegisterParams:
        if not GTO_NAME.fullmatch(self.name):
            raise _rule("name", self.name, "a GTO artifact name: letters, digits, '-', '_' and '/', starting and "
                                           "ending with a letter or digit (e.g. uqa-qa)")
        return self


@dataclass(frozen=True, config=_CONFIG)
class Params:
    data: Annotated[DataParams, _EMPTY_IF_NONE, _doc("where the data comes from, which rows are kept")] = (
        field(default_factory=DataParams))
    model: Annotated[ModelParams, _EMPTY_IF_NONE, _doc("the model and its tokenizer")] = field(
        default_factory=ModelParams)
    tokenize: Annotated[TokenizeParams, _EMPTY_IF_NONE, _doc("question+context windows")] = field(
        default_factory=TokenizeParams)
    train: Annotated[TrainParams, _EMPTY_IF_NONE, _doc("the training recipe")] = field(
        default_factory=TrainParams)
    evaluate: Annotated[EvaluateParams, _EMPTY_IF_NONE, _doc("answer extraction and metrics")] = field(
        default_factory=EvaluateParams)
    register: Annotated[RegisterParams, _EMPTY_IF_NONE, _doc("the registry and its promotion gate")] = field(
        default_factory=RegisterParams)

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def section_models() -> dict[str, type]:
    """{section name: its class}; `pydantic.TypeAdapter(cls).json_schema()` is the section's JSON schema."""
    return {f.name: f.default_factory for f in dataclasses.fields(Params)}  # type: ignore[misc]


# ---- validation and its messages --------------------------------------------------------------------

_RULE = "uqa_rule"


def _rule(key: str, value: Any, expected: str) -> PydanticCustomError:
    """A rule across fields, reported on `key` of the section that checks it."""
    return PydanticCustomError(_RULE, "{expected}", {"key": key, "value": value, "expected": expected})
