"""params.yaml: one section per stage, read into typed, validated, frozen dataclasses.

The same file drives `dvc repro` (which records it in dvc.lock) and the Prefect flow, which reads it as
it is: a flow run with overrides is a DVC experiment in a worktree of its own, whose copy of params.yaml
gets them (uqa/experiment.py); the project's params.yaml is never edited by a run.

Each section is a pydantic dataclass (still a `dataclasses` dataclass: `asdict` and `fields` work),
strict where YAML makes mistakes easy: a quoted number or boolean (`"2"`, `"false"`) is an error, not
coerced; YAML numbers, and integers where a float is expected, are fine. A mistake is one UserError
naming the file, the dotted key, the value as written and what is expected. `section_models()` gives
each section's class, for its JSON schema (`pydantic.TypeAdapter(cls).json_schema()`)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import io
import re
import warnings
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from uqa.atomic import atomic_write_text
from uqa.errors import UserError

if TYPE_CHECKING:
    from ruamel.yaml import YAML

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
    metric_for_best_model: Annotated[Str, _doc("the metric that picks the best checkpoint")] = "eval_loss"
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


# GTO's artifact name rule (gto.constants.name_re): the name is a directory under registry/ and part of git tags
GTO_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-/_]*[a-zA-Z0-9])?")


@dataclass(frozen=True, config=_CONFIG)
class RegisterParams:
    name: Annotated[Str, _doc("the registered model's name (GTO's rule: letters, digits, -, _ and /, starting and "
                              "ending with a letter or digit)", min_length=1)] = "uqa-qa"
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


@functools.cache
def _adapter() -> TypeAdapter[Params]:
    return TypeAdapter(Params)


@functools.cache
def _schema() -> dict[str, Any]:
    return _adapter().json_schema()


def params_from_dict(raw: dict[str, Any] | None, where: str = PARAMS_FILE) -> Params:
    raw = plain(raw) if raw is not None else {}
    try:
        return _adapter().validate_python(raw)
    except ValidationError as exc:
        raise UserError("\n".join(_messages(exc, raw, where))) from None


_MISSING = object()


def _messages(exc: ValidationError, raw: Any, where: str) -> list[str]:
    """One line per wrong key (a union's branches give several pydantic errors for one key)."""
    schema = _schema()
    unknown: dict[tuple, list[str]] = {}
    wrong: dict[tuple, str] = {}
    for err in exc.errors(include_url=False):
        path, node = _walk(schema, err["loc"])
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            key = str(err["loc"][len(path)])  # the first part of the location that is no known key
            if key not in unknown.setdefault(path, []):
                unknown[path].append(key)
            continue
        if err["type"] == _RULE:
            ctx = err.get("ctx") or {}
            key = (*path, ctx["key"])
            wrong.setdefault(key, _got(ctx["value"], ctx["expected"]))
            continue
        if path not in wrong:
            wrong[path] = _got(_lookup(raw, path), _expected(schema, node))
    lines = []
    for parent, keys in unknown.items():
        _, node = _walk(schema, parent)
        valid = list(_resolve(schema, node).get("properties", {}))
        shown = []
        for key in keys:
            close = difflib.get_close_matches(key, valid, n=1)
            shown.append(f"{key} (did you mean {close[0]}?)" if close else key)
        lines.append(f"{_prefix(where, parent)}unknown key(s) {', '.join(shown)}; "
                     f"valid keys are {', '.join(valid)}")
    lines += [f"{_prefix(where, path)}{text}" for path, text in wrong.items()]
    return lines


def _prefix(where: str, path: tuple) -> str:
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"{where}: {dotted}: " if dotted else f"{where}: "


def _walk(schema: dict[str, Any], loc: tuple) -> tuple[tuple, dict[str, Any]]:
    """The part of a pydantic error location that names keys (not union branches), and its schema."""
    path: list[Any] = []
    node = schema
    for part in loc:
        here = _resolve(schema, node)
        if isinstance(part, str) and part in here.get("properties", {}):
            node = here["properties"][part]
        elif isinstance(part, int) and here.get("type") == "array":
            node = here.get("items", {})
        else:
            break
        path.append(part)
    return tuple(path), node


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _lookup(raw: Any, path: tuple) -> Any:
    for part in path:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _expected(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = _resolve(schema, node)
    if "anyOf" in node:
        parts = [_expected(schema, n) for n in node["anyOf"]]
        parts = [p for p in parts if p != "null"] + (["null"] if "null" in parts else [])
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"
    if "const" in node:
        return str(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(str(v) for v in node["enum"])
    kind = node.get("type")
    if kind == "null":
        return "null"
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        values = node.get("additionalProperties")
        return f"a mapping of {_plural(_expected(schema, values))}" if isinstance(values, dict) and values \
            else "a mapping"
    if kind == "array":
        return f"a list of {_plural(_expected(schema, node.get('items', {})))}"
    if kind == "string":
        return "a non-empty string" if node.get("minLength") else "a string"
    noun = {"integer": "an integer", "number": "a number"}.get(kind, "a value")
    if "minimum" in node and "maximum" in node:
        return f"{noun} from {node['minimum']:g} to {node['maximum']:g}"
    ops = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
    bounds = [f"{op} {node[key]:g}" for key, op in ops if key in node]
    return " ".join([noun, *bounds])


def _plural(expected: str) -> str:
    """'a string or a list of strings' -> 'strings or lists of strings'."""
    return " or ".join(re.sub(r"^an? (\w+)", r"\1s", part) for part in expected.split(" or "))


def _got(value: Any, expected: str) -> str:
    if value is _MISSING:
        return f"expected {expected}"
    got = _show(value) if value is None else f"{_show(value)} ({_kind(value)})"
    text = f"got {got}; expected {expected}"
    if isinstance(value, str) and _looks_unquoted(value, expected):
        text += " (remove the quotes)"
    elif isinstance(value, (bool, int, float)) and "a string" in expected:
        text += " (put it in quotes)"
    return text


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    for cls, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                      (dict, "a mapping"), (list, "a list")):
        if isinstance(value, cls):
            return name
    return type(value).__name__


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _looks_unquoted(text: str, expected: str) -> bool:
    """A quoted value that, unquoted, would have been what the key expects."""
    text = text.strip()
    if "true or false" in expected and text.lower() in ("true", "false"):
        return True
    if "an integer" in expected and re.fullmatch(r"[-+]?\d+", text):
        return True
    return "a number" in expected and bool(_NUMBER.fullmatch(text))


# ---- the YAML file ---------------------------------------------------------------------------------


def _yaml() -> YAML:
    from ruamel.yaml import YAML  # imported when YAML is read or written: the dataclasses need no YAML

    y = YAML()  # round-trip: keeps the user's comments and order when overrides are written back
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    # write null as `null` (ruamel's default is an empty value): untouched lines stay as written
    y.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def read_raw(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (run from the project directory, or pass --params)")
    try:
        return _yaml().load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # ruamel's errors carry line/column
        raise UserError(f"{path}: not valid YAML: {exc}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    return params_from_dict(plain(read_raw(path)), str(path))


def plain(obj: Any) -> Any:
    """ruamel's CommentedMap/Seq and scalar subclasses (ScalarFloat, quoted strings, ...) -> plain types."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, bool) or type(obj).__name__ == "ScalarBoolean":  # ruamel's is an int subclass
        return bool(obj)
    for cls in (int, float, str):
        if isinstance(obj, cls):
            return cls(obj)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=1` -> (['train', 'epochs'], 1); the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=1")
    key, value = text.split("=", 1)
    from ruamel.yaml import YAML

    parsed = YAML(typ="safe").load(value) if value.strip() else None
    return key.strip().split("."), parsed


def overrides_to_nested(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Accepts ['a.b=1', ...] or {'a.b': 1} or {'a': {'b': 1}}; returns a nested dict."""
    nested: dict[str, Any] = {}
    if not overrides:
        return nested
    items: list[tuple[list[str], Any]]
    if isinstance(overrides, dict):
        items = [(str(k).split("."), v) for k, v in overrides.items()]
    else:
        items = [parse_override(o) for o in overrides]
    for keys, value in items:
        node = nested
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override {'.'.join(keys)}: {k} is not a section")
        if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
            node[keys[-1]] = deep_merge(node[keys[-1]], value)
        else:
            node[keys[-1]] = value
    return nested


def deep_merge(base: Any, update: dict[str, Any]) -> Any:
    """Merge `update` into a copy of `base` (sections merge; other values replace)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def params_with_overrides(path: str | Path, overrides: list[str] | dict[str, Any] | None) -> Params:
    """params.yaml with `overrides` laid over it, validated (the file is not written)."""
    path = Path(path)
    merged = deep_merge(plain(read_raw(path)), overrides_to_nested(overrides))
    return params_from_dict(merged, f"{path} (with overrides)")


def apply_overrides(path: str | Path, overrides: list[str] | dict[str, Any] | None) -> tuple[Params, bool]:
    """Validate params.yaml with overrides applied; write it back (comments kept) if it changed.

    Returns the effective params and whether the file changed."""
    path = Path(path)
    raw = read_raw(path)
    nested = overrides_to_nested(overrides)
    if not nested:
        return params_from_dict(plain(raw), str(path)), False
    merged = deep_merge(raw, nested)
    params = params_from_dict(plain(merged), f"{path} (with overrides)")
    if plain(merged) == plain(raw):
        return params, False
    buf = io.StringIO()
    _yaml().dump(merged, buf)
    atomic_write_text(path, buf.getvalue())
    return params, True


# ---- overrides, typed: the Prefect flow's `overrides` parameter -------------------------------------


def _partial_model(cls: type, name: str, path: str = "") -> type[BaseModel]:
    """A pydantic model of `cls` with every field optional and unset by default (a sparse override),
    keeping each field's type, bounds and description, and naming the default in the description."""
    fields: dict[str, Any] = {}
    for fname, info in cls.__pydantic_fields__.items():  # type: ignore[attr-defined]
        default = info.get_default(call_default_factory=True)
        if dataclasses.is_dataclass(default):
            annotation: Any = _partial_model(type(default), f"{name}{fname.title().replace('_', '')}",
                                             f"{path}{fname}.")
            described = info.description or fname
        else:
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            described = f"{info.description or fname} (default {default!r})"
            if f"{path}{fname}" in NOT_FROM_A_DEPLOYMENT_RUN:
                described += "; refused in a deployment run (set it in params.yaml)"
        fields[fname] = (annotation | None, Field(default=None, description=described))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


@functools.cache
def overrides_model() -> type[BaseModel]:
    """`{section: {key: value}}` with every section and key optional: what a run may override. The flow
    types its `overrides` parameter with it, so the Prefect UI's run form shows each section's fields,
    types, bounds and defaults, and rejects what the schema would reject."""
    sections = {
        name: (_partial_model(cls, f"{cls.__name__}Overrides", f"{name}.") | None, Field(default=None, description=(
            cls.__doc__ or name).strip().splitlines()[0]))
        for name, cls in section_models().items()
    }
    with warnings.catch_warnings():  # a field named `register` shadows ABCMeta.register: harmless here
        warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)
        return create_model("ParamsOverrides", __config__=ConfigDict(extra="forbid"), **sections)


# what a run started through the API (a deployment run: the UI's run form, `prefect deployment run`, an
# automation) may not override: each one lets its sender run code on the worker. params.yaml and a
# local `uqa run -S` (someone already at the machine) still can.
NOT_FROM_A_DEPLOYMENT_RUN = ("model.trust_remote_code", "train.launcher.extra_args", "train.launcher.config_file")


def refuse_unsafe_overrides(overrides: dict[str, Any] | list[str] | None, where: str = "this deployment run") -> None:
    """UserError when `overrides` (nested or dotted) set a key in NOT_FROM_A_DEPLOYMENT_RUN."""
    nested = overrides_to_nested(overrides)
    found = []
    for dotted in NOT_FROM_A_DEPLOYMENT_RUN:
        node: Any = nested
        for part in dotted.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            found.append(dotted)
    if found:
        raise UserError(f"{where}: overrides may not set {', '.join(found)} (it would let whoever can start a run "
                        "choose code to run on the worker); set it in params.yaml, or run `uqa run -S` on the machine")


def overrides_dict(overrides: Any) -> dict[str, Any]:
    """A typed overrides model (only what was set, explicit nulls included) or a mapping/list, nested."""
    if isinstance(overrides, BaseModel):
        return overrides.model_dump(exclude_unset=True)
    return overrides_to_nested(overrides)
