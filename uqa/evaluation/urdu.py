"""The Urdu normalizer for answers (never contexts): Unicode NFC; Arabic letterforms folded to
Urdu; tatweel, harakat, zero-width and bidi controls removed; every Unicode punctuation
character removed; Arabic-Indic and Extended Arabic-Indic digits -> ASCII. A drop-in for
the official metric's `normalize` argument (uqa/evaluation/squad.py)."""

from __future__ import annotations

import functools
import unicodedata

# --------------------------------------------------------------------------------------------
# Urdu normalizer
# --------------------------------------------------------------------------------------------

# Arabic letterforms -> Urdu letterforms.
_URDU_FOLD = {
    0x064A: 0x06CC,  # ARABIC LETTER YEH            -> FARSI YEH (Urdu choti ye)
    0x0649: 0x06CC,  # ARABIC LETTER ALEF MAKSURA   -> FARSI YEH
    0x0643: 0x06A9,  # ARABIC LETTER KAF            -> KEHEH (Urdu kaf)
    0x0647: 0x06C1,  # ARABIC LETTER HEH            -> HEH GOAL (Urdu choti he)
}

# Deleted outright: tatweel, harakat, zero-width and bidi controls.
_URDU_DELETE = (
    [0x0640]  # TATWEEL
    + list(range(0x064B, 0x0652 + 1))  # FATHATAN .. SUKUN
    + [0x0670]  # SUPERSCRIPT ALEF
    + list(range(0x200B, 0x200F + 1))  # ZWSP, ZWNJ, ZWJ, LRM, RLM
    + list(range(0x202A, 0x202E + 1))  # LRE, RLE, PDF, LRO, RLO
    + list(range(0x2066, 0x2069 + 1))  # LRI, RLI, FSI, PDI
    # Beyond the listed ranges, three more invisible format controls that show up in scraped
    # Urdu text and would otherwise silently break exact match:
    + [0x061C, 0x2060, 0xFEFF]  # ARABIC LETTER MARK (bidi), WORD JOINER, ZWNBSP/BOM
)
_URDU_DELETE_SET = frozenset(_URDU_DELETE)

# Arabic-Indic (U+0660..0669) and Extended Arabic-Indic (U+06F0..06F9) digits -> ASCII.
_URDU_DIGITS = {0x0660 + i: 0x30 + i for i in range(10)} | {0x06F0 + i: 0x30 + i for i in range(10)}


def _urdu_char_map(cp: int) -> int | None:
    """Translation for one code point (None = delete). Only Unicode P* punctuation is removed."""
    if cp in _URDU_FOLD:
        return _URDU_FOLD[cp]
    if cp in _URDU_DIGITS:
        return _URDU_DIGITS[cp]
    if cp in _URDU_DELETE_SET:
        return None
    if unicodedata.category(chr(cp)).startswith("P"):
        return None
    return cp


class _UrduTable(dict):
    """``str.translate`` table: BMP entries precomputed at import, astral code points filled lazily."""

    def __missing__(self, cp: int) -> int | None:
        value = cp if cp < 0x10000 else _urdu_char_map(cp)
        self[cp] = value
        return value


def _build_urdu_table() -> _UrduTable:
    table = _UrduTable()
    for cp in range(0x10000):
        value = _urdu_char_map(cp)
        if value != cp:
            table[cp] = value
    return table


_URDU_TABLE = _build_urdu_table()


@functools.lru_cache(maxsize=1 << 16)  # pure; scoring normalizes each answer several times (per-epoch F1 too)
def normalize_urdu(text: str) -> str:
    """Urdu answer normalizer (see module docs); English articles are kept, S* symbols ($ + < = > ^ ` | ~) too.

    Steps: NFC; fold ي/ى->ی, ك->ک, ه->ہ; delete tatweel, harakat (U+064B-0652, U+0670),
    zero-width/bidi controls; delete every Unicode P* character (۔ ، ؟ ؛ « » and ASCII P*);
    Eastern digits -> 0-9; NFC again (a deleted control may have separated a base letter from
    its combining mark, e.g. ا+ZWNJ+ٓ -> آ, and ه+ٔ folds to ہ+ٔ which composes to ۂ); lower();
    collapse whitespace.
    """
    text = unicodedata.normalize("NFC", text)
    text = text.translate(_URDU_TABLE)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = text.lower()
    return " ".join(text.split())
