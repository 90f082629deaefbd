"""The labellers agree: the first, token-level implementation and the binary search over each
window's tokens (both kept here as references), and the search over each example's context tokens
that the tokenize stage uses (`EncodedPairs.labels`), on real UQA and edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import UQA_DIR, URDU_TOKENIZER, needs_shared

from uqa.text.encoding import encode_pairs
from uqa.text.windows import NO_CHAR, EncodedPairs, Labels, PairTemplate, Windows, _Texts


def reference_label_windows(
    windows: Windows, answer_start_char: np.ndarray, answer_end_char: np.ndarray, cls_index: int = 0
) -> Labels:
    """The first implementation (token-level reduceat), kept as a reference. Token labels: the tightest token span covering [answer_start_char, answer_end_char).

    Start is the context token with the largest start <= answer start, end the token with the
    smallest end >= answer end; on ties the later token (XLM-R's lone '▁' piece shares its offsets
    with the next token). A window whose context does not hold the whole answer,
    and every window of an unanswerable example (start = -1), is labelled `cls_index`."""
    nw = windows.n_windows
    tok_win = windows.token_window()
    pos = np.arange(len(windows.input_ids), dtype=np.int64) - windows.row_splits[:-1][tok_win]
    s = answer_start_char[windows.window_to_example].astype(np.int64)
    e = answer_end_char[windows.window_to_example].astype(np.int64)
    cs = windows.char_start.astype(np.int64)
    ce = windows.char_end.astype(np.int64)
    ctx = (cs != NO_CHAR) & (ce > cs)  # zero-width pieces cover no character
    big = np.int64(1) << 40
    starts = windows.row_splits[:-1]
    win_min = np.minimum.reduceat(np.where(ctx, cs, big), starts)
    win_max = np.maximum.reduceat(np.where(ctx, ce, -1), starts)
    has = (s >= 0) & (win_min <= s) & (win_max >= e)

    ts, te = s[tok_win], e[tok_win]
    overlap = ctx & (cs < te) & (ce > ts) & has[tok_win]
    width = np.int64(1) << 20  # > any window length
    # start: max over overlapping tokens with start <= s of (start, pos); else the first overlapping token
    key = np.where(overlap & (cs <= ts), cs * width + pos, -1)
    best = np.maximum.reduceat(key, starts)
    first_overlap = np.minimum.reduceat(np.where(overlap, pos, big), starts)
    start_pos = np.where(best >= 0, best % width, first_overlap)
    # end: min over overlapping tokens with end >= e of end, the later token on ties (as for the
    # start, the lone '▁' shares its offsets with the next token); else the last overlapping token
    key = np.where(overlap & (ce >= te), ce * width + (width - 1 - pos), big)
    best = np.minimum.reduceat(key, starts)
    last_overlap = np.maximum.reduceat(np.where(overlap, pos, -1), starts)
    end_pos = np.where(best < big, width - 1 - best % width, last_overlap)
    end_pos = np.maximum(end_pos, start_pos)

    has &= first_overlap < big  # an answer made only of characters no token covers cannot be labelled
    start_pos = np.where(has, start_pos, cls_index).astype(np.int32)
    end_pos = np.where(has, end_pos, cls_index).astype(np.int32)
    assert len(start_pos) == nw
    return Labels(start_pos, end_pos, has)



def label_windows(
    windows: Windows, answer_start_char: np.ndarray, answer_end_char: np.ndarray, cls_index: int = 0
) -> Labels:
    """The second implementation (the tokenize stage's until it searched contexts instead of windows),
    kept as a reference: the same rules as `EncodedPairs.labels`, on windows with their offsets.

    Context offsets rise within a window, so each label is two binary searches over the window's
    context tokens (all windows at once: keys are window * 2^32 + offset)."""
    nw = windows.n_windows
    cs, ce = windows.char_start, windows.char_end
    valid = np.flatnonzero((cs != NO_CHAR) & (ce > cs))  # zero-width pieces cover no character
    win = np.repeat(np.arange(nw, dtype=np.int64), windows.lengths)[valid]
    shift = np.int64(1) << 32
    key_s = win * shift + cs[valid]
    key_e = win * shift + ce[valid]
    # each window's valid context tokens are valid[lo[w]:hi[w]]
    lo = np.searchsorted(win, np.arange(nw), side="left")
    hi = np.searchsorted(win, np.arange(nw), side="right")
    s = answer_start_char[windows.window_to_example].astype(np.int64)
    e = answer_end_char[windows.window_to_example].astype(np.int64)
    nonempty = hi > lo
    first_cs = np.where(nonempty, cs[valid[np.minimum(lo, len(valid) - 1)]], -1) if len(valid) else lo * 0 - 1
    last_ce = np.where(nonempty, ce[valid[np.maximum(hi - 1, 0)]], -1) if len(valid) else lo * 0 - 1
    has = (s >= 0) & nonempty & (first_cs <= s) & (last_ce >= e)
    w = np.arange(nw, dtype=np.int64)
    base = w * shift
    # start: the last token starting at or before s; past it if it ends before s (uncovered chars)
    i = np.clip(np.searchsorted(key_s, base + s, side="right") - 1, lo, np.maximum(hi - 1, lo))
    if len(valid):
        i = np.where((ce[valid[np.minimum(i, len(valid) - 1)]] <= s) & (i + 1 < hi), i + 1, i)
    # end: the first token ending at or after e, then its twin if one follows; before it if it
    # starts at or after e
    j = np.clip(np.searchsorted(key_e, base + e, side="left"), lo, np.maximum(hi - 1, lo))
    if len(valid):
        jv = valid[np.minimum(j, len(valid) - 1)]
        j = np.where((cs[jv] >= e) & (j - 1 >= lo), j - 1, j)
        j = np.clip(np.searchsorted(key_e, key_e[np.minimum(j, len(valid) - 1)], side="right") - 1, lo,
                    np.maximum(hi - 1, lo))
    j = np.maximum(i, j)
    row = windows.row_splits[:-1]
    if len(valid):
        vi = valid[np.minimum(i, len(valid) - 1)]
        start_pos = vi - row
        end_pos = valid[np.minimum(j, len(valid) - 1)] - row
        has &= (ce[vi] > s) & (cs[vi] < e)  # an answer no token overlaps cannot be labelled
    else:
        start_pos = end_pos = np.zeros(nw, dtype=np.int64)
    start_pos = np.where(has, start_pos, cls_index).astype(np.int32)
    end_pos = np.where(has, end_pos, cls_index).astype(np.int32)
    row = windows.row_splits[:-1]
    start_char = np.where(has, cs[row + start_pos], -1).astype(np.int32) if nw else start_pos
    end_char = np.where(has, ce[row + end_pos], -1).astype(np.int32) if nw else end_pos
    return Labels(start_pos, end_pos, has, start_char, end_char)


@needs_shared
@pytest.mark.parametrize(("max_len", "stride"), [(512, 128), (128, 32), (96, 8)])
def test_labels_match_the_reference(max_len, stride):
    from uqa.text.tokenizer import load_tokenizer

    df = pd.read_parquet(UQA_DIR / "validation.parquet")
    answer = df["answer"].fillna("")
    starts = np.where(df["is_impossible"], -1,
                      df["answer_start"] + answer.str.len() - answer.str.lstrip().str.len())
    ends = starts + answer.str.strip().str.len().to_numpy()
    tok = load_tokenizer(str(URDU_TOKENIZER)).backend_tokenizer
    encoded = encode_pairs(tok, df["question"].str.strip().tolist(), df["context"].tolist())
    layout = encoded.layout(max_len, stride)
    windows = encoded.assemble(layout)
    new, ref = label_windows(windows, starts, ends), reference_label_windows(windows, starts, ends)
    assert np.array_equal(new.has_answer, ref.has_answer)
    assert np.array_equal(new.start_positions, ref.start_positions)
    assert np.array_equal(new.end_positions, ref.end_positions)
    assert new.has_answer.sum() > 0.5 * (starts >= 0).sum()
    by_context = encoded.labels(layout, starts, ends)
    for field in ("has_answer", "start_positions", "end_positions", "start_char", "end_char"):
        assert np.array_equal(getattr(by_context, field), getattr(new, field)), field
    # the label's characters are those of its tokens
    row = windows.row_splits[:-1][new.has_answer]
    assert np.array_equal(new.start_char[new.has_answer], windows.char_start[row + new.start_positions[new.has_answer]])
    # windows assembled without offsets hold the same tokens
    bare = encoded.assemble(layout, with_offsets=False)
    assert bare.char_start is None and np.array_equal(bare.input_ids, windows.input_ids)


def test_uncovered_and_twin_offsets():
    # tokens: CLS, q, SEP, [ctx: (0,3) (4,5)* (4,5) (6,9) (9,9)zero-width (10,12)], SEP   (* the lone "▁")
    cs = np.array([NO_CHAR, NO_CHAR, NO_CHAR, 0, 4, 4, 6, 9, 10, NO_CHAR], dtype=np.int32)
    ce = np.array([NO_CHAR, NO_CHAR, NO_CHAR, 3, 5, 5, 9, 9, 12, NO_CHAR], dtype=np.int32)
    w = Windows(np.zeros(10, np.int32), None, cs, ce, np.array([0, 10]), np.array([0], np.int32))
    # (3, 9) starts on an uncovered space: the first token overlapping the answer starts the span
    # the same pair as EncodedPairs: CLS q SEP context SEP
    one = np.zeros(1, np.int8)
    template = PairTemplate(np.array([0], np.int32), np.array([2], np.int32), np.array([2], np.int32), one, one, one,
                            0, 0)
    context_offsets = np.stack([cs[3:9], ce[3:9]], axis=1)
    encoded = EncodedPairs(template, _Texts(np.array([7], np.int32), np.zeros((1, 2), np.int32), np.array([0, 1])),
                           _Texts(np.zeros(6, np.int32), context_offsets, np.array([0, 6])), np.array([0]), False)
    layout = encoded.layout(64, 8)
    assert np.array_equal(encoded.assemble(layout).char_start, cs)
    cases = {(4, 5): (5, 5), (0, 5): (3, 5), (3, 9): (4, 6), (9, 12): (8, 8), (0, 12): (3, 8), (13, 14): None}
    for (s, e), want in cases.items():
        got = label_windows(w, np.array([s]), np.array([e]))
        ref = reference_label_windows(w, np.array([s]), np.array([e]))
        by_context = encoded.labels(layout, np.array([s]), np.array([e]))
        assert (got.start_positions[0], got.end_positions[0], got.has_answer[0]) == \
            (ref.start_positions[0], ref.end_positions[0], ref.has_answer[0]) == \
            (by_context.start_positions[0], by_context.end_positions[0], by_context.has_answer[0])
        if want is None:
            assert not got.has_answer[0]
        else:
            assert (got.start_positions[0], got.end_positions[0]) == want, (s, e)


def test_streamed_chunks_and_spill_files_give_the_whole_encoding(tmp_path, monkeypatch):
    """The tokenize stage's path (chunks of rows through one tokenizer pipeline, tokens kept in spill
    files between passes) gives the windows and labels of one `encode_pairs` over all rows."""
    from uqa.text import encoding
    from uqa.text.encoding import encode_stream, prepare_backend
    from uqa.text.tokenizer import train_tokenizer

    monkeypatch.setattr(encoding, "CHUNK", 3)  # several tokenizer calls per chunk, some across chunks
    rng = np.random.default_rng(0)
    words = [f"لفظ{i}" for i in range(40)]
    contexts, questions, starts, ends = [], [], [], []
    paragraphs = [" ".join(rng.choice(words, size=int(rng.integers(5, 40)))) for _ in range(9)]
    for i in range(31):
        context = paragraphs[int(rng.integers(0, len(paragraphs)))]  # repeated contexts, as in SQuAD
        answer = context.split()[int(rng.integers(0, len(context.split())))]
        s = context.index(answer) if i % 5 else -1
        contexts.append(context)
        questions.append(f"سوال {i} کیا ہے؟")
        starts.append(s)
        ends.append(s + len(answer) if s >= 0 else -1)
    starts, ends = np.array(starts), np.array(ends)
    tok = train_tokenizer(paragraphs + questions, vocab_size=300).backend_tokenizer
    whole = encode_pairs(tok, questions, contexts)
    layout = whole.layout(24, 4)
    want_windows, want_labels = whole.assemble(layout), whole.labels(layout, starts, ends)
    assert want_windows.n_windows > 2 * len(questions)  # long contexts in several windows

    backend = prepare_backend(tok)
    template = PairTemplate.of(backend)
    bounds = [(0, 7), (7, 8), (8, 20), (20, 31)]
    chunks = list(encode_stream(backend, template, ((questions[a:b], contexts[a:b]) for a, b in bounds)))
    assert len(chunks) == len(bounds)
    ids, labels_start, labels_end, has = [], [], [], []
    for k, ((a, b), encoded) in enumerate(zip(bounds, chunks, strict=True)):
        alone = encode_pairs(tok, questions[a:b], contexts[a:b])
        for part in ("questions", "contexts"):
            for field in ("ids", "offsets", "splits"):
                assert np.array_equal(getattr(getattr(encoded, part), field), getattr(getattr(alone, part), field))
        encoded.save(tmp_path / f"{k}.npz")
        loaded = EncodedPairs.load(tmp_path / f"{k}.npz", template)
        assert np.array_equal(loaded.context_of, alone.context_of)
        lay = loaded.layout(24, 4)
        windows = loaded.assemble(lay)
        labels = loaded.labels(lay, starts[a:b], ends[a:b])
        assert loaded.max_token_id() == int(windows.input_ids.max())
        ids += [windows.input_ids[x:y].tolist() for x, y in zip(windows.row_splits[:-1], windows.row_splits[1:],
                                                                 strict=True)]
        labels_start.append(labels.start_positions)
        labels_end.append(labels.end_positions)
        has.append(labels.has_answer)
    splits = want_windows.row_splits
    assert ids == [want_windows.input_ids[x:y].tolist() for x, y in zip(splits[:-1], splits[1:], strict=True)]
    assert np.array_equal(np.concatenate(labels_start), want_labels.start_positions)
    assert np.array_equal(np.concatenate(labels_end), want_labels.end_positions)
    assert np.array_equal(np.concatenate(has), want_labels.has_answer) and want_labels.has_answer.any()
