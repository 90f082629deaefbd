"""Texts tokenized word by word (uqa/text/segments.py) give exactly the whole-text tokens, and a
tokenizer that does not treat a space between words as a boundary is never cut."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import UQA_DIR, URDU_TOKENIZER, needs_shared
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from uqa.text import segments
from uqa.text.encoding import encode_stream, prepare_backend
from uqa.text.segments import cut_texts, cuttable_added_tokens
from uqa.text.windows import PairTemplate

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# words with the spaces that must not be cut: before a combining mark or a joining letter, two
# spaces, after a prepended sign (U+0600, a format character; U+0D4E, a letter) or a zero-width
# non-joiner, an added token's text, a text that starts or ends with a space; other whitespace
# (tab, newline, no-break space) is left inside the pieces
EDGE_TEXTS = [
    "پاکستان ایک ملک ہے۔ اس کا دارالحکومت اسلام آباد ہے۔ یہ 1947 میں بنا۔",
    "پہلا جملہ۔ \u0651دوسرا جملہ۔  تیسرا جملہ! چوتھا؟ پانچواں. 3. 5 چھٹا",
    "ไทย. \u0e33ไทย. ไทย",
    "ایک <mask> جملہ۔ دوسرا جملہ۔ تیسرا",
    " شروع میں جگہ۔ آخر میں جگہ۔ ",
    "پاکستان ایک ملک ہے۔ اس کا دارالحکومت اسلام آباد ہے۔ یہ 1947 میں بنا۔ نیا جملہ۔",
    "",
    "no end. Two sentences. Digits 1. 2. Three",
    "\u0600 ١٢٣ سال اور \u0d4e ക ہے",
    "ٹیب\tوالا\nمتن\u00a0اور\u200c ZWNJ والا",
    "ab \U00011a84 cd \U0001f600 ef \U0001d400x",
]


def _trained(normalizer, pre_tokenizer, texts, model="unigram") -> Tokenizer:
    if model == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=SPECIALS, unk_token="<unk>",
                                          show_progress=False)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


XLMR_LIKE = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])


def _whole(tok: Tokenizer, texts: list[str]) -> tuple[list, list]:
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return [e.ids for e in encs], [list(e.offsets) for e in encs]


def _joined(tok: Tokenizer, texts: list[str]) -> tuple[list, list]:
    cuts = cut_texts(texts, cuttable_added_tokens(tok))
    pieces = tok.encode_batch(cuts.pieces, add_special_tokens=False)
    ids, offsets = [], []
    for t in range(len(texts)):
        entries = range(int(cuts.entries[t]), int(cuts.entries[t + 1]))
        ids.append([i for k in entries for i in pieces[cuts.piece_of[k]].ids])
        offsets.append([(s + int(cuts.piece_start[k]), e + int(cuts.piece_start[k]))
                        for k in entries for s, e in pieces[cuts.piece_of[k]].offsets])
    return ids, offsets


@pytest.mark.parametrize("normalizer, pre_tokenizer, model", [
    (normalizers.NFKC(), XLMR_LIKE, "unigram"),
    (None, XLMR_LIKE, "unigram"),
    (normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer(), "wordpiece"),
    (normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]),
     pre_tokenizers.Whitespace(), "wordpiece"),
])
def test_cut_tokenizers_give_the_whole_text_tokens(normalizer, pre_tokenizer, model):
    tok = _trained(normalizer, pre_tokenizer, EDGE_TEXTS * 3, model)
    tok.add_special_tokens(SPECIALS)
    assert cuttable_added_tokens(tok) == SPECIALS
    cuts = cut_texts(EDGE_TEXTS, SPECIALS)
    texts = [[cuts.pieces[k] for k in cuts.piece_of[cuts.entries[t]:cuts.entries[t + 1]]] for t in range(len(EDGE_TEXTS))]
    assert texts[0] == EDGE_TEXTS[0].split(" ")  # the plain Urdu text is cut at every space
    assert texts[3] == [EDGE_TEXTS[3]]  # the text holding <mask> is not cut
    assert cuts.pieces.count("پاکستان") == 1  # a word that texts share is tokenized once
    assert texts[1][:3] == ["پہلا", "جملہ۔ \u0651دوسرا", "جملہ۔  تیسرا"]  # no cut before a mark or at two spaces
    assert texts[2] == ["ไทย. \u0e33ไทย.", "ไทย"]  # no cut before a vowel that joins the space
    assert texts[4][0] == " شروع" and texts[4][-1] == "جگہ۔ "
    assert texts[8] == ["\u0600 ١٢٣", "سال", "اور", "\u0d4e ക", "ہے"]
    assert texts[9] == ["ٹیب\tوالا\nمتن\u00a0اور\u200c ZWNJ", "والا"]
    # above the Basic Multilingual Plane: no cut after a prepended letter (U+11A84) nor before a
    # symbol (an emoji); a cut after the emoji and before a mathematical letter
    assert texts[10] == ["ab", "\U00011a84 cd \U0001f600", "ef", "\U0001d400x"]
    assert ["".join(p) for p in texts] != EDGE_TEXTS  # (the cut spaces are no piece's)
    assert [" ".join(p) for p in texts] == EDGE_TEXTS
    for t, pieces in enumerate(texts):  # each piece starts where it stands in its text
        for k, piece in zip(range(cuts.entries[t], cuts.entries[t + 1]), pieces, strict=True):
            assert EDGE_TEXTS[t][cuts.piece_start[k]:].startswith(piece)
    assert _joined(tok, EDGE_TEXTS) == _whole(tok, EDGE_TEXTS)


@pytest.mark.parametrize("change", [
    {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}},
    {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}},
    {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}},
    {"normalizer": {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}},
    {"normalizer": {"type": "Prepend", "prepend": "▁"}},
])
def test_tokenizers_that_may_join_words_are_not_cut(change):
    tok = _trained(normalizers.NFKC(), XLMR_LIKE, EDGE_TEXTS * 3)
    spec = json.loads(tok.to_str())
    spec.update(change)
    assert cuttable_added_tokens(Tokenizer.from_str(json.dumps(spec))) is None


def test_a_normalized_added_token_is_not_cut():
    tok = _trained(normalizers.NFKC(), XLMR_LIKE, EDGE_TEXTS * 3)
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [dict(spec["added_tokens"][0], normalized=True)]
    assert cuttable_added_tokens(Tokenizer.from_str(json.dumps(spec))) is None


def test_a_wrong_verdict_costs_speed_not_tokens(monkeypatch, caplog):
    """Metaspace alone puts the space into the next word's first token: cutting there would
    move offsets. Told (wrongly) that it may be cut, the check on the first texts catches it."""
    tok = _trained(normalizers.NFKC(), pre_tokenizers.Metaspace(), EDGE_TEXTS * 3)
    texts = [f"{t} {i}۔ جملہ {i}" for i in range(20) for t in EDGE_TEXTS[:2]]
    monkeypatch.setattr(segments, "MIN_TEXTS", 1)
    monkeypatch.setattr(segments, "cuttable_added_tokens", lambda backend: [])
    backend = prepare_backend(tok)
    with caplog.at_level(logging.WARNING, logger="uqa.text.segments"):
        [encoded] = encode_stream(backend, PairTemplate.of(backend), [(["سوال"] * len(texts), texts)])
    assert "every text is tokenized whole" in caplog.text
    whole_ids, whole_offsets = _whole(backend, list(dict.fromkeys(texts)))
    assert encoded.contexts.ids.tolist() == [i for ids in whole_ids for i in ids]
    assert encoded.contexts.offsets.tolist() == [list(o) for offs in whole_offsets for o in offs]


@needs_shared
def test_real_uqa_by_word_equals_whole_texts(monkeypatch):
    """XLM-R's Urdu tokenizer as transformers loads it, on 3,000 real UQA rows: the stage's encoding
    (questions and contexts cut into distinct words) is the whole-text encoding, token for token."""
    from uqa.text.tokenizer import load_tokenizer

    rows = pd.read_parquet(UQA_DIR / "train.parquet").iloc[:3000]
    questions, contexts = rows["question"].tolist(), rows["context"].tolist()
    backend = prepare_backend(load_tokenizer(str(URDU_TOKENIZER)).backend_tokenizer)
    template = PairTemplate.of(backend)
    monkeypatch.setattr(segments, "MIN_TEXTS", 1)
    [cut] = encode_stream(backend, template, [(questions, contexts)])
    monkeypatch.setattr(segments, "MIN_TEXTS", 10**9)
    [whole] = encode_stream(backend, template, [(questions, contexts)])
    context_cuts = cut_texts(list(dict.fromkeys(contexts)), [])
    assert len(context_cuts.piece_of) > 10 * len(set(contexts))  # it was cut: word by word
    assert len(context_cuts.pieces) < len(context_cuts.piece_of) / 10  # and each distinct word once
    for field in ("ids", "offsets", "splits"):
        assert np.array_equal(getattr(cut.contexts, field), getattr(whole.contexts, field)), field
    for field in ("ids", "splits"):
        assert np.array_equal(getattr(cut.questions, field), getattr(whole.questions, field)), field
    assert np.array_equal(cut.context_of, whole.context_of)


def test_code_points_are_read_off_utf8_bytes():
    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in (0x20, 0x41, 0x7F, 0x80, 0x627, 0x651, 0x7FF, 0x800, 0x6D4, 0xE33, 0xD4E, 0xFFFD,
                                 0xFFFF, 0x10000, 0x11A84, 0x1D400, 0x1F600, 0x10FFFF)]
    text = "".join(rng.choice(alphabet, size=500))
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    starts = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text])[:-1]
    assert segments._code_points(data, starts).tolist() == [ord(ch) for ch in text]
    for char_class, predicate in ((segments._FOLLOW, segments._may_follow_cut),
                                  (segments._PRECEDE, segments._may_precede_cut)):
        assert char_class.at(data, starts).tolist() == [predicate(ch) for ch in text]


def _piece_texts(cuts, n_texts: int) -> list[list[tuple[int, str]]]:
    return [[(int(cuts.piece_start[k]), cuts.pieces[cuts.piece_of[k]])
             for k in range(cuts.entries[t], cuts.entries[t + 1])] for t in range(n_texts)]


def test_words_cut_before_the_tokenizer_is_known_keep_added_tokens_whole(monkeypatch):
    """The stage cuts its first chunks while the tokenizer loads (Cutter.words, added tokens not yet
    known); once they are, a text holding one becomes one piece again: the same pieces, the same
    tokens as cutting with the added tokens known."""
    texts = EDGE_TEXTS * 60
    early = segments.Cutter().words(texts)
    assert _piece_texts(early, len(texts))[3] != [(0, EDGE_TEXTS[3])]  # <mask>'s text was cut, for now
    known = cut_texts(texts, SPECIALS)
    holding = np.array(["<mask>" in t for t in texts])
    assert _piece_texts(early.with_whole(holding, texts), len(texts)) == _piece_texts(known, len(texts))
    tok = _trained(normalizers.NFKC(), XLMR_LIKE, EDGE_TEXTS * 3)
    tok.add_special_tokens(SPECIALS)
    backend = prepare_backend(tok)
    cutter = segments.Cutter(backend)
    final = cutter.cut(texts, cutter.words(texts))
    assert _piece_texts(final, len(texts)) == _piece_texts(known, len(texts))



def test_the_prepend_table_covers_this_pythons_unicode():
    """unicodedata has no grapheme property, so the Prepend letters are a table taken from one Unicode
    version: this Python's Unicode must not be newer (a new Prepend letter would be cut after), and each
    letter is, here, a letter or not assigned yet."""
    import unicodedata

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split("."))

    assert version(unicodedata.unidata_version) <= version(segments.PREPEND_UNICODE), (
        f"Python's Unicode {unicodedata.unidata_version} is newer than the PREPEND table's "
        f"{segments.PREPEND_UNICODE}: read GraphemeBreakProperty.txt of {unicodedata.unidata_version} again")
    assert {unicodedata.category(ch) for ch in segments.PREPEND} <= {"Lo", "Cn"}


def test_word_cuts_switch_off_with_the_same_tokens(monkeypatch):
    """UQA_WORD_CUTS=0: nothing is cut (every text whole), and the encoding is the one the cuts give."""
    tok = _trained(normalizers.NFKC(), pre_tokenizers.WhitespaceSplit(), EDGE_TEXTS * 3)
    texts = [f"{t} {i}۔ جملہ {i}" for i in range(20) for t in EDGE_TEXTS[:2]]
    backend = prepare_backend(tok)
    monkeypatch.setattr(segments, "MIN_TEXTS", 1)
    [cut] = encode_stream(backend, PairTemplate.of(backend), [(["سوال"] * len(texts), texts)])
    calls = []
    monkeypatch.setattr(segments, "word_cuts", lambda texts: calls.append(len(texts)))
    for off in ("0", "false"):
        monkeypatch.setenv("UQA_WORD_CUTS", off)
        [whole] = encode_stream(backend, PairTemplate.of(backend), [(["سوال"] * len(texts), texts)])
        assert calls == []  # never cut
        for field in ("ids", "offsets", "splits"):
            assert np.array_equal(getattr(cut.contexts, field), getattr(whole.contexts, field)), field


@needs_shared
def test_the_tokenize_stage_writes_the_same_outputs_without_word_cuts(tmp_path):
    """`UQA_WORD_CUTS=0 dvc repro -f tokenize` on 2,000 real UQA rows: the same DVC hashes as with the cuts."""
    import sys

    import yaml
    from conftest import make_project, run_ok

    rows = pd.read_parquet(UQA_DIR / "train.parquet").iloc[:2000]
    rows.iloc[:1800].to_parquet(tmp_path / "train.parquet")
    rows.iloc[1800:].to_parquet(tmp_path / "validation.parquet")
    root = make_project(tmp_path / "project", {
        "data": {"source": {s: str(tmp_path / f"{s}.parquet") for s in ("train", "validation")}},
        "model": {"name": str(URDU_TOKENIZER), "tokenizer": str(URDU_TOKENIZER)}})

    def tokenize_outputs(**env) -> tuple[dict[str, str], dict]:
        import os

        run_ok([sys.executable, "-m", "dvc", "repro", "-f", "tokenize"], root, env=dict(os.environ, **env))
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["tokenize"]
        report = json.loads((root / "reports" / "tokenize.json").read_text())
        report.pop("seconds")  # how long each step took: the one thing two runs never share
        return {o["path"]: o["md5"] for o in lock["outs"] if o["path"].startswith("data/")}, report

    with_cuts = tokenize_outputs()
    without = tokenize_outputs(UQA_WORD_CUTS="0")
    assert with_cuts == without and len(with_cuts[0]) == 3  # train, validation and the tokenizer, byte for byte
