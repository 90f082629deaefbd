"""Answer questions with a trained model: same windows, same span search and the same no-answer
threshold as the evaluation that scored it.

Inference settings travel with the model in `uqa_inference.json`:

- the train stage writes it into models/final (`write_model_settings`): `max_seq_length` (the number
  the tokenize stage resolved, never 'auto') and `stride`, the windowing the model was trained and
  evaluated with;
- the evaluate stage records what it applied (`n_best`, `max_answer_length`, `no_answer_threshold`,
  and the sha256 of the weights it scored) in metrics/eval.json under `inference`; it never writes
  into models/final (a DVC output of train);
- the register stage writes the merged file into each registry version (`registry_settings`).

`Predictor(path)` reads, for each setting: an explicit argument, else the model directory's
uqa_inference.json, else (for `<project>/models/final`) the project's metrics/eval.json when it
scored these very weights, else (the threshold only) a registry version's registration.json, else the
old defaults (512/128, n_best 20, max answer 30, no threshold) with a logged warning."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uqa import layout
from uqa.errors import UserError
from uqa.modeling import HARD_CAP
from uqa.params import EvaluateParams, TokenizeParams

log = logging.getLogger(__name__)

INFERENCE_FILE = "uqa_inference.json"
WINDOW_KEYS = ("max_seq_length", "stride")  # written at training time
EVAL_KEYS = ("n_best", "max_answer_length", "no_answer_threshold")  # known after evaluate
# for a model without uqa_inference.json (made before it existed): the schema's defaults, with the
# length cap for max_seq_length (its default, auto, is resolved from the data, which we do not have here)
DEFAULTS: dict[str, Any] = {"max_seq_length": HARD_CAP, "stride": TokenizeParams().stride,
                            "n_best": EvaluateParams().n_best, "max_answer_length": EvaluateParams().max_answer_length,
                            "no_answer_threshold": None}


@dataclass
class Answer:
    answer: str  # "" = no answer (SQuAD2-trained models only)
    start: int  # character offsets in the context (-1 for no answer)
    end: int
    score: float  # probability of the span within its window
    no_answer: bool = False
    margin: float = float("nan")  # null score - best span score (SQuAD2 models: what a threshold is applied to)

    def to_dict(self) -> dict:
        return {"answer": self.answer, "start": self.start, "end": self.end, "score": round(self.score, 6),
                "no_answer": self.no_answer}


# ---- settings files ---------------------------------------------------------------------------------


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over the *.safetensors files in name order: what evaluate records and register checks."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file; None when the file is not there (or holds no object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    return data if isinstance(data, dict) else None


TOKENIZE_REPORT = layout.report("tokenize")

def window_settings(params, data_dir: Path = layout.TOKENIZED_DIR,
                    report: Path = TOKENIZE_REPORT) -> dict[str, int]:
    """The windowing the tokenize stage used: its report's resolved max_seq_length and stride;
    without the report, a numeric tokenize.max_seq_length or (auto) the longest window in the data."""
    rep = read_json_file(Path(report)) or {}
    max_len, stride = rep.get("max_seq_length"), rep.get("stride")
    if not isinstance(max_len, int) or isinstance(max_len, bool):
        max_len = params.tokenize.max_seq_length
        if max_len == "auto":  # auto = the longest pair (capped): some window is exactly that long
            import datasets
            import pyarrow.compute as pc

            max_len = max(
                int(pc.max(pc.list_value_length(datasets.load_from_disk(str(Path(data_dir) / s)).data.table
                                                .column("input_ids"))).as_py() or 0)
                for s in ("train", "validation"))
    if not isinstance(stride, int) or isinstance(stride, bool):
        stride = params.tokenize.stride
    return {"max_seq_length": int(max_len), "stride": int(stride)}


def write_model_settings(model_dir: str | Path, params, data_dir: Path = layout.TOKENIZED_DIR,
                         report: Path = TOKENIZE_REPORT) -> dict[str, Any]:
    """models/final/uqa_inference.json, written by the train stage next to the weights."""
    from uqa.atomic import atomic_write_json

    settings: dict[str, Any] = {
        **window_settings(params, data_dir, report),
        "squad2": bool(params.data.keep_unanswerable),
        "checkpoint_selected_by": params.train.metric_for_best_model,
        "note": ("max_seq_length and stride: the windows the model was trained and evaluated on (train stage). "
                 "n_best, max_answer_length and no_answer_threshold are known after evaluation: "
                 "metrics/eval.json (inference) has them, and a registry version's copy of this file too."),
    }
    atomic_write_json(Path(model_dir) / INFERENCE_FILE, settings)
    return settings


def registry_settings(model_dir: str | Path, metrics: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    """uqa_inference.json for a registry version: models/final's (windowing) + what evaluate applied.

    `metrics` is metrics/eval.json, `digest` the weights' sha256 (computed when not given). What
    evaluate applied is merged only when metrics/eval.json scored these very weights (its
    `inference.weights_sha256`); otherwise it is left out, with a warning, and `Predictor` falls back."""
    model_dir = Path(model_dir)
    settings = read_json_file(model_dir / INFERENCE_FILE) or {}
    settings.pop("note", None)
    inference = metrics.get("inference") if isinstance(metrics.get("inference"), dict) else {}
    digest = digest or weights_sha256(model_dir)
    if inference.get("weights_sha256") == digest:
        for key in WINDOW_KEYS:
            if settings.get(key) is None and inference.get(key) is not None:
                settings[key] = inference[key]
        for key in EVAL_KEYS:
            settings[key] = inference.get(key)
    else:
        log.warning("metrics/eval.json has no inference settings for the weights in %s (rerun the evaluate "
                    "stage): the registered uqa_inference.json has the windowing only", model_dir)
    settings["weights_sha256"] = digest
    settings["note"] = "the settings this model was evaluated with; uqa predict and uqa.predict.Predictor use them"
    return settings


def _project_eval(model_dir: Path) -> Path | None:
    """metrics/eval.json of the project whose models/final this is."""
    if model_dir.parts[-len(layout.MODEL_DIR.parts):] == layout.MODEL_DIR.parts:
        path = model_dir.parents[len(layout.MODEL_DIR.parts) - 1] / layout.METRICS_FILE
        return path if path.exists() else None
    return None


def resolve_settings(model_dir: str | Path, explicit: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(settings, where each came from) for a model directory; see the module docs for the order."""
    model_dir = Path(model_dir)
    settings: dict[str, Any] = {}
    source: dict[str, str] = {}

    def take(values: dict[str, Any], keys, where: str) -> None:
        for key in keys:
            if key not in settings and key in values:
                settings[key], source[key] = values[key], where

    take({k: v for k, v in (explicit or {}).items() if v is not None}, DEFAULTS, "given")
    own = read_json_file(model_dir / INFERENCE_FILE)
    if own is not None:
        take(own, DEFAULTS, str(model_dir / INFERENCE_FILE))
    missing = [k for k in DEFAULTS if k not in settings]
    eval_path = _project_eval(model_dir) if missing else None
    if eval_path is not None:
        record = (read_json_file(eval_path) or {}).get("inference")
        if isinstance(record, dict) and record.get("weights_sha256") == weights_sha256(model_dir):
            take(record, missing, str(eval_path))
        else:
            log.warning("%s did not score the weights in %s (retrained since? run `dvc repro evaluate`): "
                        "its inference settings are not used", eval_path, model_dir)
    if "no_answer_threshold" not in settings:
        registration = read_json_file(model_dir / "registration.json") or {}
        metrics = registration.get("metrics") if isinstance(registration.get("metrics"), dict) else {}
        if "no_answer_threshold" in metrics:  # a version registered before uqa_inference.json existed
            settings["no_answer_threshold"] = metrics["no_answer_threshold"]
            source["no_answer_threshold"] = str(model_dir / "registration.json")
    if own is None:
        log.warning("%s has no %s (not written by this pipeline's train stage): windowing with the defaults "
                    "(max_seq_length %d, stride %d), which may differ from how the model was trained",
                    model_dir, INFERENCE_FILE, DEFAULTS["max_seq_length"], DEFAULTS["stride"])
    fallback = [k for k in DEFAULTS if k not in settings]
    take(DEFAULTS, DEFAULTS, "default")
    if (own or {}).get("squad2") and "no_answer_threshold" in fallback:
        log.warning("%s was trained to say 'no answer' (SQuAD2 mode), but no no-answer threshold was found "
                    "(run the evaluate stage, or pass --no-answer-threshold): every question gets an answer",
                    model_dir)
    return settings, source


# ---- the predictor ------------------------------------------------------------------------------------


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Predictor:
    """`Predictor(model_dir)(questions, contexts)` -> one Answer per question.

    Settings given here (not None) override the model's uqa_inference.json (see the module docs)."""

    def __init__(self, model_dir: str | Path, max_seq_length: int | None = None, stride: int | None = None,
                 n_best: int | None = None, max_answer_length: int | None = None,
                 no_answer_threshold: float | None = None, batch_size: int = 32, device: str | None = None):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        from uqa.inference import pick_device

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise UserError(f"{model_dir}: not a model directory (no config.json)")
        self.settings, self.sources = resolve_settings(model_dir, {
            "max_seq_length": max_seq_length, "stride": stride, "n_best": n_best,
            "max_answer_length": max_answer_length, "no_answer_threshold": no_answer_threshold})
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tokenizer.is_fast:
            raise UserError(f"{model_dir}: the tokenizer is not a fast tokenizer; offsets are needed")
        self.device = pick_device(device)
        self.model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir)).to(self.device)
        from uqa.modeling import HARD_CAP, position_limit

        s = self.settings
        for key in ("max_seq_length", "stride", "n_best", "max_answer_length"):
            value = s[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "stride" else 1):
                raise UserError(f"{key} {value!r} (from {self.sources[key]}) is not a valid number")
        self.max_seq_length = min(int(s["max_seq_length"]), position_limit(self.model.config), HARD_CAP)
        self.stride = int(s["stride"])
        if self.sources["stride"] == "default":  # the old behaviour, for a model without settings
            self.stride = min(self.stride, self.max_seq_length // 4)
        self.n_best, self.max_answer_length, self.batch_size = int(s["n_best"]), int(s["max_answer_length"]), batch_size
        threshold = s["no_answer_threshold"]
        if threshold is not None and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)):
            raise UserError(f"no_answer_threshold {threshold!r} (from {self.sources['no_answer_threshold']}) "
                            "is not a number")
        self.no_answer_threshold = None if threshold is None else float(threshold)  # None: always answer

    def describe(self) -> str:
        """The settings in use (after the model's position limit) and the files they came from."""
        threshold = "none (always answer)" if self.no_answer_threshold is None else f"{self.no_answer_threshold:.6g}"
        return (f"max_seq_length {self.max_seq_length}, stride {self.stride}, n_best {self.n_best}, "
                f"max_answer_length {self.max_answer_length}, no_answer_threshold {threshold} "
                f"(from {', '.join(sorted(set(self.sources.values())))})")

    def __call__(self, questions: list[str], contexts: list[str], ids: list | None = None,
                 where: str | None = None) -> list[Answer]:
        """`ids` and `where` (e.g. the input file) only name rows in error messages."""
        from uqa.features import encode_pairs

        if len(questions) != len(contexts):
            raise UserError("as many questions as contexts are needed")
        for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
            if not q or not q.strip():
                raise UserError(f"row {i}: question is empty")
            if not c or not c.strip():
                raise UserError(f"row {i}: context is empty")
        questions = [q.strip() for q in questions]
        with_types = "token_type_ids" in self.tokenizer.model_input_names
        encoded = encode_pairs(self.tokenizer.backend_tokenizer, questions, contexts, with_types)
        q_len = encoded.questions.lengths
        c_len = encoded.contexts.lengths[encoded.context_of]
        budget = self.max_seq_length - q_len - encoded.template.n_special  # context tokens per window
        self._check_question_lengths(questions, q_len, budget, encoded.template.n_special, ids, where)
        # a question that leaves no more context tokens per window than the stride (the windows could
        # not advance): this row alone gets a smaller stride, every other row the model's own
        narrow = (c_len > budget) & (budget <= self.stride)
        strides = np.where(narrow, budget // 2, self.stride)
        if narrow.any():
            log.warning("%d question(s) leave %d or fewer context tokens per window (max_seq_length %d), not "
                        "more than the stride %d: their windows overlap by half a window instead",
                        int(narrow.sum()), int(budget[narrow].max()), self.max_seq_length, self.stride)
        answers: list[Answer | None] = [None] * len(questions)
        for stride in np.unique(strides).tolist():
            rows = np.flatnonzero(strides == stride)
            if len(rows) == len(questions):
                windows = encoded.windows(self.max_seq_length, int(stride))
            else:
                sub = encode_pairs(self.tokenizer.backend_tokenizer, [questions[i] for i in rows],
                                   [contexts[i] for i in rows], with_types)
                windows = sub.windows(self.max_seq_length, int(stride))
            for i, answer in zip(rows.tolist(), self._answer(windows, [contexts[i] for i in rows]), strict=True):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _check_question_lengths(self, questions, q_len, budget, n_special, ids, where) -> None:
        bad = np.flatnonzero(budget < 1)
        if not len(bad):
            return
        i = int(bad[0])
        fits = self.max_seq_length - n_special - 1
        limit = (f"max_seq_length {self.max_seq_length} (from {self.sources['max_seq_length']}) leaves room for "
                 f"at most {fits} question tokens next to a context")
        if len(questions) == 1 and ids is None:
            raise UserError(f"the question ({_short(questions[0])!r}) is {int(q_len[0])} tokens long; {limit}: "
                            "shorten the question")
        name = f"row {i}" + (f" (id {ids[i]!r})" if ids is not None else "")
        more = f"; {len(bad) - 1} more row(s) too: {', '.join(map(str, bad[1:6].tolist()))}" if len(bad) > 1 else ""
        raise UserError(f"{where + ': ' if where else ''}{name}: the question ({_short(questions[i])!r}) is "
                        f"{int(q_len[i])} tokens long; {limit}: shorten it{more}")

    def _answer(self, windows, contexts: list[str]) -> list[Answer]:
        from uqa.inference import spans_for_windows, window_logits
        from uqa.postprocess import no_answer_margin

        logits = window_logits(self.model, windows, self.tokenizer.pad_token_id, self.batch_size, "auto", self.device)
        spans = spans_for_windows(logits, windows, self.n_best, self.max_answer_length)
        margins = no_answer_margin(spans)
        texts = spans.texts(contexts)
        answers = []
        for i in range(len(contexts)):
            j = int(np.searchsorted(spans.example, i))
            null = self.no_answer_threshold is not None and margins[j] > self.no_answer_threshold
            if null or spans.char_start[j] < 0:
                answers.append(Answer("", -1, -1, float(spans.probability[j]), no_answer=True,
                                      margin=float(margins[j])))
            else:
                answers.append(Answer(texts[j], int(spans.char_start[j]), int(spans.char_end[j]),
                                      float(spans.probability[j]), margin=float(margins[j])))
        return answers


def read_batch(path: Path) -> list[dict]:
    """Rows with `question` and `context` (and optionally `id`) from .jsonl/.json/.parquet/.csv."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            raise UserError(f"{path}: use a .jsonl, .json, .parquet or .csv file")
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: could not be read: {exc}") from None
    for column in ("question", "context"):
        if column not in frame.columns:
            raise UserError(f"{path}: missing column '{column}' (found: {', '.join(map(str, frame.columns))})")
    rows = frame.to_dict("records")
    for i, row in enumerate(rows):
        for column in ("question", "context"):
            value = row[column]
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{path}: row {i}: field '{column}' is empty or not text")
    return rows
