"""Postprocessing: the pipeline's vectorized span search vs a per-window Python loop over n_best x n_best.

All validation windows of ../shared/data/uqa/validation.parquet (every row an example) with the
Urdu tokenizer, fixed-seed random logits. Both sides must pick identical spans.

    python benchmarks/postprocess_bench.py [--shared ../shared] [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from common import median, shared_dir, table, timed, write_result

from uqa.model.postprocess import best_spans, pad_ragged
from uqa.text.encoding import encode_windows
from uqa.text.tokenizer import load_tokenizer


def reference_loop(start, end, ctx, owner, cs, ce, contexts, n_best, max_len):
    """The straightforward way (HF run_qa's postprocess_qa_predictions, with the context mask applied
    before the top-k as the pipeline does): per window, candidates from n_best x n_best pairs as
    dicts with their text, then the best candidate per example."""
    candidates: dict[int, list[dict]] = {}
    for w in range(start.shape[0]):
        s_logits = np.where(ctx[w], start[w], -np.inf)
        e_logits = np.where(ctx[w], end[w], -np.inf)
        s_idx = np.argsort(s_logits)[-1 : -n_best - 1 : -1].tolist()
        e_idx = np.argsort(e_logits)[-1 : -n_best - 1 : -1].tolist()
        ex = int(owner[w])
        for i in s_idx:
            for j in e_idx:
                if not ctx[w, i] or not ctx[w, j] or j < i or j - i + 1 > max_len:
                    continue
                candidates.setdefault(ex, []).append({
                    "score": float(start[w, i] + end[w, j]), "window": w, "start": i, "end": j,
                    "text": contexts[ex][cs[w, i]:ce[w, j]],
                })
    best = {}
    for ex, cands in candidates.items():
        top = max(cands, key=lambda c: c["score"])  # first of equal scores, as the vectorized side
        best[ex] = (top["score"], top["window"], top["start"], top["end"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-best", type=int, default=20)
    parser.add_argument("--max-answer-length", type=int, default=30)
    args = parser.parse_args()
    shared = shared_dir(args.shared)
    rows = pd.read_parquet(shared / "data" / "uqa" / "validation.parquet")
    tok = load_tokenizer(str(shared / "models" / "urdu-xlmr-32k"))
    windows = encode_windows(tok.backend_tokenizer, rows["question"].str.strip().tolist(), rows["context"].tolist(),
                             512, 128)
    cs = pad_ragged(windows.char_start, windows.row_splits, -1, np.int64)
    ce = pad_ragged(windows.char_end, windows.row_splits, -1, np.int64)
    ctx = (cs >= 0) & (ce > cs)
    real = pad_ragged(np.ones(len(windows.input_ids), bool), windows.row_splits, False, bool)
    rng = np.random.default_rng(0)
    start = np.where(real, rng.normal(size=real.shape), -np.inf).astype(np.float32)
    end = np.where(real, rng.normal(size=real.shape), -np.inf).astype(np.float32)
    owner = windows.window_to_example
    contexts = rows["context"].tolist()
    n_best, max_len = args.n_best, args.max_answer_length

    ours_t, ref_t = [], []
    for _ in range(args.repeats):
        t, spans = timed(lambda: best_spans(start, end, ctx, owner, cs, ce, n_best=n_best, max_answer_length=max_len))
        ours_t.append(t)
        t, ref = timed(lambda: reference_loop(start, end, ctx, owner, cs, ce, contexts, n_best, max_len))
        ref_t.append(t)
    mismatches = 0
    for k, ex in enumerate(spans.example.tolist()):
        score, w, i, j = ref[ex]
        if (spans.feature[k], spans.start_token[k], spans.end_token[k]) != (w, i, j):
            mismatches += 1
    ours, loop = median(ours_t), median(ref_t)
    result = {
        "examples": int(len(spans.example)),
        "windows": int(windows.n_windows),
        "n_best": n_best,
        "max_answer_length": max_len,
        "ours_s": ours_t,
        "loop_s": ref_t,
        "median_ours_s": ours,
        "median_loop_s": loop,
        "speedup": loop / ours,
        "identical_predictions": mismatches == 0,
        "mismatches": mismatches,
    }
    print(table(["side", f"median s (of {args.repeats})", "windows/s"],
                [["per-window Python loop (reference)", loop, windows.n_windows / loop],
                 ["vectorized (pipeline)", ours, windows.n_windows / ours]]))
    print(f"speedup {loop / ours:.1f}x, identical predictions: {mismatches == 0} ({mismatches} mismatches)")
    write_result("postprocess", result)
    if mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
