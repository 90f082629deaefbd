"""Contexts cut into sentences where the tokenizer cuts them anyway, so that each distinct sentence
is tokenized once.

UQA was translated row by row: its 83,018 answerable train rows hold 74,391 distinct contexts, but
only 56.5 % of their characters lie in distinct sentences (one English paragraph, translated once
per question, comes back with most of its sentences the same). Tokenizing each distinct sentence
once and joining the tokens (offsets shifted) gives exactly the whole-context tokens when the
tokenizer treats the space after a sentence as a hard boundary, which this module checks from the
tokenizer's own definition:

- the pre-tokenizer first splits on whitespace and drops it (WhitespaceSplit, Whitespace,
  BertPreTokenizer), and no later step depends on where a piece stands in the text (no Metaspace
  with prepend_scheme "first"); every tokenizers model then sees each piece alone;
- the normalizer works character by character or grapheme by grapheme (the Unicode normal forms,
  Lowercase, StripAccents, BertNormalizer, Precompiled, Strip, a Replace of a plain string without
  whitespace). The cut is a lone space between a sentence terminator and a letter or digit: a
  grapheme of its own, which composes with neither neighbour;
- no added token takes part: added tokens are matched on the raw text (normalized: false), and a
  text that contains one is not cut.

XLM-R's tokenizer as transformers loads it (Precompiled; WhitespaceSplit, Metaspace) and BERT's
qualify. Any other tokenizer gets its texts whole, as before. On top of that the first texts of
each call are tokenized both ways and must agree, ids and offsets, or nothing is cut (a warning
says so): a tokenizer this reasoning misjudges costs speed, never a token.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# a space after a sentence terminator (. ! ? Urdu/Arabic full stop and question mark, danda,
# ideographic full stop), before a word character; the next character's category is checked too
SENTENCE_END = re.compile(r"(?<=[.!?\u06d4\u061f\u0964\u3002]) (?=\w)")
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
    """The added tokens' contents when the tokenizer's texts may be cut at sentence ends; None when not."""
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
    """Each text cut at its sentence ends (a text holding an added token stays whole), the pieces
    made distinct across all texts."""
    distinct: dict[str, int] = {}
    piece_of: list[int] = []
    piece_start: list[int] = []
    counts = np.zeros(len(texts), dtype=np.int64)
    for t, text in enumerate(texts):
        starts = [0]
        if not any(tok in text for tok in added_tokens):
            for m in SENTENCE_END.finditer(text):
                nxt = text[m.end()]
                if nxt not in GRAPHEME_JOINERS and unicodedata.category(nxt) in CUT_BEFORE:
                    starts.append(m.end())
        ends = [s - 1 for s in starts[1:]] + [len(text)]
        for s, e in zip(starts, ends, strict=True):
            piece_of.append(distinct.setdefault(text[s:e], len(distinct)))
            piece_start.append(s)
        counts[t] = len(starts)
    entries = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=entries[1:])
    return Cuts(list(distinct), np.asarray(piece_of, dtype=np.int64), np.asarray(piece_start, dtype=np.int64),
                entries)


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
            log.warning("tokenize: this tokenizer splits texts across sentence ends in a way uqa/segments.py "
                        "did not expect (text %d differs when tokenized by sentence); every text is tokenized "
                        "whole. Please report it with the tokenizer's name.", t)
            return False
    return True


class Cutter:
    """cut_texts for one call's chunks with one tokenizer: decided on the first chunk with at least
    MIN_TEXTS contexts (the tokenizer's definition, then the first cut texts tokenized both ways),
    kept for the chunks after it."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.added: list[str] | None = None  # the added tokens' contents, once the tokenizer qualifies
        self.decided = False

    def cut(self, texts: list[str]) -> Cuts | None:
        """These distinct contexts as distinct sentences, or None: tokenize them whole."""
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
