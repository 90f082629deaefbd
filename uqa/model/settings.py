"""The inference settings file, `uqa_inference.json`: the windowing and answer search a model was
trained and evaluated with, travelling with the model so that `uqa predict` answers as evaluate scored.

- the train stage writes it into models/final (`write_model_settings`): `max_seq_length` (the number
  the tokenize stage resolved, never 'auto') and `stride`, the windowing the model was trained and
  evaluated with;
- the evaluate stage records what it applied (`n_best`, `max_answer_length`, `no_answer_threshold`,
  and the sha256 of the weights it scored) in metrics/eval.json under `inference`; it never writes
  into models/final (a DVC output of train);
- the register stage writes the merged file into each registry version (`registry_settings`).

`resolve_settings` (what `uqa.model.predict.Predictor(path)` uses) takes, for each setting: an explicit argument, else the model directory's
uqa_inference.json, else (for `<project>/models/final`) the project's metrics/eval.json when it
scored these very weights, else (the threshold only) a registry version's registration.json, else the
old defaults (512/128, n_best 20, max answer 30, no threshold) with a logged warning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.model.modeling import HARD_CAP
from uqa.ops.atomic import atomic_write_json
from uqa.ops.hashing import files_sha256
from uqa.ops.jsonfile import read_json
from uqa.params.schema import EvaluateParams, TokenizeParams

log = logging.getLogger(__name__)

INFERENCE_FILE = "uqa_inference.json"
EVAL_QUESTIONS_FILE = "eval_questions.jsonl"  # in a registry version: a sample of the questions it was evaluated on
WINDOW_KEYS = ("max_seq_length", "stride")  # written at training time
EVAL_KEYS = ("n_best", "max_answer_length", "no_answer_threshold")  # known after evaluate
# for a model without uqa_inference.json (made before it existed): the schema's defaults, with the
# length cap for max_seq_length (its default, auto, is resolved from the data, which we do not have here)
DEFAULTS: dict[str, Any] = {"max_seq_length": HARD_CAP, "stride": TokenizeParams().stride,
                            "n_best": EvaluateParams().n_best, "max_answer_length": EvaluateParams().max_answer_length,
                            "no_answer_threshold": None}
TOKENIZE_REPORT = layout.report("tokenize")


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over the *.safetensors files in name order: what evaluate records and register checks."""
    return files_sha256(sorted(Path(model_dir).glob("*.safetensors")))


def window_settings(params, data_dir: Path = layout.TOKENIZED_DIR,
                    report: Path = TOKENIZE_REPORT) -> dict[str, int]:
    """The windowing the tokenize stage used: its report's resolved max_seq_length and stride;
    without the report, a numeric tokenize.max_seq_length or (auto) the longest window in the data."""
    rep = read_json(Path(report))
    max_len, stride = rep.get("max_seq_length"), rep.get("stride")
    if not isinstance(max_len, int) or isinstance(max_len, bool):
        max_len = params.tokenize.max_seq_length
        if max_len == "auto":  # auto = the longest pair (capped): some window is exactly that long
            import datasets
            import pyarrow.compute as pc

            max_len = max(
                int(pc.max(pc.list_value_length(datasets.load_from_disk(str(Path(data_dir) / s)).data.table
                                                .column("input_ids"))).as_py() or 0)
                for s in layout.SPLITS)
    if not isinstance(stride, int) or isinstance(stride, bool):
        stride = params.tokenize.stride
    return {"max_seq_length": int(max_len), "stride": int(stride)}


def write_model_settings(model_dir: str | Path, params, data_dir: Path = layout.TOKENIZED_DIR,
                         report: Path = TOKENIZE_REPORT) -> dict[str, Any]:
    """models/final/uqa_inference.json, written by the train stage next to the weights."""
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
    settings = read_json(model_dir / INFERENCE_FILE)
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
    settings["note"] = "the settings this model was evaluated with; uqa predict and uqa.model.predict.Predictor use them"
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
    own = read_json(model_dir / INFERENCE_FILE, missing=None)
    if own is not None:
        take(own, DEFAULTS, str(model_dir / INFERENCE_FILE))
    missing = [k for k in DEFAULTS if k not in settings]
    eval_path = _project_eval(model_dir) if missing else None
    if eval_path is not None:
        record = read_json(eval_path).get("inference")
        if isinstance(record, dict) and record.get("weights_sha256") == weights_sha256(model_dir):
            take(record, missing, str(eval_path))
        else:
            log.warning("%s did not score the weights in %s (retrained since? run `dvc repro evaluate`): "
                        "its inference settings are not used", eval_path, model_dir)
    if "no_answer_threshold" not in settings:
        registration = read_json(model_dir / layout.REGISTRATION_FILE)
        metrics = registration.get("metrics") if isinstance(registration.get("metrics"), dict) else {}
        if "no_answer_threshold" in metrics:  # a version registered before uqa_inference.json existed
            settings["no_answer_threshold"] = metrics["no_answer_threshold"]
            source["no_answer_threshold"] = str(model_dir / layout.REGISTRATION_FILE)
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


def inference_record(params, model_dir: Path, threshold: float | None,
                     features_dir: Path = layout.VALIDATION_FEATURES) -> dict[str, Any]:
    """What evaluate applied (metrics/eval.json `inference`), for `uqa predict` on models/final and
    for the register stage."""
    own = read_json(Path(model_dir) / INFERENCE_FILE, missing=None)
    if own is None or not all(isinstance(own.get(k), int) for k in WINDOW_KEYS):
        log.warning("evaluate: %s has no %s with the windowing (a model not saved by the train stage): "
                    "taking it from %s", model_dir, INFERENCE_FILE, TOKENIZE_REPORT)
        own = window_settings(params, Path(features_dir).parent, TOKENIZE_REPORT)
    return {
        "max_seq_length": own["max_seq_length"],
        "stride": own["stride"],
        "n_best": params.evaluate.n_best,
        "max_answer_length": params.evaluate.max_answer_length,
        "no_answer_threshold": threshold,
        "weights_sha256": weights_sha256(model_dir),
    }
