"""Windows and labels: question/context pairs, tokenized once (EncodedPairs), cut into the
sliding windows the tokenizer's own `truncation="only_second"` + `stride` + overflow would
build, assembled with numpy as flat arrays, and the answer's token labels of every window."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from uqa.text.segments import Cuts

NO_CHAR = -1  # char offset stored for tokens that are not context (question, specials)


@dataclass
class Windows:
    """Flat storage of windows: window w owns tokens row_splits[w]:row_splits[w+1]."""

    input_ids: np.ndarray  # int32 [n_tokens]
    token_type_ids: np.ndarray | None  # int8 [n_tokens] (BERT-style models only)
    char_start: np.ndarray | None  # int32 [n_tokens], NO_CHAR outside the context (None: not kept)
    char_end: np.ndarray | None  # int32 [n_tokens]
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

    def take(self, index: np.ndarray) -> Windows:
        """The windows at `index` (in that order), as windows of their own."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        tokens = _ranges(self.row_splits[:-1][index], lengths)
        splits = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=splits[1:])

        def pick(a):
            return None if a is None else a[tokens]

        return Windows(self.input_ids[tokens], pick(self.token_type_ids), pick(self.char_start), pick(self.char_end),
                       splits, self.window_to_example[index])


def concat_windows(parts: list[tuple[Windows, np.ndarray]]) -> Windows:
    """Windows of several encodings as one: each part's `window_to_example` mapped through its array
    (part-local example -> example of the whole)."""
    if len(parts) == 1:
        windows, examples = parts[0]
        return Windows(windows.input_ids, windows.token_type_ids, windows.char_start, windows.char_end,
                       windows.row_splits, np.asarray(examples, dtype=np.int32)[windows.window_to_example])

    def cat(name):
        arrays = [getattr(w, name) for w, _ in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    lengths = np.concatenate([w.lengths for w, _ in parts])
    splits = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=splits[1:])
    examples = np.concatenate([np.asarray(e, dtype=np.int32)[w.window_to_example] for w, e in parts])
    return Windows(cat("input_ids"), cat("token_type_ids"), cat("char_start"), cat("char_end"), splits, examples)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+l) for each (s, l), vectorized (int32 while it fits: half the
    memory traffic on tens of millions of tokens)."""
    total = int(lengths.sum())
    dtype = np.int32 if total + int(np.max(starts, initial=0)) < 2**31 else np.int64
    if total == 0:
        return np.zeros(0, dtype=dtype)
    offsets = np.repeat((starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])).astype(dtype), lengths)
    offsets += np.arange(total, dtype=dtype)
    return offsets


def _empty(with_type_ids: bool) -> Windows:
    z = np.zeros(0, dtype=np.int32)
    return Windows(z, z.astype(np.int8) if with_type_ids else None, z, z, np.zeros(1, dtype=np.int64), z)


@dataclass
class _Texts:
    """Texts tokenized without special tokens: text t owns tokens splits[t]:splits[t+1]."""

    ids: np.ndarray
    offsets: np.ndarray  # [n_tokens, 2] int32 character offsets
    splits: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.splits)

    def joined(self, cuts: Cuts) -> _Texts:
        """The texts' tokens from their pieces' (these texts are the pieces): each text's pieces in
        order, offsets shifted to where the piece starts in the text (uqa/text/segments.py)."""
        per_entry = self.lengths[cuts.piece_of]
        take = _ranges(self.splits[:-1][cuts.piece_of], per_entry)
        ends = np.zeros(len(per_entry) + 1, dtype=np.int64)
        np.cumsum(per_entry, out=ends[1:])
        offsets = self.offsets
        if len(offsets):  # texts tokenized with their offsets (contexts; questions have none)
            offsets = offsets[take] + np.repeat(cuts.piece_start.astype(offsets.dtype), per_entry)[:, None]
        return _Texts(self.ids[take], offsets, ends[cuts.entries])


@dataclass
class PairTemplate:
    """Where the tokenizer's post-processor puts special tokens around a (question, context) pair."""

    prefix: np.ndarray  # ids before the question
    middle: np.ndarray  # ids between question and context
    suffix: np.ndarray  # ids after the context
    prefix_types: np.ndarray
    middle_types: np.ndarray
    suffix_types: np.ndarray
    question_type: int
    context_type: int

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def of(cls, backend: Tokenizer) -> PairTemplate:
        enc = backend.encode("a", "b")
        seq = enc.sequence_ids
        q = [i for i, x in enumerate(seq) if x == 0]
        c = [i for i, x in enumerate(seq) if x == 1]
        if not q or not c or q[-1] >= c[0]:
            raise ValueError("the tokenizer does not encode (question, context) pairs as question then context")
        ids, types = np.asarray(enc.ids, np.int32), np.asarray(enc.type_ids, np.int8)
        cut = [slice(0, q[0]), slice(q[-1] + 1, c[0]), slice(c[-1] + 1, len(ids))]
        return cls(ids[cut[0]], ids[cut[1]], ids[cut[2]], types[cut[0]], types[cut[1]], types[cut[2]],
                   int(types[q[0]]), int(types[c[0]]))


@dataclass
class _ContextTokens:
    """Every context's tokens that cover at least one character ("valid"), searchable by character:
    the keys context * bound + offset rise through all contexts' valid tokens."""

    cs: np.ndarray  # char start of every token (valid or not)
    ce: np.ndarray  # char end of every token
    n_valid_before: np.ndarray  # n_valid_before[g] = how many valid tokens come before token g
    nv: int
    key_s: np.ndarray  # per valid token: context * bound + char start
    key_e: np.ndarray
    bound: int
    key_type: type

    @classmethod
    def of(cls, contexts: _Texts, answer_start_char: np.ndarray, answer_end_char: np.ndarray) -> _ContextTokens:
        cs, ce = contexts.offsets[:, 0], contexts.offsets[:, 1]
        is_valid = ce > cs  # zero-width pieces cover no character
        n_valid_before = np.zeros(len(cs) + 1, dtype=np.int32 if len(cs) < 2**31 else np.int64)
        np.cumsum(is_valid, out=n_valid_before[1:])
        # (int32 keys when they fit: this step is memory-bound, over every context token)
        bound = int(max(ce.max(initial=0), answer_start_char.max(initial=0), answer_end_char.max(initial=0))) + 1
        n_contexts = len(contexts.splits) - 1
        key_type = np.int32 if n_contexts * bound < 2**31 else np.int64
        owner = np.repeat(np.arange(n_contexts, dtype=key_type) * key_type(bound), contexts.lengths)[is_valid]
        return cls(cs, ce, n_valid_before, int(n_valid_before[-1]), owner + cs[is_valid], owner + ce[is_valid],
                   bound, key_type)

    def valid(self, i: np.ndarray) -> np.ndarray:
        """Token index of the i-th valid token."""
        return np.searchsorted(self.n_valid_before, (i + 1).astype(self.n_valid_before.dtype), side="left") - 1

    def answer_bounds(self, context_of: np.ndarray, s_ex: np.ndarray, e_ex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per example (valid-token numbers): the last token starting at or before its answer's start,
        the first ending at or after its answer's end."""
        example_base = context_of.astype(np.int64) * self.bound
        # (queries in the keys' type: numpy would otherwise convert the whole key array per call)
        i_ex = np.searchsorted(self.key_s, (example_base + s_ex).astype(self.key_type), side="right") - 1
        j_ex = np.searchsorted(self.key_e, (example_base + e_ex).astype(self.key_type), side="left")
        return i_ex, j_ex


@dataclass
class EncodedPairs:
    """Questions and (distinct) contexts tokenized once; windows for any max_seq_length / stride."""

    template: PairTemplate
    questions: _Texts
    contexts: _Texts
    context_of: np.ndarray  # example -> distinct context
    with_type_ids: bool

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each whole pair, special tokens included."""
        return (self.questions.lengths + self.contexts.lengths[self.context_of] + self.template.n_special)

    def max_token_id(self) -> int:
        """The largest id any window can hold: windows carry every question, every context token
        (consecutive windows of a context touch or overlap) and the template's specials."""
        t = self.template
        return int(max(self.questions.ids.max(initial=0), self.contexts.ids.max(initial=0),
                       *(x.max(initial=0) for x in (t.prefix, t.middle, t.suffix))))

    def save(self, path: str | os.PathLike) -> None:
        """The tokens (not the template) to an .npz file: the tokenize stage keeps each chunk's tokens
        on disk between its length pass and its window pass, so memory does not grow with the corpus."""
        with open(path, "wb") as fh:  # a file object: np.savez would otherwise append ".npz"
            np.savez(fh, q_ids=self.questions.ids, q_splits=self.questions.splits, c_ids=self.contexts.ids,
                     c_offsets=self.contexts.offsets, c_splits=self.contexts.splits, context_of=self.context_of)

    @classmethod
    def load(cls, path: str | os.PathLike, template: PairTemplate, with_type_ids: bool = False) -> EncodedPairs:
        with np.load(path) as z:
            questions = _Texts(z["q_ids"], np.zeros((0, 2), np.int32), z["q_splits"])
            contexts = _Texts(z["c_ids"], z["c_offsets"], z["c_splits"])
            return cls(template, questions, contexts, z["context_of"], with_type_ids)

    def layout(self, max_seq_length: int, stride: int) -> WindowLayout:
        """Where tokenizer(q, c, truncation="only_second", max_length, stride, return_overflowing_tokens)
        cuts: the context in windows of `budget` tokens, each starting `budget - stride` after the
        previous one, the last one ending at the context's end."""
        t = self.template
        q_len = self.questions.lengths
        c_len = self.contexts.lengths[self.context_of]
        budget = max_seq_length - q_len - t.n_special
        whole = c_len <= budget
        if np.any(~whole & (budget <= stride)):
            i = int(np.flatnonzero(~whole & (budget <= stride))[0])
            raise ValueError(f"example {i}: a {q_len[i]}-token question leaves {budget[i]} context tokens per "
                             f"window, not more than the stride {stride}")
        step = np.maximum(budget - stride, 1)
        n_win = np.where(whole, 1, 1 + -(-(c_len - budget) // step))
        win_ex = np.repeat(np.arange(len(q_len)), n_win)
        first = np.concatenate([[0], np.cumsum(n_win)[:-1]]).astype(np.int64)
        k = np.arange(len(win_ex)) - first[win_ex]  # window number within its example
        c_from = k * step[win_ex]
        c_n = np.minimum(c_from + budget[win_ex], c_len[win_ex]) - c_from
        qn = q_len[win_ex]
        return WindowLayout(win_ex, c_from, c_n, len(t.prefix) + qn + len(t.middle), qn + c_n + t.n_special)

    def windows(self, max_seq_length: int, stride: int, with_offsets: bool = True) -> Windows:
        return self.assemble(self.layout(max_seq_length, stride), with_offsets)

    def assemble(self, lay: WindowLayout, with_offsets: bool = True) -> Windows:
        """The windows' tokens (and, with_offsets, the context tokens' character offsets)."""
        if len(self.context_of) == 0:
            return _empty(self.with_type_ids)
        t = self.template
        win_ex, c_from, c_n, qn = lay.window_to_example, lay.context_from, lay.context_len, self.questions.lengths
        qn = qn[win_ex]
        splits = np.zeros(len(win_ex) + 1, dtype=np.int64)
        np.cumsum(lay.lengths, out=splits[1:])
        total = int(splits[-1])
        ids = np.empty(total, dtype=np.int32)
        types = np.empty(total, dtype=np.int8) if self.with_type_ids else None
        base = splits[:-1]
        np_, nm = len(t.prefix), len(t.middle)

        def put_constant(offset: np.ndarray, values: np.ndarray, type_values: np.ndarray) -> None:
            for j in range(len(values)):
                ids[offset + j] = values[j]
                if types is not None:
                    types[offset + j] = type_values[j]

        put_constant(base, t.prefix, t.prefix_types)
        q_dst = _ranges(base + np_, qn)
        ids[q_dst] = self.questions.ids[_ranges(self.questions.splits[:-1][win_ex], qn)]
        put_constant(base + np_ + qn, t.middle, t.middle_types)
        c_dst = _ranges(base + lay.context_pos, c_n)
        c_src = _ranges(self.contexts.splits[:-1][self.context_of[win_ex]] + c_from, c_n)
        ids[c_dst] = self.contexts.ids[c_src]
        cs = ce = None
        if with_offsets:
            cs = np.full(total, NO_CHAR, dtype=np.int32)
            ce = np.full(total, NO_CHAR, dtype=np.int32)
            cs[c_dst] = self.contexts.offsets[c_src, 0]
            ce[c_dst] = self.contexts.offsets[c_src, 1]
        put_constant(base + np_ + qn + nm + c_n, t.suffix, t.suffix_types)
        if types is not None:
            types[q_dst] = t.question_type
            types[c_dst] = t.context_type
        return Windows(ids, types, cs, ce, splits, win_ex.astype(np.int32))

    def labels(self, layout: WindowLayout, answer_start_char: np.ndarray, answer_end_char: np.ndarray,
               cls_index: int = 0) -> Labels:
        """Token labels of the windows of `layout`: the tightest token span covering
        [answer_start_char, answer_end_char).

        Start is the context token with the largest start <= answer start, end the token with the
        smallest end >= answer end; on ties the later token (XLM-R's lone '▁' piece shares its offsets
        with the next token). A window whose context does not hold the whole answer, and every window
        of an unanswerable example (start = -1), is labelled `cls_index`.

        Context offsets rise, and a window's context tokens are a run of its context's tokens, so
        each label is a binary search once per example over its context's tokens, clipped to the
        window's run. tests/test_features.py holds this equal to a search over each window's tokens
        and to the first, token-level implementation."""
        win_ex = layout.window_to_example
        tokens = _ContextTokens.of(self.contexts, answer_start_char, answer_end_char)
        if tokens.nv == 0 or len(win_ex) == 0:
            none = np.full(len(win_ex), cls_index, dtype=np.int32)
            return Labels(none, none.copy(), np.zeros(len(win_ex), dtype=bool), none * 0 - 1, none * 0 - 1)
        s_ex = answer_start_char.astype(np.int64)
        e_ex = answer_end_char.astype(np.int64)
        i_ex, j_ex = tokens.answer_bounds(self.context_of, s_ex, e_ex)
        cs, ce, valid, nv = tokens.cs, tokens.ce, tokens.valid, tokens.nv
        # per window: its valid context tokens are the lo-th to the (hi-1)-th
        first_token = self.contexts.splits[:-1][self.context_of[win_ex]] + layout.context_from
        lo = tokens.n_valid_before[first_token].astype(np.int64)
        hi = tokens.n_valid_before[first_token + layout.context_len].astype(np.int64)
        top = np.maximum(hi - 1, lo)
        s, e = s_ex[win_ex], e_ex[win_ex]
        nonempty = hi > lo
        first_cs = np.where(nonempty, cs[valid(np.minimum(lo, nv - 1))], -1)
        last_ce = np.where(nonempty, ce[valid(np.minimum(top, nv - 1))], -1)
        has = (s >= 0) & nonempty & (first_cs <= s) & (last_ce >= e)
        # start: past the token if it ends before s (the answer starts on uncovered characters)
        i = np.clip(i_ex[win_ex], lo, top)
        i = np.where((ce[valid(np.minimum(i, nv - 1))] <= s) & (i + 1 < hi), i + 1, i)
        # end: before the token if it starts at or after e, then the last of its twins
        j = np.clip(j_ex[win_ex], lo, top)
        j = np.where((cs[valid(np.minimum(j, nv - 1))] >= e) & (j - 1 >= lo), j - 1, j)
        j = np.clip(np.searchsorted(tokens.key_e, tokens.key_e[np.minimum(j, nv - 1)], side="right") - 1, lo, top)
        j = np.maximum(i, j)
        vi, vj = valid(np.minimum(i, nv - 1)), valid(np.minimum(j, nv - 1))
        has &= (ce[vi] > s) & (cs[vi] < e)  # an answer no token overlaps cannot be labelled
        start_pos = np.where(has, vi - first_token + layout.context_pos, cls_index).astype(np.int32)
        end_pos = np.where(has, vj - first_token + layout.context_pos, cls_index).astype(np.int32)
        return Labels(start_pos, end_pos, has, np.where(has, cs[vi], -1).astype(np.int32),
                      np.where(has, ce[vj], -1).astype(np.int32))


@dataclass
class WindowLayout:
    """Where each window's context tokens come from: enough to label windows without their tokens."""

    window_to_example: np.ndarray  # [n_windows]
    context_from: np.ndarray  # the window's first context token, counted within its context
    context_len: np.ndarray  # context tokens in the window
    context_pos: np.ndarray  # position of the window's first context token in the window
    lengths: np.ndarray  # tokens in the window, special tokens included


@dataclass
class Labels:
    start_positions: np.ndarray  # int32 [n_windows]; cls_index when the answer is not in the window
    end_positions: np.ndarray
    has_answer: np.ndarray  # bool [n_windows]: the whole answer lies inside this window
    start_char: np.ndarray | None = None  # int32 [n_windows]: the label span's characters, -1 without
    end_char: np.ndarray | None = None


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
