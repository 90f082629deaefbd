"""Texts cut into words where the tokenizer cuts them anyway, so that each distinct word is
tokenized once.

UQA's 74,391 distinct answerable train contexts hold 11.3 million words, of only 103,319 distinct
ones. Tokenizing each distinct word once and joining the tokens (offsets shifted) gives exactly the
whole-text tokens when the tokenizer treats a space between words as a hard boundary, which this
module checks from the tokenizer's own definition:

- the pre-tokenizer first splits on whitespace and drops it (WhitespaceSplit, Whitespace,
  BertPreTokenizer), and no later step depends on where a piece stands in the text (no Metaspace
  with prepend_scheme "first"); every tokenizers model then sees each piece alone;
- the normalizer works character by character or grapheme by grapheme (the Unicode normal forms,
  Lowercase, StripAccents, BertNormalizer, Precompiled, Strip, a Replace of a plain string without
  whitespace). A cut is a lone space that is a grapheme of its own: before a letter or digit (not a
  mark, modifier or format character, nor a Thai/Lao vowel that joins the space), after a
  character that is not whitespace, control, format or a letter that prepends itself (Unicode's
  Grapheme_Cluster_Break=Prepend);
- no added token takes part: added tokens are matched on the raw text (normalized: false), and a
  text that contains one is not cut.

XLM-R's tokenizer as transformers loads it (Precompiled; WhitespaceSplit, Metaspace) and BERT's
qualify. Any other tokenizer gets its texts whole. What is checked at run time is narrower than the
rules above: the first CHECK_TEXTS (32) cut texts of each call are also tokenized whole and must
agree, ids and offsets, or nothing is cut (a warning says so); the texts after them are trusted to
the rules. The rules were checked on more: every text of UQA train, contexts and questions, gives
the whole-text tokens (tests/test_segments.py on 3,000 real rows and on edge texts for four
tokenizer families; benchmarks/tokenize_scaling.py on all of it). `UQA_WORD_CUTS=0` switches the
cuts off: every text is tokenized whole, with the same outputs (the tokenize stage's DVC hashes do not
change), only slower. The cutting itself works on the texts' UTF-8 bytes with numpy and Arrow (a chunk
of contexts holds millions of words, too many for a Python loop).
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# letters with Grapheme_Cluster_Break=Prepend in Unicode PREPEND_UNICODE (GraphemeBreakProperty.txt): they
# join the space after them (the other Prepend characters are format characters, category Cf, excluded by
# category). unicodedata has no grapheme property, so the table is written out; tests/test_segments.py fails
# when Python's Unicode is newer than the table's, to have it read again.
PREPEND_UNICODE = "16.0.0"
PREPEND = frozenset("\u0d4e\U000111c2\U000111c3\U0001193f\U00011941\U00011a3a\U00011a84\U00011a85\U00011a86"
                    "\U00011a87\U00011a88\U00011a89\U00011d46\U00011f02\U000113d1")
CUT_BEFORE = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd"})  # not marks, modifiers or format characters
GRAPHEME_JOINERS = frozenset({"\u0e33", "\u0eb3"})  # letters (Lo) that join the space before them

WHITESPACE_SPLITTERS = frozenset({"WhitespaceSplit", "Whitespace", "BertPreTokenizer"})
PIECE_WISE = WHITESPACE_SPLITTERS | {"Metaspace", "Digits", "Punctuation", "Split", "UnicodeScripts",
                                     "CharDelimiterSplit"}
CHAR_WISE = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "BertNormalizer",
                       "Precompiled", "Strip"})
MAX_ADDED_TOKENS = 256  # each text is searched for each added token
MIN_TEXTS = 512  # fewer distinct contexts in a call (a request, a test): not worth the checks
CHECK_TEXTS = 32  # texts tokenized both ways before a call cuts anything


def _normalizer_ok(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_normalizer_ok(s) for s in spec.get("normalizers", []))
    if kind == "Replace":
        pattern = spec.get("pattern", {})
        return set(pattern) == {"String"} and not any(ch.isspace() for ch in pattern["String"])
    return kind in CHAR_WISE


def _pre_tokenizer_ok(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return False
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    if not steps or steps[0].get("type") not in WHITESPACE_SPLITTERS:
        return False
    return all(s.get("type") in PIECE_WISE and s.get("prepend_scheme", "always") != "first" for s in steps)


def cuttable_added_tokens(backend) -> list[str] | None:
    """The added tokens' contents when the tokenizer's texts may be cut between words; None when not."""
    spec = json.loads(backend.to_str())
    added = spec.get("added_tokens") or []
    if (not _normalizer_ok(spec.get("normalizer")) or not _pre_tokenizer_ok(spec.get("pre_tokenizer"))
            or len(added) > MAX_ADDED_TOKENS or any(t.get("normalized", True) for t in added)):
        return None
    return [t["content"] for t in added]


@dataclass
class Cuts:
    """Texts as runs of distinct pieces: text t is entries[t]:entries[t+1] of (piece_of, piece_start),
    its pieces in order, each starting piece_start characters into the text (the cut space is no
    piece's)."""

    pieces: list[str]
    piece_of: np.ndarray  # int64 [n_entries]
    piece_start: np.ndarray  # int64 [n_entries]
    entries: np.ndarray  # int64 [n_texts + 1]

    def with_whole(self, whole: np.ndarray, texts: list[str]) -> Cuts:
        """These cuts with the texts where `whole` is true made one piece each (the text itself)."""
        if not whole.any():
            return self
        counts = np.diff(self.entries)
        text_of = np.repeat(np.arange(len(counts)), counts)
        keep = ~whole[text_of]
        keep[self.entries[:-1][whole]] = True  # a whole text keeps one entry (every text has one): its first
        counts = np.where(whole, 1, counts)
        entries = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=entries[1:])
        piece_of, piece_start = self.piece_of[keep], self.piece_start[keep]
        made_whole = np.flatnonzero(whole)
        piece_of[entries[made_whole]] = len(self.pieces) + np.arange(len(made_whole))
        piece_start[entries[made_whole]] = 0
        return Cuts(self.pieces + [texts[t] for t in made_whole.tolist()], piece_of, piece_start, entries)


def cut_texts(texts: list[str], added_tokens: list[str]) -> Cuts:
    """Each text cut at its cuttable spaces (a text holding an added token stays whole), the pieces
    made distinct across all texts."""
    return keep_whole(word_cuts(texts), texts, added_tokens)


def keep_whole(words: Cuts, texts: list[str], added_tokens: list[str]) -> Cuts:
    """`words` (word_cuts of `texts`) with each text that holds an added token made one piece again."""
    return words.with_whole(_holding_any(_arrow(texts), added_tokens), texts) if added_tokens else words


def word_cuts(texts: list[str]) -> Cuts:
    """Each text cut at its cuttable spaces, added tokens or not, the pieces made distinct across
    all texts. Worked out on the texts' UTF-8 bytes with numpy and Arrow: a chunk of contexts holds
    millions of words, far too many for a Python loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = _arrow(texts)
    _, offsets_buffer, data_buffer = column.buffers()
    text_bytes = np.frombuffer(offsets_buffer, dtype=np.int64)[: len(texts) + 1]  # text t: bytes [t]:[t+1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[: int(text_bytes[-1])] if data_buffer else np.zeros(0, np.uint8)
    cuts = np.flatnonzero(data == 0x20)  # a space's byte is never part of another character's
    # a cut: a space inside its text (neither its first nor its last byte), before a character that
    # may follow a cut and after one that may precede it
    text_edge = np.zeros(len(data) + 1, dtype=bool)
    text_edge[text_bytes] = True
    cuts = cuts[~text_edge[cuts] & ~text_edge[cuts + 1]]
    del text_edge
    if len(cuts):
        before = cuts - 1
        for _ in range(3):  # back over continuation bytes to the start of the character before
            before -= (data[before] & 0xC0) == 0x80
        cuts = cuts[_FOLLOW.at(data, cuts + 1) & _PRECEDE.at(data, before)]
    # the pieces in order: each text's first, then one after each of its cuts (text t's first is
    # piece t + the cuts before it)
    entries = np.arange(len(texts) + 1, dtype=np.int64) + np.searchsorted(cuts, text_bytes)
    first = np.zeros(int(entries[-1]), dtype=bool)
    first[entries[:-1]] = True
    piece_bytes = np.empty(len(first) + 1, dtype=np.int64)
    piece_bytes[:-1][first] = text_bytes[:-1]
    piece_bytes[:-1][~first] = cuts + 1
    # in the bytes without the cut spaces each piece is one slice (before piece k: the cuts among
    # pieces 0..k, one per piece that is not a text's first)
    piece_bytes[:-1] -= np.cumsum(~first)
    piece_bytes[-1] = len(data) - len(cuts)
    pieces = pa.LargeStringArray.from_buffers(len(first), pa.py_buffer(piece_bytes),
                                              pa.py_buffer(np.delete(data, cuts)))
    del column, data, text_bytes, first, cuts  # the pieces hold their own bytes: a chunk's texts, once
    # where each piece starts in its text, in characters: the text's pieces before it and their cuts
    step = pc.utf8_length(pieces).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    chars_before = np.zeros(len(step) + 1, dtype=np.int64)
    np.cumsum(step, out=chars_before[1:])
    piece_start = chars_before[:-1] - np.repeat(chars_before[entries[:-1]], np.diff(entries))
    distinct = pc.dictionary_encode(pieces)
    return Cuts(distinct.dictionary.to_pylist(), distinct.indices.to_numpy().astype(np.int64), piece_start, entries)


def _arrow(texts: list[str]):
    import pyarrow as pa

    return pa.array(texts, type=pa.large_string())


def _code_points(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The code points of the UTF-8 characters that start at byte positions `at` of `data`."""
    last = len(data) - 1
    b0 = data[at].astype(np.uint32)
    b1, b2, b3 = (data[np.minimum(at + k, last)].astype(np.uint32) & 0x3F for k in (1, 2, 3))
    return np.where(b0 < 0x80, b0, np.where(b0 < 0xE0, ((b0 & 0x1F) << 6) | b1, np.where(
        b0 < 0xF0, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3)))


class _CharClass:
    """A predicate on characters, asked of the UTF-8 characters at given byte positions: a table by
    a character's first two bytes (every character of one or two bytes: Latin, Arabic, Urdu), one
    over all code points for the longer ones (filled as they turn up)."""

    def __init__(self, predicate) -> None:
        self.predicate = predicate
        self.by_bytes: np.ndarray | None = None  # int8 [first byte << 8 | second byte]: 1 yes, 0 no, -1 longer
        self.by_code_point = np.full(0x110000, -1, dtype=np.int8)  # -1: not asked yet

    def at(self, data: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.by_bytes is None:
            self.by_bytes = self._byte_table()
        key = (data[positions].astype(np.uint16) << 8) | data[np.minimum(positions + 1, len(data) - 1)]
        verdict = self.by_bytes[key]
        longer = np.flatnonzero(verdict < 0)
        if len(longer):
            verdict[longer] = self.of(_code_points(data, positions[longer]))
        return verdict.astype(bool)

    def of(self, code_points: np.ndarray) -> np.ndarray:
        unknown = self.by_code_point[code_points] < 0
        if unknown.any():
            new = np.unique(code_points[unknown])
            self.by_code_point[new] = [self.predicate(chr(c)) for c in new.tolist()]
        return self.by_code_point[code_points].astype(bool)

    def _byte_table(self) -> np.ndarray:
        table = np.full((256, 256), -1, dtype=np.int8)
        table[:0x80, :] = np.array([self.predicate(chr(c)) for c in range(0x80)], dtype=np.int8)[:, None]
        for lead in range(0xC2, 0xE0):
            table[lead, 0x80:0xC0] = [self.predicate(chr(((lead & 0x1F) << 6) | (b & 0x3F))) for b in range(0x80, 0xC0)]
        return table.reshape(-1)


def _holding_any(column, needles: list[str]) -> np.ndarray:
    """Which texts contain any of the needles: one regular-expression pass (RE2 quotes \\Q...\\E
    literally), a substring search for a needle that itself holds the closing \\E."""
    import pyarrow.compute as pc

    quotable = [n for n in needles if "\\E" not in n]
    found = np.zeros(len(column), dtype=bool)
    if quotable:
        pattern = "|".join(f"\\Q{n}\\E" for n in quotable)
        found |= pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False)
    for needle in needles:
        if needle not in quotable:
            found |= pc.match_substring(column, needle).to_numpy(zero_copy_only=False)
    return found


def _may_follow_cut(ch: str) -> bool:
    """A letter or digit: no grapheme joins it to the space before it (marks, modifiers, format
    characters and the two joining Thai/Lao vowels do)."""
    return ch != "" and ch not in GRAPHEME_JOINERS and unicodedata.category(ch) in CUT_BEFORE


def _may_precede_cut(ch: str) -> bool:
    """Not a space, control or format character, nor a letter that prepends itself to what follows
    (Unicode's Grapheme_Cluster_Break=Prepend: e.g. U+0600-0605, U+06DD, U+0D4E)."""
    return ch != "" and ch not in PREPEND and unicodedata.category(ch)[0] not in "CZ"


_FOLLOW = _CharClass(_may_follow_cut)
_PRECEDE = _CharClass(_may_precede_cut)


def agrees_with_whole(backend, texts: list[str], cuts: Cuts) -> bool:
    """The first CHECK_TEXTS texts that were cut: their pieces' tokens, joined, are the whole text's."""
    cut = [t for t in range(len(texts)) if cuts.entries[t + 1] - cuts.entries[t] > 1][:CHECK_TEXTS]
    if not cut:
        return True
    whole = backend.encode_batch([texts[t] for t in cut], add_special_tokens=False)
    for t, enc in zip(cut, whole, strict=True):
        entries = range(int(cuts.entries[t]), int(cuts.entries[t + 1]))
        parts = backend.encode_batch([cuts.pieces[cuts.piece_of[k]] for k in entries], add_special_tokens=False)
        ids = [i for p in parts for i in p.ids]
        offsets = [(s + int(cuts.piece_start[k]), e + int(cuts.piece_start[k]))
                   for k, p in zip(entries, parts, strict=True) for s, e in p.offsets]
        if ids != enc.ids or offsets != list(enc.offsets):
            log.warning("tokenize: this tokenizer splits texts between words in a way uqa/text/segments.py "
                        "did not expect (text %d differs when tokenized word by word); every text is tokenized "
                        "whole. Please report it with the tokenizer's name.", t)
            return False
    return True


WORD_CUTS_ENV = "UQA_WORD_CUTS"


def word_cuts_enabled() -> bool:
    """False when UQA_WORD_CUTS is 0 (or false, no, off): every text is then tokenized whole."""
    return os.environ.get(WORD_CUTS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


class Cutter:
    """cut_texts for one call's chunks with one tokenizer: decided on the first list of at least
    MIN_TEXTS texts (the tokenizer's definition, then the first cut texts tokenized both ways), kept
    for the lists after it (questions and contexts alike).

    The cutting may start before the tokenizer is known (the tokenize stage reads and cuts its first
    chunks while the tokenizer loads): `words` cuts a list as if the tokenizer had no added tokens,
    and `cut`, once `backend` is set, takes those cuts when none of the texts holds an added token."""

    def __init__(self, backend=None) -> None:
        self.backend = backend
        self.added: list[str] | None = None  # the added tokens' contents, once the tokenizer qualifies
        self.decided = not word_cuts_enabled()  # switched off: decided already, nothing is cut

    @property
    def may_cut(self) -> bool:
        return not self.decided or self.added is not None

    def words(self, texts: list[str]) -> Cuts | None:
        """These texts cut into words, added tokens not yet known; None when `cut` would not cut them."""
        return word_cuts(texts) if len(texts) >= MIN_TEXTS and self.may_cut else None

    def cut(self, texts: list[str], words: Cuts | None = None) -> Cuts | None:
        """These texts as their distinct words (and what may not be cut between), or None: tokenize
        them whole. `words`: `self.words(texts)`, made earlier, or None to cut them here."""
        if len(texts) < MIN_TEXTS or not self.may_cut:
            return None
        first = not self.decided
        if first:
            self.decided = True
            self.added = cuttable_added_tokens(self.backend)
            if self.added is None:
                return None
        cuts = keep_whole(word_cuts(texts) if words is None else words, texts, self.added)
        if first and not agrees_with_whole(self.backend, texts, cuts):
            self.added = None
            return None
        return cuts
