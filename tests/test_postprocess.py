"""Postprocessing: valid spans only (the seed's argmax failures), and nothing lost against the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import UQA_DIR, URDU_TOKENIZER, needs_shared

from uqa.model.inference import WindowLogits, spans_for_windows
from uqa.model.postprocess import best_spans, no_answer_margin, pad_ragged
from uqa.text.encoding import encode_labelled_windows

# one window of 10 tokens: 0 = CLS, 1-3 question, 4 = SEP, 5-8 context, 9 = SEP
CTX = np.array([[False, False, False, False, False, True, True, True, True, False]])
CS = np.array([[-1, -1, -1, -1, -1, 0, 4, 9, 15, -1]])
CE = np.array([[-1, -1, -1, -1, -1, 3, 8, 14, 20, -1]])


def _spans(start, end, ctx=CTX, cs=CS, ce=CE, owner=None, **kw):
    owner = np.zeros(len(start), dtype=np.int64) if owner is None else owner
    return best_spans(np.asarray(start, np.float32), np.asarray(end, np.float32), ctx, owner, cs, ce, **kw)


def test_argmax_end_before_start_gives_a_valid_span():
    start = [[0, 0, 0, 0, 0, 0, 2, 0, 9, 0]]  # argmax start = 8
    end = [[0, 0, 0, 0, 0, 0, 8, 0, 0, 0]]  # argmax end = 6 < 8: the seed returns an empty/garbled span
    s = _spans(start, end)
    assert s.end_token[0] >= s.start_token[0]
    assert (s.start_token[0], s.end_token[0]) == (6, 6)  # 2 + 8 beats 9 + 0 at (8, 8)
    assert (s.char_start[0], s.char_end[0]) == (4, 8)


def test_span_in_the_question_is_never_returned():
    start = [[5, 9, 0, 0, 0, 1, 0, 0, 0, 0]]  # the question tokens (1) and CLS win the argmax
    end = [[5, 0, 9, 0, 0, 0, 0, 2, 0, 0]]
    s = _spans(start, end)
    assert (s.start_token[0], s.end_token[0]) == (5, 7)
    assert CTX[0, s.start_token[0]] and CTX[0, s.end_token[0]]


def test_span_across_windows_is_never_returned():
    # example 0 has two windows; the best start is in window 0, the best end in window 1
    ctx = np.vstack([CTX, CTX])
    cs = np.vstack([CS, CS + 10])
    ce = np.vstack([CE, CE + 10])
    start = [[0, 0, 0, 0, 0, 0, 0, 9, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]]
    end = [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 9, 0]]
    s = _spans(start, end, ctx, cs, ce, owner=np.array([0, 0]))
    assert s.feature[0] in (0, 1)
    w = s.feature[0]
    assert cs[w, s.start_token[0]] == s.char_start[0] and ce[w, s.end_token[0]] == s.char_end[0]
    assert s.end_token[0] >= s.start_token[0]
    # window 1: start 5 (1) + end 8 (9) = 10 beats window 0: start 7 (9) + best end >= 7 (0) = 9
    assert (w, s.start_token[0], s.end_token[0]) == (1, 5, 8)


def test_max_answer_length_is_respected():
    start = [[0, 0, 0, 0, 0, 9, 0, 0, 0, 0]]
    end = [[0, 0, 0, 0, 0, 0, 0, 0, 9, 0]]
    assert (_spans(start, end).start_token[0], _spans(start, end).end_token[0]) == (5, 8)
    s = _spans(start, end, max_answer_length=2)
    assert s.end_token[0] - s.start_token[0] + 1 <= 2


def test_no_valid_pair_in_top_k_falls_back_to_all_pairs():
    # with n_best=1 the only candidates are start 8 and end 5 (invalid); the answer is still valid
    start = [[0, 0, 0, 0, 0, 1, 2, 3, 9, 0]]
    end = [[0, 0, 0, 0, 0, 9, 3, 2, 1, 0]]
    s = _spans(start, end, n_best=1)
    assert s.start_token[0] >= 5 and s.end_token[0] >= s.start_token[0]
    assert np.isfinite(s.score[0])


def test_best_window_and_null_score_per_example():
    ctx = np.vstack([CTX, CTX, CTX])
    cs, ce = np.vstack([CS] * 3), np.vstack([CE] * 3)
    start = np.zeros((3, 10), np.float32)
    end = np.zeros((3, 10), np.float32)
    start[:, 0] = [4, 1, 7]
    end[:, 0] = [4, 2, 7]  # null scores 8, 3, 14
    start[1, 6], end[1, 7] = 5, 5  # example 0's best span is in window 1
    start[2, 5], end[2, 5] = 2, 2
    s = _spans(start, end, ctx, cs, ce, owner=np.array([0, 0, 1]))
    assert s.example.tolist() == [0, 1]
    assert s.feature.tolist() == [1, 2]
    assert s.null_score.tolist() == [3.0, 14.0]  # minimum over the example's windows
    assert no_answer_margin(s).tolist() == [3.0 - 10.0, 14.0 - 4.0]
    assert 0 < s.probability[0] <= 1


def test_texts_trim_whitespace_from_offsets():
    cs = np.array([[-1, -1, -1, -1, -1, 0, 3, 9, 15, -1]])  # token 6 starts at the space before "defg"
    s = _spans([[0, 0, 0, 0, 0, 0, 9, 0, 0, 0]], [[0, 0, 0, 0, 0, 0, 9, 0, 0, 0]], cs=cs)
    assert s.texts(["abc defg hij"]) == ["defg"]
    assert (s.char_start[0], s.char_end[0]) == (4, 8)


@needs_shared
def test_oracle_logits_recover_every_labelled_answer():
    """One-hot logits at the gold label positions -> postprocessing returns exactly the labelled span."""
    from uqa.text.tokenizer import load_tokenizer

    rows = pd.read_parquet(UQA_DIR / "validation.parquet")
    rows = rows[~rows["is_impossible"]].reset_index(drop=True)
    stripped = rows["answer"].str.strip()
    starts = (rows["answer_start"] + rows["answer"].str.len() - rows["answer"].str.lstrip().str.len()).to_numpy()
    ends = starts + stripped.str.len().to_numpy()
    tok = load_tokenizer(str(URDU_TOKENIZER))
    # 256 tokens: plenty of examples span several windows
    windows, labels = encode_labelled_windows(tok.backend_tokenizer, rows["question"].str.strip().tolist(),
                                              rows["context"].tolist(), starts, ends, 256, 128)
    width = int(windows.lengths.max())
    start_logits = np.zeros((windows.n_windows, width), np.float32)
    end_logits = np.zeros((windows.n_windows, width), np.float32)
    hit = np.flatnonzero(labels.has_answer)
    start_logits[hit, labels.start_positions[hit]] = 10.0
    end_logits[hit, labels.end_positions[hit]] = 10.0
    start_logits[pad_ragged(np.ones(len(windows.input_ids), bool), windows.row_splits, False, bool) == 0] = -np.inf
    end_logits[np.isneginf(start_logits)] = -np.inf
    spans = spans_for_windows(WindowLogits(start_logits, end_logits), windows, n_best=20, max_answer_length=512)
    # the labelled character span of each example (from its first labelled window)
    labelled = {}
    for w in hit:
        ex = int(windows.window_to_example[w])
        if ex in labelled:
            continue
        base = windows.row_splits[w]
        labelled[ex] = (int(windows.char_start[base + labels.start_positions[w]]),
                        int(windows.char_end[base + labels.end_positions[w]]))
    assert len(labelled) > 0.99 * len(rows)
    contexts = rows["context"].tolist()
    texts = spans.texts(contexts)
    mismatches = []
    for i, ex in enumerate(spans.example.tolist()):
        if ex not in labelled:
            continue
        a, b = labelled[ex]
        if texts[i] != contexts[ex][a:b].strip():
            mismatches.append((ex, texts[i], contexts[ex][a:b]))
    assert mismatches == []
    exact = np.mean([texts[i] == stripped[ex] for i, ex in enumerate(spans.example.tolist()) if ex in labelled])
    assert exact > 0.97  # the tokenizer's ceiling: punctuation glued to words


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorized_matches_a_python_reference(seed):
    """Random logits: the vectorized search equals a plain loop over n_best x n_best pairs."""
    rng = np.random.default_rng(seed)
    n, width, n_best, max_len = 40, 30, 5, 6
    ctx = np.zeros((n, width), bool)
    ctx[:, 8:27] = True
    cs = np.where(ctx, np.arange(width) * 3, -1)
    ce = np.where(ctx, np.arange(width) * 3 + 2, -1)
    start = rng.normal(size=(n, width)).astype(np.float32)
    end = rng.normal(size=(n, width)).astype(np.float32)
    owner = np.repeat(np.arange(n // 2), 2)
    spans = best_spans(start, end, ctx, owner, cs, ce, n_best=n_best, max_answer_length=max_len)
    for ex in range(n // 2):
        best = (-np.inf, None)
        for w in np.flatnonzero(owner == ex):
            s_masked = np.where(ctx[w], start[w], -np.inf)
            e_masked = np.where(ctx[w], end[w], -np.inf)
            for i in np.argsort(-s_masked)[:n_best]:
                for j in np.argsort(-e_masked)[:n_best]:
                    if ctx[w, i] and ctx[w, j] and i <= j < i + max_len and start[w, i] + end[w, j] > best[0]:
                        best = (start[w, i] + end[w, j], (w, i, j))
        w, i, j = best[1]
        assert (spans.feature[ex], spans.start_token[ex], spans.end_token[ex]) == (w, i, j)
        assert spans.score[ex] == pytest.approx(best[0], rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranked_spans_are_the_k_best_distinct_spans_the_first_best_spans(seed):
    """Random logits over overlapping windows (the same characters in two windows): the k best distinct
    character spans of a plain loop over the n_best x n_best pairs, and the first is best_spans' answer."""
    from uqa.model.postprocess import ranked_spans

    rng = np.random.default_rng(seed)
    n, width, n_best, max_len, k = 40, 30, 5, 6, 4
    ctx = np.zeros((n, width), bool)
    ctx[:, 8:27] = True
    shift = np.where(np.arange(n) % 2 == 1, 9, 0)[:, None]  # odd windows start 9 tokens into their example
    cs = np.where(ctx, (np.arange(width)[None, :] + shift) * 3, -1)
    ce = np.where(ctx, (np.arange(width)[None, :] + shift) * 3 + 2, -1)
    start = rng.normal(size=(n, width)).astype(np.float32)
    end = rng.normal(size=(n, width)).astype(np.float32)
    owner = np.repeat(np.arange(n // 2), 2)
    ranked = ranked_spans(start, end, ctx, owner, cs, ce, n_best=n_best, max_answer_length=max_len, k=k)
    best = best_spans(start, end, ctx, owner, cs, ce, n_best=n_best, max_answer_length=max_len)
    for ex in range(n // 2):
        spans: dict[tuple[int, int], float] = {}
        for w in np.flatnonzero(owner == ex):
            s_masked = np.where(ctx[w], start[w], -np.inf)
            e_masked = np.where(ctx[w], end[w], -np.inf)
            for i in np.argsort(-s_masked)[:n_best]:
                for j in np.argsort(-e_masked)[:n_best]:
                    if ctx[w, i] and ctx[w, j] and i <= j < i + max_len:
                        key = (int(cs[w, i]), int(ce[w, j]))
                        spans[key] = max(spans.get(key, -np.inf), float(start[w, i] + end[w, j]))
        want = sorted(spans.items(), key=lambda kv: -kv[1])[:k]
        mine = ranked["example"] == ex
        got = list(zip(ranked["char_start"][mine].tolist(), ranked["char_end"][mine].tolist(), strict=True))
        assert got == [key for key, _ in want]
        assert ranked["score"][mine] == pytest.approx([score for _, score in want], rel=1e-6)
        assert got[0] == (best.char_start[ex], best.char_end[ex])
        assert ranked["probability"][mine][0] == best.probability[ex]  # the same softmax, within its window
        assert np.all(np.diff(ranked["score"][mine]) <= 0) and np.all(ranked["probability"][mine] <= 1)
