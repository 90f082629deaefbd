"""Contexts tokenized sentence by sentence (uqa/segments.py) give exactly the whole-context tokens,
and a tokenizer that does not treat the space after a sentence as a boundary is never cut."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import UQA_DIR, URDU_TOKENIZER, needs_shared
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from uqa import segments
from uqa.features import PairTemplate, encode_stream, prepare_backend
from uqa.segments import cut_texts, cuttable_added_tokens

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# sentence ends with what must not be cut: a combining mark or a joining letter after the space, two
# spaces, a digit after a full stop, an added token's text, a text that starts or ends with a space
EDGE_TEXTS = [
    "پاکستان ایک ملک ہے۔ اس کا دارالحکومت اسلام آباد ہے۔ یہ 1947 میں بنا۔",
    "پہلا جملہ۔ \u0651دوسرا جملہ۔  تیسرا جملہ! چوتھا؟ پانچواں. 3. 5 چھٹا",
    "ไทย. \u0e33ไทย. ไทย",
    "ایک <mask> جملہ۔ دوسرا جملہ۔ تیسرا",
    " شروع میں جگہ۔ آخر میں جگہ۔ ",
    "پاکستان ایک ملک ہے۔ اس کا دارالحکومت اسلام آباد ہے۔ یہ 1947 میں بنا۔ نیا جملہ۔",
    "",
    "no end. Two sentences. Digits 1. 2. Three",
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
    assert int(cuts.entries[1] - cuts.entries[0]) == 3  # the plain Urdu text is cut at its sentence ends
    assert int(cuts.entries[4] - cuts.entries[3]) == 1  # the text holding <mask> is not
    assert cuts.pieces.count("پاکستان ایک ملک ہے۔") == 1  # a sentence two texts share is tokenized once
    assert "پہلا جملہ۔ \u0651دوسرا جملہ۔  تیسرا جملہ!" in cuts.pieces  # no cut before a mark or at two spaces
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
def test_tokenizers_that_may_join_sentences_are_not_cut(change):
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
    """Metaspace alone puts the space into the next sentence's first token: cutting there would
    move offsets. Told (wrongly) that it may be cut, the check on the first texts catches it."""
    tok = _trained(normalizers.NFKC(), pre_tokenizers.Metaspace(), EDGE_TEXTS * 3)
    texts = [f"{t} {i}۔ جملہ {i}" for i in range(20) for t in EDGE_TEXTS[:2]]
    monkeypatch.setattr(segments, "MIN_TEXTS", 1)
    monkeypatch.setattr(segments, "cuttable_added_tokens", lambda backend: [])
    backend = prepare_backend(tok)
    with caplog.at_level(logging.WARNING, logger="uqa.segments"):
        [encoded] = encode_stream(backend, PairTemplate.of(backend), [(["سوال"] * len(texts), texts)])
    assert "every text is tokenized whole" in caplog.text
    whole_ids, whole_offsets = _whole(backend, list(dict.fromkeys(texts)))
    assert encoded.contexts.ids.tolist() == [i for ids in whole_ids for i in ids]
    assert encoded.contexts.offsets.tolist() == [list(o) for offs in whole_offsets for o in offs]


@needs_shared
def test_real_uqa_by_sentence_equals_whole_contexts(monkeypatch):
    """XLM-R's Urdu tokenizer as transformers loads it, on 3,000 real UQA rows: the stage's encoding
    (contexts cut into distinct sentences) is the whole-context encoding, token for token."""
    from uqa.tokenizer import load_tokenizer

    rows = pd.read_parquet(UQA_DIR / "train.parquet").iloc[:3000]
    questions, contexts = rows["question"].tolist(), rows["context"].tolist()
    backend = prepare_backend(load_tokenizer(str(URDU_TOKENIZER)).backend_tokenizer)
    template = PairTemplate.of(backend)
    monkeypatch.setattr(segments, "MIN_TEXTS", 1)
    [cut] = encode_stream(backend, template, [(questions, contexts)])
    monkeypatch.setattr(segments, "MIN_TEXTS", 10**9)
    [whole] = encode_stream(backend, template, [(questions, contexts)])
    n_distinct = len(set(contexts))
    assert len(cut_texts(list(dict.fromkeys(contexts)), []).pieces) > n_distinct  # it was cut
    for field in ("ids", "offsets", "splits"):
        assert np.array_equal(getattr(cut.contexts, field), getattr(whole.contexts, field)), field
    assert np.array_equal(cut.context_of, whole.context_of)
