"""Answer questions with a trained model: same windows and postprocessing as the evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uqa.errors import UserError


@dataclass
class Answer:
    answer: str  # "" = no answer (SQuAD2-trained models only)
    start: int  # character offsets in the context (-1 for no answer)
    end: int
    score: float  # probability of the span within its window
    no_answer: bool = False

    def to_dict(self) -> dict:
        return {"answer": self.answer, "start": self.start, "end": self.end, "score": round(self.score, 6),
                "no_answer": self.no_answer}


class Predictor:
    def __init__(self, model_dir: str | Path, max_seq_length: int | None = None, stride: int = 128,
                 n_best: int = 20, max_answer_length: int = 30, no_answer_threshold: float | None = None,
                 batch_size: int = 32, device: str | None = None):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        from uqa.inference import pick_device

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise UserError(f"{model_dir}: not a model directory (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tokenizer.is_fast:
            raise UserError(f"{model_dir}: the tokenizer is not a fast tokenizer; offsets are needed")
        self.device = pick_device(device)
        self.model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir)).to(self.device)
        from uqa.modeling import HARD_CAP, position_limit

        self.max_seq_length = min(max_seq_length or HARD_CAP, position_limit(self.model.config), HARD_CAP)
        self.stride = min(stride, self.max_seq_length // 4)
        self.n_best, self.max_answer_length, self.batch_size = n_best, max_answer_length, batch_size
        registration = model_dir / "registration.json"
        record = json.loads(registration.read_text()) if registration.exists() else {}
        if no_answer_threshold is None:
            no_answer_threshold = record.get("metrics", {}).get("no_answer_threshold")
        self.no_answer_threshold = no_answer_threshold  # None: always answer (answerable-only model)

    def __call__(self, questions: list[str], contexts: list[str]) -> list[Answer]:
        from uqa.features import encode_windows
        from uqa.inference import spans_for_windows, window_logits
        from uqa.postprocess import no_answer_margin

        if len(questions) != len(contexts):
            raise UserError("as many questions as contexts are needed")
        for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
            if not q or not q.strip():
                raise UserError(f"row {i}: question is empty")
            if not c or not c.strip():
                raise UserError(f"row {i}: context is empty")
        with_types = "token_type_ids" in self.tokenizer.model_input_names
        windows = encode_windows(self.tokenizer.backend_tokenizer, [q.strip() for q in questions], contexts,
                                 self.max_seq_length, self.stride, with_types)
        logits = window_logits(self.model, windows, self.tokenizer.pad_token_id, self.batch_size, "auto", self.device)
        spans = spans_for_windows(logits, windows, self.n_best, self.max_answer_length)
        margins = no_answer_margin(spans)
        texts = spans.texts(contexts)
        answers = []
        for i in range(len(questions)):
            j = int(np.searchsorted(spans.example, i))
            null = self.no_answer_threshold is not None and margins[j] > self.no_answer_threshold
            if null or spans.char_start[j] < 0:
                answers.append(Answer("", -1, -1, float(spans.probability[j]), no_answer=True))
            else:
                answers.append(Answer(texts[j], int(spans.char_start[j]), int(spans.char_end[j]),
                                      float(spans.probability[j])))
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
