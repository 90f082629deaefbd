"""Loading a version for serving: uqa.model.predict.Predictor with the torch model, or with an ONNX
Runtime session (fp32, or int8 dynamic quantization) in the model's place.

The Predictor's windows, span search and threshold are untouched, so a backend can change answers
only through its logits. At load, a non-torch backend answers a check set with torch and with itself:
the version's own evaluation questions (the sample `register` records in it, eval_questions.jsonl), or
`--check-questions FILE`; the agreement, and which questions it was measured on, is logged, shown at
start-up and in /v1/model, with a warning when answers differ."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from uqa.errors import UserError
from uqa.serving.models import Resolved, ServedModel

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
CHECK_ROWS = 150


def check_file_for(model_dir: Path, given: Path | None = None) -> tuple[Path | None, str]:
    """The questions a backend's agreement is measured on, and what they are."""
    from uqa.model.settings import EVAL_QUESTIONS_FILE

    if given is not None:
        return Path(given), f"--check-questions {given}"
    own = Path(model_dir) / EVAL_QUESTIONS_FILE
    if own.is_file():
        return own, "the version's own evaluation questions"
    return None, "none: the version records no evaluation questions (registered before they were recorded, or not " \
                 "a registry version); pass --check-questions FILE"


def check_questions(path: Path | None, n: int = CHECK_ROWS) -> list[tuple[str, str]]:
    """Held-out (question, context) pairs for the agreement check: [] when there is no such file."""
    from uqa.model.predict import read_batch

    if path is None or not Path(path).exists():
        return []
    rows = read_batch(Path(path))[:n]
    return [(r["question"], r["context"]) for r in rows]


def agreement(reference: list, candidate: list) -> tuple[int, int]:
    """(answers identical in text and span, answers compared)."""
    same = sum(a.answer == b.answer and (a.start, a.end) == (b.start, b.end) and a.no_answer == b.no_answer
               for a, b in zip(reference, candidate, strict=True))
    return same, len(reference)


def _answer_all(predictor, pairs: list[tuple[str, str]]) -> list:
    out = []
    for q, c in pairs:  # one at a time: a question too long for the window is skipped, not fatal
        try:
            out.extend(predictor([q], [c]))
        except UserError:
            out.append(None)
    return out


def load_served(resolved: Resolved, backend: str = "torch", forward_tokens: int = 16384,
                onnx_cache: Path | None = None, check_file: Path | None = None,
                threads: int | None = None) -> ServedModel:
    from uqa.model.predict import Predictor
    from uqa.model.settings import weights_sha256

    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    started = time.monotonic()
    predictor = Predictor(resolved.path)
    # windows per forward pass from a token budget: the demo's 55-token windows go ~300 at a time,
    # a 384-token model's ~40 (the same activation memory)
    predictor.batch_size = max(1, forward_tokens // predictor.max_seq_length)
    notes: list[str] = []
    if backend != "torch":
        from uqa.serving.onnx_backend import onnx_model

        digest = weights_sha256(resolved.path)
        with_types = "token_type_ids" in predictor.tokenizer.model_input_names
        check_path, what = check_file_for(resolved.path, check_file)
        pairs = check_questions(check_path)
        reference = _answer_all(predictor, pairs) if pairs else []
        predictor.model = onnx_model(predictor.model, resolved.path, backend == "onnx-int8", with_types, digest,
                                     cache=onnx_cache, threads=threads)
        if pairs:
            candidate = _answer_all(predictor, pairs)
            kept = [(a, b) for a, b in zip(reference, candidate, strict=True) if a is not None and b is not None]
            same, total = agreement([a for a, _ in kept], [b for _, b in kept])
            note = (f"{backend} gives the same answer as torch on {same} of {total} held-out questions "
                    f"({100 * same / max(total, 1):.1f}%; {what}: {check_path})")
            if same < total:
                note = f"WARNING: {backend} CHANGES ANSWERS: " + note
                log.warning(note)
            else:
                log.info(note)
            notes.append(note)
        else:
            note = f"WARNING: {backend}: agreement with torch not measured (check questions: {what})"
            log.warning(note)
            notes.append(note)
    return ServedModel(resolved, predictor, backend, time.monotonic() - started, notes=notes)

