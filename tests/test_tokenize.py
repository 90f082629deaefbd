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
from uqa.params.validation import params_from_dict
from uqa.text.encoding import encode_labelled_windows, encode_windows
from uqa.text.tokenizer import load_tokenizer


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


# real UQA rows, a fixed sample spread over the whole file: every TRAIN_EVERY-th train row (each part of
# the file, every kind of context length) and the first 1,500 validation rows (repeated ids, both kinds
# of question). The properties below hold row by row, so a sample checks them on real Urdu text in
# seconds; the whole split took 199 s here.
TRAIN_EVERY = 10


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("real")
    for split, rows in (("train", slice(None, None, TRAIN_EVERY)), ("validation", slice(0, 1500))):
        table = pq.read_table(UQA_DIR / f"{split}.parquet")
        pq.write_table(table.take(np.arange(table.num_rows)[rows]), root / f"{split}.parquet")
    params = params_from_dict({
        "data": {"source": {s: str(root / f"{s}.parquet") for s in ("train", "validation")}},
        "model": {"tokenizer": str(URDU_TOKENIZER), "init": "scratch", "config": TINY_CONFIG},
    })
    download(params.data, root / "raw", root / "download.json")
    filter_rows(params.data, root / "raw", root / "filtered", root / "filter.json")
    report = tokenize_splits(params, root / "filtered", root / "tokenized", root / "tokenize.json")
    return root, report


@needs_shared
def test_every_train_label_is_the_tightest_span(real):
    """Every window of the sampled real train rows, re-tokenized by the tokenizer itself: each label is
    the tightest span covering its answer, and every answer that fits in a window is labelled there."""
    root, report = real
    filtered = datasets.load_from_disk(str(root / "filtered" / "train")).to_pandas()
    assert len(filtered) > 5000  # the sample is large enough to mean something
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
    from uqa.text.tokenizer import train_tokenizer

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


# --- the sharded, bounded-memory stage against the previous, whole-split-in-memory implementation ----


def reference_tokenize_splits(params, in_dir, tokenizer_dir):
    """The stage as it was before it wrote shards (kept here as the reference): every split tokenized
    and windowed in memory at once. Returns ({split: features table}, report without timings) and
    saves the tokenizer it used to `tokenizer_dir`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tasks.tokenize import SPLITS, get_tokenizer
    from uqa.model.modeling import sequence_limit
    from uqa.text.encoding import encode_pairs
    from uqa.text.passes import features_table, split_stats

    tables = {s: datasets.load_from_disk(str(in_dir / s)).data.table for s in SPLITS}
    val_rows = first_row_per_id(tables["validation"].column("id").to_pylist())
    tables["validation"] = tables["validation"].take(pa.array(val_rows))
    columns = {s: {c: tables[s].column(c).to_pylist() for c in ("question", "context", "answer")} for s in SPLITS}
    columns["validation"]["id"] = tables["validation"].column("id").to_pylist()
    for s in SPLITS:
        columns[s]["answer_start"] = tables[s].column("answer_start").to_numpy()
        columns[s]["is_impossible"] = tables[s].column("is_impossible").to_numpy(zero_copy_only=False)
    texts = (t for c in (columns["train"]["question"], columns["train"]["context"]) for t in c)
    tokenizer = get_tokenizer(params, texts)
    backend = tokenizer.backend_tokenizer
    with_type_ids = "token_type_ids" in tokenizer.model_input_names
    limit = sequence_limit(params.model, tokenizer)
    stride = params.tokenize.stride
    encoded = {s: encode_pairs(backend, columns[s]["question"], columns[s]["context"], with_type_ids) for s in SPLITS}
    longest = int(max(encoded[s].lengths.max() for s in SPLITS))
    if params.tokenize.max_seq_length == "auto":
        max_seq_length = min(longest, limit)
    else:
        max_seq_length = int(params.tokenize.max_seq_length)
    report = {
        "max_seq_length": max_seq_length,
        "max_seq_length_param": params.tokenize.max_seq_length,
        "longest_pair_tokens": longest,
        "model_limit": limit,
        "stride": stride,
        "tokenizer": params.model.tokenizer_source or "trained on train split",
        "vocab_size": len(tokenizer),
    }
    out = {}
    for split in SPLITS:
        c = columns[split]
        layout = encoded[split].layout(max_seq_length, stride)
        windows = encoded[split].assemble(layout, with_offsets=split == "validation")
        starts = c["answer_start"].astype(np.int64)
        ends = starts + pc.utf8_length(tables[split].column("answer")).to_numpy(zero_copy_only=False)
        answerable = ~c["is_impossible"].astype(bool)
        starts = np.where(answerable, starts, -1)
        labels = encoded[split].labels(layout, starts, ends, cls_index=0)
        extra = None
        if split == "validation":
            wte = windows.window_to_example
            extra = {
                "example_index": pa.array(val_rows[wte].astype(np.int32)),
                "example_id": pa.array([c["id"][i] for i in wte.tolist()], type=pa.string()),
                "offset_start": pa.ListArray.from_arrays(pa.array(windows.row_splits.astype(np.int32)),
                                                         pa.array(windows.char_start)),
                "offset_end": pa.ListArray.from_arrays(pa.array(windows.row_splits.astype(np.int32)),
                                                       pa.array(windows.char_end)),
            }
        out[split] = features_table(windows, labels, extra)
        report[split] = split_stats(windows, labels, c["context"], c["answer"], starts, answerable)
    tokenizer.save_pretrained(str(tokenizer_dir))
    return out, report


def assert_same_as_reference(out_dir, report, reference, chunk_rows):
    """Same rows in the same order, same columns and types, same report (but timings), and a
    multi-shard save_to_disk directory that the train and evaluate stages read as before."""
    import pyarrow.compute as pc

    from uqa.model.trainer import feature_lengths
    from uqa.text.windows import windows_from_table

    tables, ref_report = reference
    assert {k: v for k, v in report.items() if k != "seconds"} == ref_report
    for split, ref in tables.items():
        ds = datasets.load_from_disk(str(out_dir / split))
        assert ds.features == datasets.Dataset(ref).features
        assert ds.data.table.schema.equals(ref.schema)
        assert ds.data.table.equals(ref), split
        shards = sorted(p.name for p in (out_dir / split).glob("*.arrow"))
        n = -(-ref_report[split]["examples"] // chunk_rows)
        assert shards == [f"data-{k:05d}-of-{n:05d}.arrow" for k in range(n)]
        state = json.loads((out_dir / split / "state.json").read_text())
        assert [f["filename"] for f in state["_data_files"]] == shards
        assert sorted(p.name for p in (out_dir / split).iterdir()) == sorted([*shards, "state.json",
                                                                              "dataset_info.json"])
    # what training reads: the lengths for length-grouped batches, from the Arrow table
    train = datasets.load_from_disk(str(out_dir / "train"))
    assert feature_lengths(train) == pc.list_value_length(tables["train"].column("input_ids")).to_pylist()
    assert train[len(train) - 1]["input_ids"] == tables["train"].column("input_ids")[-1].as_py()
    # what evaluation reads: the windows with their offsets and examples
    got = windows_from_table(datasets.load_from_disk(str(out_dir / "validation")).data.table)
    want = windows_from_table(tables["validation"])
    for field in ("input_ids", "char_start", "char_end", "row_splits", "window_to_example"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []  # no spill, no temporaries


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_filtered(tmp_path_factory):
    """The shipped demo data through download + filter, unanswerable rows kept, and a validation
    split that repeats ids (a later row with an earlier id and another question: it must be skipped)."""
    from conftest import DEMO_SOURCE

    from uqa.params.overrides import deep_merge

    root = tmp_path_factory.mktemp("demo")
    rows = [json.loads(line) for line in open(DEMO_SOURCE["validation"], encoding="utf-8")]
    with open(root / "validation.jsonl", "w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            if i % 7 == 3:
                fh.write(json.dumps(dict(rows[i - 3], question=rows[i - 3]["question"] + " اور"),
                                    ensure_ascii=False) + "\n")
    from conftest import demo_tiny_params

    base = deep_merge(demo_tiny_params(), {"data": {"source": {"train": DEMO_SOURCE["train"],
                                                               "validation": str(root / "validation.jsonl")},
                                                    "keep_unanswerable": True}})
    params = params_from_dict(base)
    download(params.data, root / "raw", root / "download.json")
    filter_rows(params.data, root / "raw", root / "filtered", root / "filter.json")
    return root, base


@pytest.mark.parametrize("tokenize", [{"max_seq_length": "auto"}, {"max_seq_length": 40, "stride": 8}],
                         ids=["auto", "windows-40-stride-8"])
def test_shards_are_the_unsharded_output(demo_filtered, tokenize, tmp_path):
    from uqa.params.overrides import deep_merge

    root, base = demo_filtered
    params = params_from_dict(deep_merge(base, {"tokenize": tokenize}))
    reference = reference_tokenize_splits(params, root / "filtered", tmp_path / "ref-tokenizer")
    assert reference[1]["validation"]["examples"] < len(datasets.load_from_disk(str(root / "filtered/validation")))
    chunk_rows = 256  # 10 train shards, 2 validation shards
    report = tokenize_splits(params, root / "filtered", tmp_path / "out", tmp_path / "tokenize.json",
                             chunk_rows=chunk_rows)
    assert_same_as_reference(tmp_path / "out", report, reference, chunk_rows)
    assert json.loads((tmp_path / "tokenize.json").read_text()) == report
    # the tokenizer trained on the streamed train texts is the one trained on them in memory
    assert (tmp_path / "out/tokenizer/tokenizer.json").read_bytes() == \
        (tmp_path / "ref-tokenizer/tokenizer.json").read_bytes()
    if tokenize["max_seq_length"] == "auto":
        return
    assert report["train"]["features"] > 1.3 * report["train"]["examples"]  # long contexts in several windows
    # two processes: byte for byte the same files (shards, state.json with its fingerprint, tokenizer)
    params2 = params_from_dict(deep_merge(base, {"tokenize": {**tokenize, "num_proc": 2}}))
    report2 = tokenize_splits(params2, root / "filtered", tmp_path / "out2", tmp_path / "tokenize2.json",
                              chunk_rows=chunk_rows)
    assert {k: v for k, v in report2.items() if k != "seconds"} == {k: v for k, v in report.items() if k != "seconds"}
    assert tree_bytes(tmp_path / "out2") == tree_bytes(tmp_path / "out")


def test_a_failed_run_keeps_the_previous_output_and_leaves_nothing(demo_filtered, tmp_path):
    from uqa.errors import UserError
    from uqa.params.overrides import deep_merge

    root, base = demo_filtered
    out = tmp_path / "out"
    tokenize_splits(params_from_dict(base), root / "filtered", out, tmp_path / "tokenize.json", chunk_rows=500)
    before = tree_bytes(out)
    # detected after the tokenizer pass, once spill files and some shards exist
    bad = params_from_dict(deep_merge(base, {"tokenize": {"max_seq_length": 40, "stride": 30}}))
    with pytest.raises(UserError, match="lower tokenize.stride"):
        tokenize_splits(bad, root / "filtered", out, tmp_path / "tokenize.json", chunk_rows=500)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer", "train", "validation"]


@needs_shared
def test_real_uqa_sample_shards_are_the_unsharded_output(tmp_path):
    """Real UQA rows (every 40th train row, the first 1,500 validation rows: repeated ids, both kinds
    of question) with the Urdu tokenizer, several shards per split, in one and in two processes."""
    import pyarrow.parquet as pq

    from uqa.params.overrides import deep_merge

    for split, rows in (("train", slice(None, None, 40)), ("validation", slice(0, 1500))):
        table = pq.read_table(UQA_DIR / f"{split}.parquet")
        index = np.arange(table.num_rows)[rows]
        pq.write_table(table.take(index), tmp_path / f"{split}.parquet")
    base = {
        "data": {"source": {s: str(tmp_path / f"{s}.parquet") for s in ("train", "validation")},
                 "keep_unanswerable": True},
        "model": {"tokenizer": str(URDU_TOKENIZER), "init": "scratch", "config": TINY_CONFIG},
    }
    params = params_from_dict(base)
    download(params.data, tmp_path / "raw", tmp_path / "download.json")
    filter_rows(params.data, tmp_path / "raw", tmp_path / "filtered", tmp_path / "filter.json")
    reference = reference_tokenize_splits(params, tmp_path / "filtered", tmp_path / "ref-tokenizer")
    chunk_rows = 700
    report = tokenize_splits(params, tmp_path / "filtered", tmp_path / "out", tmp_path / "tokenize.json",
                             chunk_rows=chunk_rows)
    assert report["max_seq_length"] == 512 and report["train"]["features"] > report["train"]["examples"]
    assert report["validation"]["examples"] < 1500  # one example per id
    assert_same_as_reference(tmp_path / "out", report, reference, chunk_rows)
    params2 = params_from_dict(deep_merge(base, {"tokenize": {"num_proc": 2}}))
    tokenize_splits(params2, tmp_path / "filtered", tmp_path / "out2", tmp_path / "tokenize2.json",
                    chunk_rows=chunk_rows)
    assert tree_bytes(tmp_path / "out2") == tree_bytes(tmp_path / "out")
