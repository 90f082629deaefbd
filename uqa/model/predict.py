"""Answer questions with a trained model: same windows, same span search and the same no-answer
threshold as the evaluation that scored it (the settings come from uqa/model/settings.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uqa.errors import UserError
from uqa.model.settings import resolve_settings

if TYPE_CHECKING:
    from uqa.text.encoding import EncodedPairs

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


@dataclass
class Prepared:
    """What `Predictor.prepare` makes of a call's rows: every row's windows (window_to_example = the row)."""

    windows: Any  # uqa.text.windows.Windows
    contexts: list[str]
    truncated: np.ndarray  # per row: its question was cut to fit the window

    @property
    def n_windows(self) -> int:
        return self.windows.n_windows


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

        from uqa.model.inference import pick_device

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
        from uqa.model.modeling import HARD_CAP, position_limit

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
        from uqa.text.encoding import PairTemplate, prepare_backend

        # the tokenizer copy that neither pads nor truncates, made once: copying it is most of the cost of
        # encoding one question (64 ms against 4 ms with a 32k vocabulary, more with XLM-R's 250k), and
        # `uqa serve` prepares each request on its own. It is only read after this: threads may share it.
        self._backend = prepare_backend(self.tokenizer.backend_tokenizer)
        self._template = PairTemplate.of(self._backend)
        self._with_types = "token_type_ids" in self.tokenizer.model_input_names

    def describe(self) -> str:
        """The settings in use (after the model's position limit) and the files they came from."""
        threshold = "none (always answer)" if self.no_answer_threshold is None else f"{self.no_answer_threshold:.6g}"
        return (f"max_seq_length {self.max_seq_length}, stride {self.stride}, n_best {self.n_best}, "
                f"max_answer_length {self.max_answer_length}, no_answer_threshold {threshold} "
                f"(from {', '.join(sorted(set(self.sources.values())))})")

    def __call__(self, questions: list[str], contexts: list[str], ids: list | None = None,
                 where: str | None = None) -> list[Answer]:
        """`ids` and `where` (e.g. the input file) only name rows in error messages."""
        prepared = self.prepare(questions, contexts, ids=ids, where=where)
        return [ranked[0] for ranked in self.finish(prepared, self.logits(prepared))]

    # the three steps of a call, which `uqa serve` runs apart (its scheduler interleaves the forward passes
    # of several requests): tokenize into windows, logits of the windows, answers from the logits

    def prepare(self, questions: list[str], contexts: list[str], ids: list | None = None, where: str | None = None,
                truncate_questions: bool = False, max_question_tokens: int | None = None) -> Prepared:
        """The windows of every question/context pair. A question too long for the window is an error
        naming its row, unless `truncate_questions`: it is then cut to the tokens that leave a quarter of
        the window to the context (or to `max_question_tokens`, HF's max_question_len), and `truncated`
        says so."""
        from uqa.text.windows import concat_windows

        if len(questions) != len(contexts):
            raise UserError("as many questions as contexts are needed")
        for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
            if not q or not q.strip():
                raise UserError(f"row {i}: question is empty")
            if not c or not c.strip():
                raise UserError(f"row {i}: context is empty")
        questions = [q.strip() for q in questions]
        encoded = self._encode(questions, contexts)
        n_special = encoded.template.n_special
        truncated = np.zeros(len(questions), dtype=bool)
        if truncate_questions or max_question_tokens is not None:
            questions, truncated = self._truncated(questions, encoded.questions.lengths, n_special,
                                                   truncate_questions, max_question_tokens)
            if truncated.any():
                encoded = self._encode(questions, contexts)
        q_len = encoded.questions.lengths
        c_len = encoded.contexts.lengths[encoded.context_of]
        budget = self.max_seq_length - q_len - n_special  # context tokens per window
        self._check_question_lengths(questions, q_len, budget, n_special, ids, where)
        # a question that leaves no more context tokens per window than the stride (the windows could
        # not advance): this row alone gets a smaller stride, every other row the model's own
        narrow = (c_len > budget) & (budget <= self.stride)
        strides = np.where(narrow, budget // 2, self.stride)
        if narrow.any():
            log.warning("%d question(s) leave %d or fewer context tokens per window (max_seq_length %d), not "
                        "more than the stride %d: their windows overlap by half a window instead",
                        int(narrow.sum()), int(budget[narrow].max()), self.max_seq_length, self.stride)
        parts = []
        for stride in np.unique(strides).tolist():
            rows = np.flatnonzero(strides == stride)
            if len(rows) == len(questions):
                parts.append((encoded.windows(self.max_seq_length, int(stride)), rows))
            else:
                sub = self._encode([questions[i] for i in rows], [contexts[i] for i in rows])
                parts.append((sub.windows(self.max_seq_length, int(stride)), rows))
        return Prepared(concat_windows(parts), list(contexts), truncated)

    def _encode(self, questions: list[str], contexts: list[str]) -> EncodedPairs:
        from uqa.text.encoding import encode_prepared

        return encode_prepared(self._backend, self._template, questions, contexts, self._with_types)

    def _truncated(self, questions: list[str], q_len: np.ndarray, n_special: int, to_fit: bool,
                   limit: int | None) -> tuple[list[str], np.ndarray]:
        """Questions cut to their first tokens where they are too long (see `prepare`)."""
        room = self.max_seq_length - n_special - max(1, (self.max_seq_length - n_special) // 4)
        keep = np.full(len(questions), limit if limit is not None else np.iinfo(np.int64).max, dtype=np.int64)
        if to_fit:
            too_long = self.max_seq_length - q_len - n_special < 1
            keep[too_long] = np.minimum(keep[too_long], room)
        keep = np.maximum(keep, 1)
        cut = np.flatnonzero(q_len > keep)
        out = list(questions)
        for i in cut.tolist():
            offsets = self.tokenizer(out[i], add_special_tokens=False, return_offsets_mapping=True,
                                     truncation=False)["offset_mapping"]
            if len(offsets) > keep[i]:
                out[i] = out[i][: offsets[int(keep[i]) - 1][1]].rstrip() or out[i][: offsets[0][1]]
        truncated = np.zeros(len(questions), dtype=bool)
        truncated[cut] = [out[i] != questions[i] for i in cut.tolist()]
        return out, truncated

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

    def logits(self, prepared: Prepared):
        """Start/end logits of every window (uqa.model.inference.window_logits)."""
        from uqa.model.inference import window_logits

        return window_logits(self.model, prepared.windows, self.tokenizer.pad_token_id, self.batch_size, "auto",
                             self.device)

    def finish(self, prepared: Prepared, logits, top_k: int = 1, max_answer_length: int | None = None,
               no_answer_threshold: float | None | object = ...) -> list[list[Answer]]:
        """Each row's answers, best first (one unless `top_k` > 1): the decided answer (with the no-answer
        threshold: the model's unless given; None = always answer), then the next best spans.
        `max_answer_length` (tokens) overrides the model's for this call."""
        from uqa.model.inference import spans_for_windows
        from uqa.model.postprocess import no_answer_margin

        windows, contexts = prepared.windows, prepared.contexts
        longest = self.max_answer_length if max_answer_length is None else int(max_answer_length)
        threshold = self.no_answer_threshold if no_answer_threshold is ... else no_answer_threshold
        spans = spans_for_windows(logits, windows, self.n_best, longest)
        margins = no_answer_margin(spans)
        texts = spans.texts(contexts)
        more = self._alternatives(logits, windows, contexts, longest, top_k) if top_k > 1 else {}
        answers = []
        for i in range(len(contexts)):
            j = int(np.searchsorted(spans.example, i))
            null = threshold is not None and margins[j] > threshold
            if null or spans.char_start[j] < 0:
                first = Answer("", -1, -1, float(spans.probability[j]), no_answer=True, margin=float(margins[j]))
            else:
                first = Answer(texts[j], int(spans.char_start[j]), int(spans.char_end[j]),
                               float(spans.probability[j]), margin=float(margins[j]))
            ranked = [first] + [a for a in more.get(i, []) if (a.start, a.end) != (first.start, first.end)]
            answers.append(ranked[:top_k])
        return answers

    def _alternatives(self, logits, windows, contexts: list[str], longest: int, k: int) -> dict[int, list[Answer]]:
        """Up to `k` distinct spans per row, best first (uqa.model.postprocess.ranked_spans), sliced and trimmed."""
        from uqa.model.postprocess import pad_ragged, ranked_spans

        cs = pad_ragged(windows.char_start, windows.row_splits, -1, np.int64)
        ce = pad_ragged(windows.char_end, windows.row_splits, -1, np.int64)
        r = ranked_spans(logits.start, logits.end, (cs >= 0) & (ce > cs), windows.window_to_example, cs, ce,
                         n_best=self.n_best, max_answer_length=longest, k=k + 1)  # one more: the first may be ""
        out: dict[int, list[Answer]] = {}
        seen: set[tuple[int, int, int]] = set()
        for i, s, e, p in zip(r["example"].tolist(), r["char_start"].tolist(), r["char_end"].tolist(),
                              r["probability"].tolist(), strict=True):
            text = contexts[i][s:e]
            lead, trail = len(text) - len(text.lstrip()), len(text) - len(text.rstrip())
            s, e = s + lead, max(s + lead, e - trail)  # as ExampleSpans.texts trims
            if (i, s, e) in seen or e <= s:
                continue
            seen.add((i, s, e))
            out.setdefault(i, []).append(Answer(contexts[i][s:e], s, e, float(p)))
        return out

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
