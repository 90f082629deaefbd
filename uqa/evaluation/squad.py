"""SQuAD v2.0 exact-match / F1 evaluation.

The scoring logic reproduces the official ``evaluate-v2.0.py`` (get_raw_scores,
apply_no_ans_threshold, make_eval_dict, find_best_thresh, find_all_best_thresh) so that, with
``normalize=normalize_official``, the numbers match the official script exactly
(tests/test_metrics.py compares them with a transcription of the official script on thousands of
random cases). ``best_margin_threshold`` is what the pipeline tunes its no-answer threshold with: the
official ``find_best_thresh`` assumes probabilities (it starts at 0.0 and steps through single
questions, ties included), which logit margins are not. ``normalize_urdu`` (uqa/evaluation/urdu.py)
is a stricter normalizer for Urdu, a drop-in for the ``normalize`` argument.

Per-question EM is 0/1 and F1 is 0..1; the aggregate dict is on a 0..100 scale.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping

from uqa.evaluation.urdu import normalize_urdu

__all__ = [
    "NORMALIZERS",
    "apply_margin_threshold",
    "apply_no_ans_threshold",
    "best_margin_threshold",
    "compute_exact",
    "compute_f1",
    "find_all_best_thresh",
    "find_best_thresh",
    "get_tokens",
    "normalize_official",
    "question_scores",
    "squad_v2_evaluate",
]

Normalizer = Callable[[str], str]

# --------------------------------------------------------------------------------------------
# Official SQuAD v2.0 normalizer
# --------------------------------------------------------------------------------------------

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b", re.UNICODE)
# Deleting every char of string.punctuation == official ''.join(ch for ch in s if ch not in exclude).
_ASCII_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


@functools.lru_cache(maxsize=1 << 16)  # pure; scoring normalizes each answer several times (per-epoch F1 too)
def normalize_official(text: str) -> str:
    """Official SQuAD v2.0 ``normalize_answer``: lower, drop ASCII punctuation, drop a/an/the, squeeze spaces."""
    text = text.lower()
    text = text.translate(_ASCII_PUNCT_TABLE)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


NORMALIZERS: dict[str, Normalizer] = {"official": normalize_official, "urdu": normalize_urdu}


def _resolve(normalize: Normalizer | str) -> Normalizer:
    if isinstance(normalize, str):
        try:
            return NORMALIZERS[normalize]
        except KeyError:
            raise ValueError(f"unknown normalizer {normalize!r}; choose from {sorted(NORMALIZERS)}") from None
    return normalize


# --------------------------------------------------------------------------------------------
# Per-answer / per-question scores (official semantics)
# --------------------------------------------------------------------------------------------


def get_tokens(text: str, normalize: Normalizer | str = normalize_official) -> list[str]:
    """Official get_tokens: ``[]`` for empty raw text, else the normalized text split on whitespace."""
    if not text:
        return []
    return _resolve(normalize)(text).split()


def compute_exact(reference: str, prediction: str, normalize: Normalizer | str = normalize_official) -> int:
    """1 if the normalized reference equals the normalized prediction, else 0."""
    norm = _resolve(normalize)
    return int(norm(reference) == norm(prediction))


def compute_f1(reference: str, prediction: str, normalize: Normalizer | str = normalize_official) -> float:
    """Official token-level F1 in 0..1 (bag-of-tokens overlap; 1/0 agreement if either side has no tokens)."""
    norm = _resolve(normalize)
    gold_toks = get_tokens(reference, norm)
    pred_toks = get_tokens(prediction, norm)
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise.
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def question_scores(
    prediction: str, references: Iterable[str], normalize: Normalizer | str = normalize_official
) -> tuple[int, float]:
    """(EM 0/1, F1 0..1) of one prediction, max over references that normalize non-empty (else ``['']``)."""
    norm = _resolve(normalize)
    if isinstance(references, str):
        raise TypeError("references must be a list of strings, not a single string")
    gold = [a for a in references if norm(a)]
    if not gold:
        # For unanswerable questions, the only correct answer is the empty string.
        gold = [""]
    exact = max(compute_exact(a, prediction, norm) for a in gold)
    f1 = max(compute_f1(a, prediction, norm) for a in gold)
    return exact, f1


# --------------------------------------------------------------------------------------------
# Dataset-level evaluation (official main())
# --------------------------------------------------------------------------------------------


def apply_no_ans_threshold(
    scores: Mapping[str, float],
    na_scores: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
    threshold: float,
) -> dict[str, float]:
    """Official: where na score > threshold the question counts as predicted no-answer."""
    new_scores: dict[str, float] = {}
    for qid, s in scores.items():
        pred_na = na_scores[qid] > threshold
        if pred_na:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = s
    return new_scores


def _make_eval_dict(
    exact_scores: Mapping[str, float], f1_scores: Mapping[str, float], qid_list: list[str] | None = None
) -> dict[str, float | int]:
    if not qid_list:
        total = len(exact_scores)
        return {
            "exact": 100.0 * sum(exact_scores.values()) / total,
            "f1": 100.0 * sum(f1_scores.values()) / total,
            "total": total,
        }
    total = len(qid_list)
    return {
        "exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
        "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total,
        "total": total,
    }


def find_best_thresh(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_scores: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """Official find_best_thresh: best achievable score (0..100) over no-answer thresholds, and that threshold.

    Questions are swept in ascending na-score order (stable sort, so ties keep ``na_scores``
    insertion order); the threshold only moves on a strict improvement and starts at 0.0.

    Kept for parity with the official script only: with scores that can be negative (logit margins)
    the 0.0 it starts from is no "no answer everywhere" threshold, and a best reached in the middle
    of a run of equal scores cannot be applied. The pipeline uses ``best_margin_threshold``.
    """
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score: float = num_no_ans
    best_score: float = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_scores, key=lambda k: na_scores[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_scores[qid]
    return 100.0 * best_score / len(scores), float(best_thresh)


def find_all_best_thresh(
    main_eval: dict[str, float | int],
    preds: Mapping[str, str],
    exact_raw: Mapping[str, float],
    f1_raw: Mapping[str, float],
    na_scores: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> None:
    """Official: add best_exact, best_exact_thresh, best_f1, best_f1_thresh to ``main_eval`` in place."""
    best_exact, exact_thresh = find_best_thresh(preds, exact_raw, na_scores, qid_to_has_ans)
    best_f1, f1_thresh = find_best_thresh(preds, f1_raw, na_scores, qid_to_has_ans)
    main_eval["best_exact"] = best_exact
    main_eval["best_exact_thresh"] = exact_thresh
    main_eval["best_f1"] = best_f1
    main_eval["best_f1_thresh"] = f1_thresh


def apply_margin_threshold(
    answer_scores: Mapping[str, float],
    null_scores: Mapping[str, float],
    margins: Mapping[str, float],
    threshold: float,
) -> float:
    """Mean score (0..100) when each question is answered "" iff ``margins[q] > threshold``.

    ``answer_scores[q]`` is the score of the question's best span, ``null_scores[q]`` that of "";
    summed in ``answer_scores`` order like ``squad_v2_evaluate``, so the two agree to the last bit."""
    if not answer_scores:
        raise ValueError("no questions to score")
    total = sum(null_scores[q] if margins[q] > threshold else s for q, s in answer_scores.items())
    return 100.0 * total / len(answer_scores)


def _between(low: float, high: float) -> float:
    """A float t with low <= t < high, as central as float arithmetic allows."""
    mid = low / 2 + high / 2 if math.isfinite(low / 2 + high / 2) else low
    return mid if low <= mid < high else low


def best_margin_threshold(
    answer_scores: Mapping[str, float],
    null_scores: Mapping[str, float],
    margins: Mapping[str, float],
) -> tuple[float, float]:
    """The no-answer threshold that maximizes the mean score when "" is predicted iff margin > threshold.

    ``margins[q]`` is the null score minus the best span score (a logit difference: any real number;
    +inf where no span exists, always answered ""). Every way the rule can cut the sorted margins is
    tried: "" everywhere, and "answer the questions with margin <= v" for every distinct margin v
    (the last one = answer everywhere); equal margins always fall on the same side. The threshold
    returned lies inside the winning cut (midway between its margin and the next distinct one; 1.0
    below the smallest margin for "" everywhere, 1.0 above the largest for answer everywhere), so
    ``apply_margin_threshold(..., threshold)`` gives back the best score exactly, and a margin
    recomputed with float noise does not land on the other side. Equally good cuts: the one with
    the most "" (the official ``find_best_thresh`` prefers the same).

    Returns (best score 0..100, threshold)."""
    qids = list(answer_scores)
    if not qids:
        raise ValueError("no questions to tune a threshold on")
    values = [float(margins[q]) for q in qids]
    if any(math.isnan(v) for v in values):
        raise ValueError("a no-answer margin is NaN")
    finite = sorted({v for v in values if math.isfinite(v)})
    if not finite:  # no span anywhere (or every margin infinite): the threshold changes nothing
        return apply_margin_threshold(answer_scores, null_scores, margins, 0.0), 0.0
    # gain of answering instead of "", summed per distinct margin, swept from the lowest margin up
    gain: dict[float, float] = collections.defaultdict(float)
    for q, v in zip(qids, values, strict=True):
        if math.isfinite(v):
            gain[v] += answer_scores[q] - null_scores[q]
    running, best, best_cut = 0.0, 0.0, -1  # cut -1: "" everywhere; cut i: answer margins <= finite[i]
    for i, v in enumerate(finite):
        running += gain[v]
        if running > best + 1e-9:  # a strict improvement (the tolerance absorbs summation noise)
            best, best_cut = running, i
    if best_cut < 0:
        low = finite[0]
        threshold = low - 1.0 if low - 1.0 < low else math.nextafter(low, -math.inf)
    elif best_cut == len(finite) - 1:
        high = finite[-1]
        threshold = high + 1.0 if high + 1.0 > high else high
    else:
        threshold = _between(finite[best_cut], finite[best_cut + 1])
    return apply_margin_threshold(answer_scores, null_scores, margins, threshold), float(threshold)


def _missing_message(what: str, missing: list[str]) -> str:
    shown = ", ".join(repr(q) for q in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return f"{len(missing)} question id(s) missing from {what}: {shown}{more}"


def squad_v2_evaluate(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    no_answer_scores: dict[str, float] | None = None,
    no_answer_threshold: float = 1.0,
    normalize: Normalizer | str = normalize_official,
) -> dict[str, float | int]:
    """Official evaluate-v2.0.py ``main()`` result for ``{qid: prediction}`` against ``{qid: [answers]}``.

    A question is unanswerable when its reference list is empty or holds only empty strings.
    Predictions for ids not in ``references`` are ignored (as official); a missing prediction
    raises ``ValueError``. ``no_answer_scores`` (higher = more likely no answer) enables the
    threshold and the best_* keys.
    """
    norm = _resolve(normalize)
    if not references:
        raise ValueError("references is empty: nothing to evaluate")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(_missing_message("predictions", missing))
    if no_answer_scores is not None:
        missing_na = [qid for qid in references if qid not in no_answer_scores]
        if missing_na:
            raise ValueError(_missing_message("no_answer_scores", missing_na))

    qid_to_has_ans: dict[str, bool] = {}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, answers in references.items():
        if isinstance(answers, str):
            raise TypeError(f"references[{qid!r}] must be a list of strings, not a string")
        answers = list(answers)
        # Official: bool(qa['answers']); an answer list of only '' also means "no answer" here.
        qid_to_has_ans[qid] = any(answers)
        exact_raw[qid], f1_raw[qid] = question_scores(predictions[qid], answers, norm)

    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]

    # Official: without an na-prob file every prediction gets na prob 0.0.
    na_scores = no_answer_scores if no_answer_scores is not None else {k: 0.0 for k in predictions}
    exact_thresh = apply_no_ans_threshold(exact_raw, na_scores, qid_to_has_ans, no_answer_threshold)
    f1_thresh = apply_no_ans_threshold(f1_raw, na_scores, qid_to_has_ans, no_answer_threshold)

    out_eval = _make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        for k, v in _make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids).items():
            out_eval[f"HasAns_{k}"] = v
    if no_ans_qids:
        for k, v in _make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids).items():
            out_eval[f"NoAns_{k}"] = v
    if no_answer_scores is not None:
        find_all_best_thresh(out_eval, predictions, exact_raw, f1_raw, no_answer_scores, qid_to_has_ans)
    return out_eval
