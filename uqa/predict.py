"""Answer questions with a trained model: same windows, same span search and the same no-answer
threshold as the evaluation that scored it (the settings come from uqa/inference_settings.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uqa.errors import UserError
from uqa.inference_settings import resolve_settings

log = logging.getLogger(__name__)


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
