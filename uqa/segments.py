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
qualify. Any other tokenizer gets its texts whole. On top of that the first texts of each call are
tokenized both ways and must agree, ids and offsets, or nothing is cut (a warning says so): a
tokenizer this reasoning misjudges costs speed, never a token. The cutting itself runs in Arrow's
compute kernels (a chunk of contexts holds millions of words, too many for a Python loop).
"""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# letters with Grapheme_Cluster_Break=Prepend (Unicode 16): they join the space after them (the
# other Prepend characters are format characters, category Cf, excluded by category)
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


def cut_texts(texts: list[str], added_tokens: list[str]) -> Cuts:
    """Each text cut at its cuttable spaces (a text holding an added token stays whole), the pieces
    made distinct across all texts. Done in Arrow's compute kernels: a chunk of contexts holds
    millions of words, far too many for a Python loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pa.array(texts, type=pa.large_string())
    parts_per_text = pc.split_pattern(column, " ")  # every space: the parts joined by " " are the text
    parts = parts_per_text.flatten()
    text_parts = np.asarray(parts_per_text.offsets, dtype=np.int64)  # text t: parts text_parts[t]:[t+1]
    n_parts = len(parts)
    # a new piece starts at each text's first part and after each cuttable space: one whose next part
    # starts with a letter or digit and whose previous part ends with a character the space does not
    # join (both parts non-empty: no cut next to another space)
    starts = np.zeros(n_parts, dtype=bool)
    if n_parts > 1:
        first_ok = _chars_where(pc.utf8_slice_codeunits(parts, 0, 1), _may_follow_cut)
        last_ok = _chars_where(pc.utf8_slice_codeunits(parts, -1), _may_precede_cut)
        starts[1:] = first_ok[1:] & last_ok[:-1]
        if added_tokens:
            whole = _holding_any(column, added_tokens)
            starts &= ~np.repeat(whole, np.diff(text_parts))
    starts[text_parts[:-1][np.diff(text_parts) > 0]] = True
    piece_parts = np.append(np.flatnonzero(starts), n_parts)
    if len(piece_parts) - 1 == n_parts:
        pieces = parts
    else:  # parts between cuts back into one piece, with the spaces that were not cut
        pieces = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(piece_parts), parts),
                                pa.scalar(" ", pa.large_string()))
    entries = np.searchsorted(piece_parts, text_parts)  # text t: pieces entries[t]:entries[t+1]
    # where each piece starts in its text: the lengths (and cut spaces) of the text's pieces before it
    step = pc.utf8_length(pieces).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    before = np.zeros(len(step) + 1, dtype=np.int64)
    np.cumsum(step, out=before[1:])
    piece_start = before[:-1] - np.repeat(before[entries[:-1]], np.diff(entries))
    distinct = pc.dictionary_encode(pieces)
    return Cuts(distinct.dictionary.to_pylist(), distinct.indices.to_numpy().astype(np.int64), piece_start, entries)


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


def _chars_where(chars, predicate) -> np.ndarray:
    """predicate(c) for each one-character (or empty) string of an Arrow array, asked once per distinct value."""
    import pyarrow.compute as pc

    codes = pc.dictionary_encode(chars)
    verdict = np.array([predicate(c) for c in codes.dictionary.to_pylist()], dtype=bool)
    return verdict[codes.indices.to_numpy()] if len(verdict) else np.zeros(len(chars), dtype=bool)


def _may_follow_cut(ch: str) -> bool:
    """A letter or digit: no grapheme joins it to the space before it (marks, modifiers, format
    characters and the two joining Thai/Lao vowels do)."""
    return ch != "" and ch not in GRAPHEME_JOINERS and unicodedata.category(ch) in CUT_BEFORE


def _may_precede_cut(ch: str) -> bool:
    """Not a space, control or format character, nor a letter that prepends itself to what follows
    (Unicode's Grapheme_Cluster_Break=Prepend: e.g. U+0600-0605, U+06DD, U+0D4E)."""
    return ch != "" and ch not in PREPEND and unicodedata.category(ch)[0] not in "CZ"


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
            log.warning("tokenize: this tokenizer splits texts between words in a way uqa/segments.py "
                        "did not expect (text %d differs when tokenized word by word); every text is tokenized "
                        "whole. Please report it with the tokenizer's name.", t)
            return False
    return True


class Cutter:
    """cut_texts for one call's chunks with one tokenizer: decided on the first list of at least
    MIN_TEXTS texts (the tokenizer's definition, then the first cut texts tokenized both ways), kept
    for the lists after it (questions and contexts alike)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.added: list[str] | None = None  # the added tokens' contents, once the tokenizer qualifies
        self.decided = False

    def cut(self, texts: list[str]) -> Cuts | None:
        """These texts as their distinct words (and what may not be cut between), or None: tokenize them whole."""
        if len(texts) < MIN_TEXTS or (self.decided and self.added is None):
            return None
        if self.decided:
            return cut_texts(texts, self.added)
        self.decided = True
        self.added = cuttable_added_tokens(self.backend)
        if self.added is None:
            return None
        cuts = cut_texts(texts, self.added)
        if not agrees_with_whole(self.backend, texts, cuts):
            self.added = None
            return None
        return cuts
