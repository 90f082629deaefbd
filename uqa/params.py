"""params.yaml: one section per stage, read into typed, validated dataclasses.

The same file drives `dvc repro` (which records it in dvc.lock) and the Prefect flow (which writes
its overrides into it first, as `dvc exp run -S` does, so that dvc.lock records what really ran)."""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uqa.atomic import atomic_write_text
from uqa.errors import UserError

if TYPE_CHECKING:
    from ruamel.yaml import YAML

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class DataParams:
    source: str | dict[str, Any] = "uqa/UQA"  # hub id, local dataset dir, or {split: file(s)}
    revision: str | None = None
    keep_unanswerable: bool = False


@dataclass(frozen=True)
class ModelParams:
    name: str = "xlm-roberta-base"
    tokenizer: str | None = None  # None = model.name (or, with init=scratch, a tokenizer trained on train)
    init: str = "pretrained"  # pretrained | scratch
    config: dict[str, Any] | None = None  # transformers config for init=scratch
    trust_remote_code: bool = False

    @property
    def tokenizer_source(self) -> str | None:
        if self.tokenizer:
            return self.tokenizer
        return None if self.init == "scratch" else self.name


@dataclass(frozen=True)
class TokenizeParams:
    max_seq_length: int | str = "auto"
    stride: int = 128
    vocab_size: int = 8000  # only used when a tokenizer is trained (init=scratch, no model.tokenizer)


@dataclass(frozen=True)
class LauncherParams:
    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    config_file: str | None = None  # an `accelerate config` file; overrides nothing else given here
    extra_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrainParams:
    learning_rate: float = 2.0e-5
    epochs: float = 6
    train_batch_size: int = 8
    eval_batch_size: int = 8
    gradient_accumulation_steps: int = 8
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    seed: int = 42
    max_steps: int = -1  # > 0 stops early (smoke runs); -1 = epochs decide
    group_by_length: bool = True
    pad_to_multiple_of: int = 8
    attn_implementation: str | None = "sdpa"
    torch_compile: bool = False
    metric_for_best_model: str = "eval_loss"
    save_total_limit: int = 2
    logging_steps: int = 50
    dataloader_num_workers: int = 0
    timeout_minutes: float | None = None  # kills the training process when exceeded
    launcher: LauncherParams = field(default_factory=LauncherParams)


@dataclass(frozen=True)
class EvaluateParams:
    n_best: int = 20
    max_answer_length: int = 30
    no_answer_threshold: float | str = "best"  # SQuAD2 mode: a number, or best = tuned on validation


@dataclass(frozen=True)
class RegisterParams:
    name: str = "uqa-qa"
    min_f1: float = 0.0
    push_to_hub: bool = False
    hub_repo_id: str | None = None


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping, got {type(raw).__name__} ({raw!r})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in raw.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _check(p: Params, where: str) -> None:
    def bad(key: str, msg: str) -> UserError:
        return UserError(f"{where}: {key} {msg}")

    if p.model.init not in ("pretrained", "scratch"):
        raise bad("model.init", f"must be 'pretrained' or 'scratch', got {p.model.init!r}")
    if p.model.init == "scratch" and not p.model.config:
        raise bad("model.config", "is required with model.init: scratch (e.g. {model_type: xlm-roberta, hidden_size: 64, ...})")
    if p.model.config is not None and "model_type" not in p.model.config:
        raise bad("model.config", "needs a model_type (e.g. xlm-roberta or bert)")
    msl = p.tokenize.max_seq_length
    if not (msl == "auto" or (isinstance(msl, int) and not isinstance(msl, bool) and msl >= 32)):
        raise bad("tokenize.max_seq_length", f"must be 'auto' or an integer >= 32, got {msl!r}")
    if not isinstance(p.tokenize.stride, int) or p.tokenize.stride < 0:
        raise bad("tokenize.stride", f"must be a non-negative integer, got {p.tokenize.stride!r}")
    if p.train.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise bad("train.precision", f"must be auto, bf16, fp16 or fp32, got {p.train.precision!r}")
    for key in ("train_batch_size", "eval_batch_size", "gradient_accumulation_steps"):
        v = getattr(p.train, key)
        if not isinstance(v, int) or v < 1:
            raise bad(f"train.{key}", f"must be a positive integer, got {v!r}")
    if p.train.launcher.num_processes < 1:
        raise bad("train.launcher.num_processes", "must be >= 1")
    if p.evaluate.n_best < 1 or p.evaluate.max_answer_length < 1:
        raise bad("evaluate", "n_best and max_answer_length must be >= 1")
    t = p.evaluate.no_answer_threshold
    if not (t == "best" or (isinstance(t, (int, float)) and not isinstance(t, bool))):
        raise bad("evaluate.no_answer_threshold", f"must be 'best' or a number, got {t!r}")


def params_from_dict(raw: dict[str, Any] | None, where: str = PARAMS_FILE) -> Params:
    p = _build(Params, raw or {}, where)
    _check(p, where)
    return p


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
    return params_from_dict(_plain(read_raw(path)), str(path))


def _plain(obj: Any) -> Any:
    """ruamel's CommentedMap/Seq -> dict/list (dataclasses and hashing want plain types)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
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


def apply_overrides(path: str | Path, overrides: list[str] | dict[str, Any] | None) -> tuple[Params, bool]:
    """Validate params.yaml with overrides applied; write it back (comments kept) if it changed.

    Returns the effective params and whether the file changed."""
    path = Path(path)
    raw = read_raw(path)
    nested = overrides_to_nested(overrides)
    if not nested:
        return params_from_dict(_plain(raw), str(path)), False
    merged = deep_merge(raw, nested)
    params = params_from_dict(_plain(merged), f"{path} (with overrides)")
    if _plain(merged) == _plain(raw):
        return params, False
    buf = io.StringIO()
    _yaml().dump(merged, buf)
    atomic_write_text(path, buf.getvalue())
    return params, True
