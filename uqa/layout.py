"""Where everything lives in a project: every path a stage reads or writes, named once.

The stage modules (tasks/), the flows, predict and the registry use these names; dvc.yaml declares
the same paths as the stages' deps and outs, and tests/test_dvc_yaml.py checks that the two agree in
both directions (every path dvc.yaml names is one of these, and every one of these is in dvc.yaml)."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "validation")

SOURCE_FINGERPRINT = Path("data/source.json")  # source: what data.source resolved to
RAW_DIR = Path("data/raw")  # download: one Arrow dataset per split
FILTERED_DIR = Path("data/filtered")  # filter
TOKENIZED_DIR = Path("data/tokenized")  # tokenize: features per split ...
TOKENIZER_DIR = TOKENIZED_DIR / "tokenizer"  # ... and the tokenizer they were made with
VALIDATION_FEATURES = TOKENIZED_DIR / "validation"  # the windows train scores each epoch and evaluate predicts
MODEL_DIR = Path("models/final")  # train: the model evaluate, register and predict use
CHECKPOINT_DIR = Path("models/checkpoints")  # train's scratch for resuming: deliberately not a DVC output
LIVE_DIR = Path("dvclive")  # train's curves (dvc plots)
TRAIN_LOG = Path("reports/train.log")
METRICS_FILE = Path("metrics/eval.json")  # evaluate: the headline numbers and the inference settings
PREDICTIONS = Path("reports/predictions.parquet")
ERRORS = Path("reports/errors.md")
REGISTRY_DIR = Path("registry")  # register: every registered version
REGISTRATION_FILE = "registration.json"  # in each version's directory: its record (metrics, promotion, lineage)
VALIDATION_EXAMPLES = FILTERED_DIR / "validation"  # what evaluate scores, prod is re-scored on, register samples


def report(stage: str) -> Path:
    """reports/<stage>.json: what a stage did (counts, timings, decisions)."""
    return Path("reports") / f"{stage}.json"


def split_dirs(base: Path) -> list[Path]:
    return [base / split for split in SPLITS]
