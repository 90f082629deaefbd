"""tokenize-and-cache on the real UQA splits with the Urdu XLM-R-shaped tokenizer."""

from __future__ import annotations

import copy
import json

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG, UQA_DIR, URDU_TOKENIZER, needs_shared

from tasks.download import download
from tasks.filter import filter_rows
from tasks.tokenize import first_row_per_id, tokenize_splits
from uqa.features import encode_labelled_windows, encode_windows
from uqa.params import params_from_dict
from uqa.tokenizer import load_tokenizer


def tight_span_problem(offsets, seq_ids, start, end, s, e):
    """None if tokens start..end are the tightest span of context tokens covering chars [s, e).

    XLM-R's lone '▁' piece carries the offsets of the character after it: such a twin of the end
    token does not make a shorter span in characters, and the label keeps the real piece."""
    ctx = [i for i, q in enumerate(seq_ids) if q == 1 and offsets[i][1] > offsets[i][0]]
    if start not in ctx or end not in ctx or end < start:
        return "label outside the context"
    if offsets[start][0] > s or offsets[end][1] < e:
        return "span does not cover the answer"
    later = [i for i in ctx if start < i <= end]
    if later and offsets[later[0]][0] <= s:
        return "a later start token also covers the answer start"
    earlier = [i for i in ctx if start <= i < end and tuple(offsets[i]) != tuple(offsets[end])]
    if earlier and offsets[earlier[-1]][1] >= e:
        return "an earlier end token also covers the answer end"
    return None


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not (UQA_DIR / "train.parquet").exists() or not URDU_TOKENIZER.exists():
        pytest.skip("real UQA not available")
    root = tmp_path_factory.mktemp("real")
    params = params_from_dict({
        "data": {"source": str(UQA_DIR)},
        "model": {"tokenizer": str(URDU_TOKENIZER), "init": "scratch", "config": TINY_CONFIG},
    })
    download(params.data, root / "raw", root / "download.json")
    filter_rows(params.data, root / "raw", root / "filtered", root / "filter.json")
    report = tokenize_splits(params, root / "filtered", root / "tokenized", root / "tokenize.json")
    return root, report


@needs_shared
def test_every_train_label_is_the_tightest_span(real):
    root, report = real
    filtered = datasets.load_from_disk(str(root / "filtered" / "train")).to_pandas()
    features = datasets.load_from_disk(str(root / "tokenized" / "train"))
    tok = load_tokenizer(str(URDU_TOKENIZER))
    # the same windows again, straight from the tokenizer (no labelling code involved)
    enc = tok(filtered["question"].tolist(), filtered["context"].tolist(), truncation="only_second",
              max_length=report["max_seq_length"], stride=128, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    assert len(enc["input_ids"]) == len(features) == report["train"]["features"]
    assert enc["input_ids"] == features["input_ids"]
    starts, ends = features["start_positions"], features["end_positions"]
    owner = enc["overflow_to_sample_mapping"]
    s_char = filtered["answer_start"].to_numpy()
    e_char = s_char + filtered["answer"].str.len().to_numpy()
    labelled_examples = set()
    problems = []
    for w in range(len(features)):
        ex = owner[w]
        offsets, seq = enc["offset_mapping"][w], enc.sequence_ids(w)
        ctx = [o for o, q in zip(offsets, seq, strict=True) if q == 1 and o[1] > o[0]]
        fits = ctx[0][0] <= s_char[ex] and ctx[-1][1] >= e_char[ex]
        if not fits:
            assert (starts[w], ends[w]) == (0, 0), f"window {w} has no whole answer but a label"
            continue
        labelled_examples.add(ex)
        problem = tight_span_problem(offsets, seq, starts[w], ends[w], s_char[ex], e_char[ex])
        if problem:
            problems.append((w, problem))
    assert problems == []
    # every answer that fits in some window is labelled there; the rest are counted as lost
    lost = len(filtered) - len(labelled_examples)
    assert report["train"]["answers_lost_to_truncation"] == lost
    assert report["train"]["features_with_answer"] >= len(labelled_examples)
    exact = report["train"]["label_span_text_exact_fraction"]
    assert 0.965 < exact < 1.0  # the seed's path: 96.5%; the rest is the tokenizer gluing punctuation


@needs_shared
def test_validation_features_one_example_per_id(real):
    root, report = real
    filtered = datasets.load_from_disk(str(root / "filtered" / "validation")).to_pandas()
    features = datasets.load_from_disk(str(root / "tokenized" / "validation"))
    assert report["validation"]["examples"] == filtered["id"].nunique()
    rows = sorted(set(features["example_index"]))
    assert rows == first_row_per_id(filtered["id"].tolist()).tolist()
    assert set(features["example_id"]) == set(filtered["id"])
    # context-only offsets: -1 outside the context, real character offsets inside it
    for i in range(0, len(features), 97):
        f = features[i]
        context = filtered["context"][f["example_index"]]
        inside = [(a, b) for a, b in zip(f["offset_start"], f["offset_end"], strict=True) if a >= 0]
        assert inside and all(0 <= a <= b <= len(context) for a, b in inside)
        assert f["offset_start"][0] == -1  # CLS


@needs_shared
def test_no_padding_is_stored_and_auto_length(real):
    root, report = real
    tok = load_tokenizer(str(URDU_TOKENIZER))
    features = datasets.load_from_disk(str(root / "tokenized" / "train"))
    lengths = [len(x) for x in features["input_ids"][:2000]]
    assert min(lengths) < max(lengths) <= report["max_seq_length"]
    assert all(tok.pad_token_id not in ids for ids in features["input_ids"][:2000])
    assert report["max_seq_length"] == min(512, report["longest_pair_tokens"]) == 512
    assert set(features.column_names) == {"input_ids", "start_positions", "end_positions"}
    saved = json.loads((root / "tokenize.json").read_text())
    assert saved["train"]["features"] == len(features)


def test_windows_overlap_by_stride_and_labels_pick_the_right_window():
    from uqa.tokenizer import train_tokenizer

    words = [f"لفظ{i}" for i in range(60)]
    context = " ".join(words)
    tok = train_tokenizer([context, "سوال کیا ہے؟"] * 5, vocab_size=500)
    backend = tok.backend_tokenizer
    answer = "لفظ40"
    s = context.index(answer)
    windows, labels = encode_labelled_windows(backend, ["سوال کیا ہے؟"], [context], np.array([s]),
                                              np.array([s + len(answer)]), max_seq_length=32, stride=8)
    assert windows.n_windows > 3
    # consecutive windows share `stride` context tokens
    ids = [windows.input_ids[windows.row_splits[w]:windows.row_splits[w + 1]].tolist() for w in range(windows.n_windows)]
    cs = [windows.char_start[windows.row_splits[w]:windows.row_splits[w + 1]].tolist() for w in range(windows.n_windows)]
    first_ctx = [c for c in cs[0] if c >= 0]
    second_ctx = [c for c in cs[1] if c >= 0]
    assert first_ctx[-8:] == second_ctx[:8]
    assert len(ids[0]) == 32
    hit = np.flatnonzero(labels.has_answer)
    assert len(hit) >= 1
    for w in range(windows.n_windows):
        if w not in hit:
            assert (labels.start_positions[w], labels.end_positions[w]) == (0, 0)
    w = hit[0]
    base = windows.row_splits[w]
    a = windows.char_start[base + labels.start_positions[w]]
    b = windows.char_end[base + labels.end_positions[w]]
    assert context[a:b].strip() == answer
    # exactly the tokenizer's own truncation="only_second" + stride + overflow
    reference = copy.deepcopy(backend)
    reference.enable_truncation(32, stride=8, strategy="only_second")
    enc = reference.encode("سوال کیا ہے؟", context)
    assert ids == [enc.ids] + [o.ids for o in enc.overflowing]


def test_bert_style_template_and_type_ids_match_the_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["کراچی پاکستان کا سب سے بڑا شہر ہے اور بندرگاہ بھی"] * 5,
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    questions = ["سب سے بڑا شہر؟", "بندرگاہ؟"]
    contexts = ["کراچی پاکستان کا سب سے بڑا شہر ہے اور بندرگاہ بھی " * 3] * 2
    windows = encode_windows(tok, questions, contexts, 20, 4, with_type_ids=True)
    reference = copy.deepcopy(tok)
    reference.enable_truncation(20, stride=4, strategy="only_second")
    expected_ids, expected_types, expected_offsets = [], [], []
    for q, c in zip(questions, contexts, strict=True):
        enc = reference.encode(q, c)
        for w in [enc, *enc.overflowing]:
            expected_ids.append(w.ids)
            expected_types.append(w.type_ids)
            expected_offsets.append([o if s == 1 else (-1, -1) for o, s in zip(w.offsets, w.sequence_ids, strict=True)])
    got = [windows.input_ids[a:b].tolist() for a, b in zip(windows.row_splits[:-1], windows.row_splits[1:], strict=True)]
    types = [windows.token_type_ids[a:b].tolist() for a, b in zip(windows.row_splits[:-1], windows.row_splits[1:],
                                                                  strict=True)]
    offsets = [list(zip(windows.char_start[a:b].tolist(), windows.char_end[a:b].tolist(), strict=True))
               for a, b in zip(windows.row_splits[:-1], windows.row_splits[1:], strict=True)]
    assert got == expected_ids and types == expected_types
    assert offsets == [[tuple(o) for o in w] for w in expected_offsets]
    assert windows.window_to_example.tolist() == sorted(windows.window_to_example.tolist())


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    from uqa.errors import UserError

    with pytest.raises(UserError, match="model.tokenizer"):
        load_tokenizer(str(tmp_path / "no-such-tokenizer"))
    with pytest.raises(UserError, match=r"Hub.*model\.tokenizer"):
        load_tokenizer("no-such-org/no-such-model")


def test_first_row_per_id():
    assert first_row_per_id(["a", "b", "a", "c", "b"]).tolist() == [0, 1, 3]
    frame = pd.DataFrame({"id": ["x", "x", "y"]})
    assert first_row_per_id(frame["id"].tolist()).tolist() == [0, 2]
