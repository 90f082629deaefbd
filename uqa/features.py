"""Question/context pairs -> sliding-window features with token labels, as flat numpy arrays.

One tokenizer pass does the work: with `max_seq_length: auto` the pairs are first encoded whole
(that pass gives the lengths the limit is computed from, and it *is* the final encoding of every
pair that fits), and only the pairs longer than the limit are encoded again with truncation,
stride and overflow. Labels are computed for all windows at once with numpy."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

NO_CHAR = -1  # char offset stored for tokens that are not context (question, specials)


@dataclass
class Windows:
    """Flat storage of windows: window w owns tokens row_splits[w]:row_splits[w+1]."""

    input_ids: np.ndarray  # int32 [n_tokens]
    token_type_ids: np.ndarray | None  # int8 [n_tokens] (BERT-style models only)
    char_start: np.ndarray  # int32 [n_tokens], NO_CHAR outside the context
    char_end: np.ndarray  # int32 [n_tokens]
    row_splits: np.ndarray  # int64 [n_windows + 1]
    window_to_example: np.ndarray  # int32 [n_windows]

    @property
    def n_windows(self) -> int:
        return len(self.row_splits) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def token_window(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_windows, dtype=np.int64), self.lengths)

    def take(self, windows: np.ndarray) -> Windows:
        """Subset of windows (in the given order)."""
        lengths = self.lengths[windows]
        starts = self.row_splits[:-1][windows]
        idx = _ranges(starts, lengths)
        splits = np.zeros(len(windows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=splits[1:])
        return Windows(
            input_ids=self.input_ids[idx],
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids[idx],
            char_start=self.char_start[idx],
            char_end=self.char_end[idx],
            row_splits=splits,
            window_to_example=self.window_to_example[windows],
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+l) for each (s, l), vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def _encodings_to_windows(encodings: list, example_of_encoding: np.ndarray, with_type_ids: bool) -> Windows:
    ids: list = []
    types: list = []
    seq: list = []
    offs: list = []
    owner: list[int] = []
    for enc, ex in zip(encodings, example_of_encoding, strict=True):
        for window in (enc, *enc.overflowing):
            ids.append(window.ids)
            seq.append(window.sequence_ids)
            offs.append(window.offsets)
            if with_type_ids:
                types.append(window.type_ids)
            owner.append(int(ex))
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    splits = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=splits[1:])
    flat_ids = np.fromiter((t for w in ids for t in w), dtype=np.int32, count=int(splits[-1]))
    # sequence id 1 marks context tokens; None (specials) and 0 (question) are not context
    is_ctx = np.fromiter((s == 1 for w in seq for s in w), dtype=bool, count=int(splits[-1]))
    flat_off = np.fromiter((c for w in offs for o in w for c in o), dtype=np.int32, count=2 * int(splits[-1]))
    flat_off = flat_off.reshape(-1, 2)
    char_start = np.where(is_ctx, flat_off[:, 0], NO_CHAR).astype(np.int32)
    char_end = np.where(is_ctx, flat_off[:, 1], NO_CHAR).astype(np.int32)
    type_ids = None
    if with_type_ids:
        type_ids = np.fromiter((t for w in types for t in w), dtype=np.int8, count=int(splits[-1]))
    return Windows(flat_ids, type_ids, char_start, char_end, splits, np.asarray(owner, dtype=np.int32))


def _concat(parts: list[Windows]) -> Windows:
    parts = [p for p in parts if p.n_windows]
    if not parts:
        raise ValueError("no windows")
    if len(parts) == 1:
        return parts[0]
    splits = [parts[0].row_splits]
    base = parts[0].row_splits[-1]
    for p in parts[1:]:
        splits.append(p.row_splits[1:] + base)
        base += p.row_splits[-1]
    return Windows(
        input_ids=np.concatenate([p.input_ids for p in parts]),
        token_type_ids=None if parts[0].token_type_ids is None else np.concatenate([p.token_type_ids for p in parts]),
        char_start=np.concatenate([p.char_start for p in parts]),
        char_end=np.concatenate([p.char_end for p in parts]),
        row_splits=np.concatenate(splits),
        window_to_example=np.concatenate([p.window_to_example for p in parts]),
    )


def pair_lengths(tokenizer: Tokenizer, questions: list[str], contexts: list[str]) -> np.ndarray:
    """Token count of each whole question+context pair (special tokens included)."""
    backend = copy.deepcopy(tokenizer)
    backend.no_truncation()
    backend.no_padding()
    encodings = backend.encode_batch(list(zip(questions, contexts, strict=True)))
    return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))


def encode_windows(
    tokenizer: Tokenizer,
    questions: list[str],
    contexts: list[str],
    max_seq_length: int,
    stride: int,
    with_type_ids: bool = False,
    whole: list | None = None,
) -> Windows:
    """Sliding windows over each context (question kept whole, `stride` tokens of overlap).

    `whole`, if given, holds each pair's untruncated encoding from an earlier pass; pairs that fit
    are taken from it and only the longer ones are encoded again."""
    n = len(questions)

    def truncating() -> Tokenizer:
        t = copy.deepcopy(tokenizer)
        t.no_padding()
        t.enable_truncation(max_seq_length, stride=stride, strategy="only_second")
        return t

    if whole is None:
        encodings = truncating().encode_batch(list(zip(questions, contexts, strict=True)))
        return _encodings_to_windows(encodings, np.arange(n), with_type_ids)
    fits = np.fromiter((len(e.ids) <= max_seq_length for e in whole), dtype=bool, count=n)
    short = np.flatnonzero(fits)
    long = np.flatnonzero(~fits)
    parts = [_encodings_to_windows([whole[i] for i in short], short, with_type_ids)]
    if len(long):
        enc = truncating().encode_batch([(questions[i], contexts[i]) for i in long])
        parts.append(_encodings_to_windows(enc, long, with_type_ids))
    merged = _concat(parts)
    # back to example order (stable, so an example's windows keep their order)
    order = np.argsort(merged.window_to_example, kind="stable")
    return merged.take(order)


def encode_whole(tokenizer: Tokenizer, questions: list[str], contexts: list[str]) -> list:
    backend = copy.deepcopy(tokenizer)
    backend.no_truncation()
    backend.no_padding()
    return backend.encode_batch(list(zip(questions, contexts, strict=True)))


@dataclass
class Labels:
    start_positions: np.ndarray  # int32 [n_windows]; cls_index when the answer is not in the window
    end_positions: np.ndarray
    has_answer: np.ndarray  # bool [n_windows]: the whole answer lies inside this window


def label_windows(
    windows: Windows, answer_start_char: np.ndarray, answer_end_char: np.ndarray, cls_index: int = 0
) -> Labels:
    """Token labels: the tightest token span covering [answer_start_char, answer_end_char).

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


def span_chars(windows: Windows, window: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Character span [char_start of `start`, char_end of `end`) of token spans in the given windows."""
    base = windows.row_splits[:-1][window]
    return windows.char_start[base + start], windows.char_end[base + end]


def windows_from_table(table) -> Windows:
    """Windows back from a tokenized validation table (input_ids, offset_start/end, example_index)."""
    ids = table.column("input_ids").combine_chunks()
    splits = ids.offsets.to_numpy().astype(np.int64)
    splits = splits - splits[0]
    values = ids.flatten().to_numpy().astype(np.int32)
    types = None
    if "token_type_ids" in table.column_names:
        types = table.column("token_type_ids").combine_chunks().flatten().to_numpy().astype(np.int8)
    cs = table.column("offset_start").combine_chunks().flatten().to_numpy().astype(np.int32)
    ce = table.column("offset_end").combine_chunks().flatten().to_numpy().astype(np.int32)
    owner = table.column("example_index").to_numpy().astype(np.int64)
    return Windows(values, types, cs, ce, splits, owner)
