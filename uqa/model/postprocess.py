"""Start/end logits of every window -> one answer span per example, vectorized with numpy.

What the seed's argmax(start), argmax(end) lacks: for every example, over all of its windows, the best
of the n_best x n_best start/end pairs with end >= start, both tokens inside the context, and at
most `max_answer_length` tokens long. The answer is then sliced from the context by character
offsets (never decoded from tokens). In SQuAD2 mode the example's null score is the minimum over its
windows of start_logit[CLS] + end_logit[CLS]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEG = np.float32(-np.inf)


@dataclass
class ExampleSpans:
    example: np.ndarray  # example keys (sorted unique values of feature_to_example)
    feature: np.ndarray  # the feature the span was taken from (-1: none)
    start_token: np.ndarray  # token positions in that feature (-1: none)
    end_token: np.ndarray
    char_start: np.ndarray  # character span in the context (-1: none)
    char_end: np.ndarray
    score: np.ndarray  # start_logit + end_logit of the span (-inf: none)
    probability: np.ndarray  # softmax(start)[s] * softmax(end)[e] within its window
    null_score: np.ndarray  # min over windows of start_logit[cls] + end_logit[cls]

    def texts(self, contexts: list[str] | dict) -> list[str]:
        """Answer texts sliced from the contexts; trims (in place) the whitespace some tokenizers'
        offsets include (a Metaspace piece's offsets can cover the space before the word)."""
        out = []
        for i, (k, s, e) in enumerate(zip(self.example.tolist(), self.char_start.tolist(), self.char_end.tolist(),
                                          strict=True)):
            if s < 0:
                out.append("")
                continue
            text = contexts[k][s:e]
            lead = len(text) - len(text.lstrip())
            trail = len(text) - len(text.rstrip())
            if lead or trail:
                self.char_start[i] = s + lead
                self.char_end[i] = max(s + lead, e - trail)
                text = text.strip()
            out.append(text)
        return out


def pad_ragged(values: np.ndarray, row_splits: np.ndarray, fill, dtype) -> np.ndarray:
    """Flat values with row_splits -> [rows, max_len] array padded with `fill`."""
    lengths = np.diff(row_splits)
    out = np.full((len(lengths), int(lengths.max()) if len(lengths) else 0), fill, dtype=dtype)
    mask = np.arange(out.shape[1])[None, :] < lengths[:, None]
    out[mask] = values
    return out


def _softmax_log_norm(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """log-sum-exp over valid positions per row (float32, in place on a copy)."""
    x = np.array(logits, dtype=np.float32)
    x[~valid] = NEG
    m = np.max(x, axis=1, keepdims=True)
    m[~np.isfinite(m)] = 0.0
    x -= m
    np.exp(x, out=x)
    return m[:, 0].astype(np.float64) + np.log(x.sum(axis=1, dtype=np.float64))


def _exhaustive_best(start: np.ndarray, end: np.ndarray, ctx: np.ndarray, max_len: int):
    """Best valid span over *all* pairs (used only for windows whose top-k pairs hold no valid one)."""
    n, length = start.shape
    best = np.full(n, NEG, dtype=np.float32)
    best_s = np.full(n, -1, dtype=np.int64)
    best_e = np.full(n, -1, dtype=np.int64)
    for d in range(min(max_len, length)):
        score = start[:, : length - d] + end[:, d:]
        ok = ctx[:, : length - d] & ctx[:, d:]
        score = np.where(ok, score, NEG)
        j = np.argmax(score, axis=1)
        val = score[np.arange(n), j]
        better = val > best
        best = np.where(better, val, best)
        best_s = np.where(better, j, best_s)
        best_e = np.where(better, j + d, best_e)
    return best, best_s, best_e


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_mask: np.ndarray,
    feature_to_example: np.ndarray,
    char_start: np.ndarray,
    char_end: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
    cls_index: int = 0,
) -> ExampleSpans:
    """All arrays are [features, max_len] (padding: context_mask False). Returns one span per example."""
    start_logits = np.asarray(start_logits, dtype=np.float32)
    end_logits = np.asarray(end_logits, dtype=np.float32)
    ctx = np.asarray(context_mask, dtype=bool)
    feat_score, feat_s, feat_e = best_span_per_window(start_logits, end_logits, ctx, n_best, max_answer_length)
    null = start_logits[:, cls_index] + end_logits[:, cls_index]
    examples, best_feat, null_min = _best_window_per_example(feature_to_example, feat_score, null)

    bs, be = feat_s[best_feat], feat_e[best_feat]
    ok = bs >= 0
    safe_s, safe_e = np.where(ok, bs, 0), np.where(ok, be, 0)
    cs = np.where(ok, char_start[best_feat, safe_s], -1)
    ce = np.where(ok, char_end[best_feat, safe_e], -1)
    prob = _span_probability(start_logits[best_feat], end_logits[best_feat], ctx[best_feat], safe_s, safe_e,
                             cls_index)
    return ExampleSpans(
        example=examples,
        feature=np.where(ok, best_feat, -1),
        start_token=np.where(ok, bs, -1),
        end_token=np.where(ok, be, -1),
        char_start=cs.astype(np.int64),
        char_end=ce.astype(np.int64),
        score=feat_score[best_feat].astype(np.float64),
        probability=np.where(ok, prob, 0.0).astype(np.float64),
        null_score=null_min,
    )


def _candidate_pairs(start_logits: np.ndarray, end_logits: np.ndarray, ctx: np.ndarray, n_best: int,
                     max_answer_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates of every window: the n_best starts x n_best ends inside the context, scored
    start+end where the span is valid (start <= end, at most max_answer_length tokens), NEG where not.
    Returns (pair [windows, k*k], start token indices [windows, k], end token indices [windows, k]);
    pair's flat index i is start s_idx[:, i // k] with end e_idx[:, i % k]."""
    n_feat, length = start_logits.shape
    k = min(n_best, length)
    s_masked = np.where(ctx, start_logits, NEG)
    e_masked = np.where(ctx, end_logits, NEG)
    # indices of the k largest logits per window (order inside the k does not matter)
    s_idx = np.argpartition(-s_masked, k - 1, axis=1)[:, :k]
    e_idx = np.argpartition(-e_masked, k - 1, axis=1)[:, :k]
    s_val = np.take_along_axis(s_masked, s_idx, axis=1)
    e_val = np.take_along_axis(e_masked, e_idx, axis=1)
    span_len = e_idx[:, None, :] - s_idx[:, :, None] + 1
    valid = (
        np.isfinite(s_val)[:, :, None]
        & np.isfinite(e_val)[:, None, :]
        & (span_len >= 1)
        & (span_len <= max_answer_length)
    )
    pair = np.where(valid, s_val[:, :, None] + e_val[:, None, :], NEG).reshape(n_feat, k * k)
    return pair, s_idx, e_idx


def best_span_per_window(start_logits: np.ndarray, end_logits: np.ndarray, ctx: np.ndarray, n_best: int,
                         max_answer_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window: the highest start+end score over valid spans (inside the context, start <= end,
    at most max_answer_length tokens) among the n_best starts x n_best ends, and its token indices;
    -1 where the window has no context. When no top pair is valid, every span is searched."""
    pair, s_idx, e_idx = _candidate_pairs(start_logits, end_logits, ctx, n_best, max_answer_length)
    k = s_idx.shape[1]
    rows = np.arange(len(pair))
    flat = np.argmax(pair, axis=1)
    feat_score = pair[rows, flat]
    feat_s = s_idx[rows, flat // k].astype(np.int64)
    feat_e = e_idx[rows, flat % k].astype(np.int64)

    missing = ~np.isfinite(feat_score) & ctx.any(axis=1)
    if missing.any():  # the top-k pairs were all invalid (e.g. every top end before every top start)
        sc, ss, se = _exhaustive_best(start_logits[missing], end_logits[missing], ctx[missing], max_answer_length)
        feat_score[missing], feat_s[missing], feat_e[missing] = sc, ss, se
    none = ~np.isfinite(feat_score)
    feat_s[none] = -1
    feat_e[none] = -1
    return feat_score, feat_s, feat_e


def _best_window_per_example(feature_to_example: np.ndarray, feat_score: np.ndarray,
                             null: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The example ids (sorted), the best window of each (first on ties), and each one's minimum null score."""
    rows = np.arange(len(feat_score))
    examples = np.unique(feature_to_example)
    inverse = np.searchsorted(examples, feature_to_example)
    order = np.lexsort((rows, -np.where(np.isfinite(feat_score), feat_score, -np.inf), inverse))
    _, first_in_group = np.unique(inverse[order], return_index=True)
    null_min = np.full(len(examples), np.inf, dtype=np.float64)
    np.minimum.at(null_min, inverse, null.astype(np.float64))
    return examples, order[first_in_group], null_min


def _span_probability(start_logits: np.ndarray, end_logits: np.ndarray, ctx: np.ndarray, s: np.ndarray,
                      e: np.ndarray, cls_index: int) -> np.ndarray:
    """Probability of span (s, e) within its window: softmax over the context tokens and CLS."""
    rows = np.arange(len(s))
    allowed = ctx.copy()
    allowed[:, cls_index] = True
    ls = _softmax_log_norm(start_logits, allowed)
    le = _softmax_log_norm(end_logits, allowed)
    return np.exp(start_logits[rows, s] - ls + end_logits[rows, e] - le)


def no_answer_margin(spans: ExampleSpans) -> np.ndarray:
    """null - best span: above the threshold, the prediction is "" (no answer)."""
    return np.where(np.isfinite(spans.score), spans.null_score - spans.score, np.inf)


def ranked_spans(start_logits: np.ndarray, end_logits: np.ndarray, context_mask: np.ndarray,
                 feature_to_example: np.ndarray, char_start: np.ndarray, char_end: np.ndarray, n_best: int = 20,
                 max_answer_length: int = 30, k: int = 1, cls_index: int = 0) -> dict[str, np.ndarray]:
    """The `k` best distinct character spans of each example, best first: the same candidates as
    `best_spans` (per window, the valid pairs among the n_best starts x n_best ends, or the exhaustive
    best where none is valid), ranked by start+end score over all of the example's windows, ties to the
    earlier window and pair, so the first is `best_spans`' answer. A span found in several (overlapping)
    windows counts once, with its best score. Returns flat arrays sorted by example, then rank:
    example, char_start, char_end, score, probability (softmax within its window, as best_spans')."""
    start_logits = np.asarray(start_logits, dtype=np.float32)
    end_logits = np.asarray(end_logits, dtype=np.float32)
    ctx = np.asarray(context_mask, dtype=bool)
    pair, s_idx, e_idx = _candidate_pairs(start_logits, end_logits, ctx, n_best, max_answer_length)
    n_feat, kk = s_idx.shape
    m = min(k, kk * kk)
    top = np.argsort(-pair, axis=1, kind="stable")[:, :m]  # ties keep the flat order argmax would take
    top_score = np.take_along_axis(pair, top, axis=1)
    keep = np.isfinite(top_score)
    feat = np.repeat(np.arange(n_feat), m).reshape(n_feat, m)[keep]
    flat = top[keep]
    score = top_score[keep]
    s = s_idx[feat, flat // kk]
    e = e_idx[feat, flat % kk]
    missing = ~keep.any(axis=1) & ctx.any(axis=1)
    if missing.any():  # no valid top pair: the exhaustive best, as best_span_per_window takes it
        sc, ss, se = _exhaustive_best(start_logits[missing], end_logits[missing], ctx[missing], max_answer_length)
        found = np.isfinite(sc)
        feat = np.concatenate([feat, np.flatnonzero(missing)[found]])
        flat = np.concatenate([flat, np.zeros(int(found.sum()), dtype=flat.dtype)])
        score = np.concatenate([score, sc[found]])
        s = np.concatenate([s, ss[found]])
        e = np.concatenate([e, se[found]])
    example = np.asarray(feature_to_example)[feat]
    cs, ce = char_start[feat, s], char_end[feat, e]
    order = np.lexsort((flat, feat, -score, example))
    example, cs, ce, score, feat, s, e = (a[order] for a in (example, cs, ce, score, feat, s, e))
    key = np.stack([example.astype(np.int64), cs.astype(np.int64), ce.astype(np.int64)], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    first = np.sort(first)  # the best occurrence of each span, in rank order
    example, cs, ce, score, feat, s, e = (a[first] for a in (example, cs, ce, score, feat, s, e))
    group_start = np.r_[0, np.flatnonzero(np.diff(example)) + 1]
    rank = np.arange(len(example)) - np.repeat(group_start, np.diff(np.r_[group_start, len(example)]))
    top_k = rank < k
    example, cs, ce, score, feat, s, e = (a[top_k] for a in (example, cs, ce, score, feat, s, e))
    prob = _span_probability(start_logits[feat], end_logits[feat], ctx[feat], s, e, cls_index)
    return {"example": example, "char_start": cs.astype(np.int64), "char_end": ce.astype(np.int64),
            "score": score.astype(np.float64), "probability": prob.astype(np.float64)}
