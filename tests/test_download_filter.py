"""download and filter: local directories and files, schema errors that name file and column, counted drops."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys

import datasets
import pandas as pd
import pytest
from conftest import UQA_DIR, UQA_HUB, needs_shared

from tasks.download import download, load_source
from tasks.filter import REASONS, check_row, filter_rows
from tasks.source import check_source
from uqa.data.source import current_fingerprint
from uqa.errors import DataError, UserError
from uqa.params.schema import DataParams

ROW = {"id": "q1", "title": "t", "context": "لاہور پاکستان کا ایک شہر ہے۔", "question": "لاہور کہاں ہے؟",
       "is_impossible": False, "answer": "پاکستان", "answer_start": 6}


def _write(tmp_path, rows, name="train.parquet"):
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(path, index=False)
    return path


@needs_shared
def test_download_hub_shaped_directory(tmp_path):
    record = download(DataParams(source=str(UQA_HUB)), tmp_path / "raw", tmp_path / "download.json")
    assert record["rows"] == {"train": 2000, "validation": 500}
    assert record["kind"] == "directory"
    assert record["files"]["train"][0]["sha256"].startswith("9e623ee3")
    train = datasets.load_from_disk(str(tmp_path / "raw" / "train"))
    assert train.column_names == ["id", "title", "context", "question", "is_impossible", "answer", "answer_start"]
    assert json.loads((tmp_path / "download.json").read_text())["rows"]["validation"] == 500


@needs_shared
def test_download_data_files_per_split(tmp_path):
    src = {"train": str(UQA_HUB / "data" / "train-*.parquet"), "validation": str(UQA_HUB / "data" / "validation-*.parquet")}
    record = download(DataParams(source=src), tmp_path / "raw", tmp_path / "download.json")
    assert record["kind"] == "files" and record["rows"]["train"] == 2000


@pytest.mark.parametrize("fmt", ["train.parquet", "train.jsonl", "train.csv"])
def test_download_formats(tmp_path, fmt):
    path = _write(tmp_path, [ROW, {**ROW, "id": "q2"}], fmt)
    splits, _ = load_source(DataParams(source={"train": str(path), "validation": str(path)}))
    assert splits["train"].num_rows == 2 and splits["train"].column("answer")[0].as_py() == "پاکستان"


def test_missing_column_names_file_and_column(tmp_path):
    bad = _write(tmp_path, [{k: v for k, v in ROW.items() if k != "answer_start"}], "bad.parquet")
    good = _write(tmp_path, [ROW], "good.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: missing column\(s\) answer_start"):
        load_source(DataParams(source={"train": str(bad), "validation": str(good)}))


def test_mistyped_column_names_file_and_column(tmp_path):
    bad = _write(tmp_path, [{**ROW, "answer_start": "six"}], "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: column 'answer_start' has type string, expected int64"):
        load_source(DataParams(source={"train": str(bad), "validation": str(bad)}))


def test_download_reads_what_the_fingerprint_describes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, [ROW, {**ROW, "id": "q2"}])
    params = DataParams(source={"train": "train.parquet", "validation": "train.parquet"})
    fingerprint = check_source(params)  # the `source` stage, earlier in the same run
    record = download(params, tmp_path / "raw", tmp_path / "d.json", fingerprint=fingerprint)
    assert record["files"] == fingerprint["files"]
    assert record["files"]["train"][0]["path"] == "train.parquet" and record["files"]["train"][0]["size"] > 0

    _write(tmp_path, [ROW])  # replaced between the source stage and download
    with pytest.raises(UserError, match=r"^train\.parquet changed while the run was in progress; run again$"):
        download(params, tmp_path / "raw", tmp_path / "d.json", fingerprint=fingerprint)


def test_a_file_replaced_with_the_same_mtime_is_read_afresh(tmp_path):
    path = _write(tmp_path, [ROW, {**ROW, "id": "q2"}, {**ROW, "id": "q3"}])
    params = DataParams(source={"train": str(path), "validation": str(path)})
    assert load_source(params)[0]["train"].num_rows == 3
    stat = path.stat()
    _write(tmp_path, [ROW])  # new content, old mtime (cp -p, rsync -a, an unpacked archive)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    splits, provenance = load_source(params)
    assert splits["train"].num_rows == 1
    assert provenance["files"]["train"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_refuses_a_fingerprint_of_another_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, [ROW])
    check_source(DataParams(source={"train": "train.parquet", "validation": "train.parquet"}))
    with pytest.raises(UserError, match=r"data/source\.json describes the source .*run the `source` stage first"):
        current_fingerprint(DataParams(source="uqa/UQA"))


def test_hub_unreachable_is_a_clear_message():
    with pytest.raises(UserError, match=r"Hub.*data\.source.*local"):
        load_source(DataParams(source="uqa/UQA"))


def test_single_file_source_asks_for_splits(tmp_path):
    path = _write(tmp_path, [ROW])
    with pytest.raises(UserError, match="one per split"):
        load_source(DataParams(source=str(path)))


def test_missing_local_path():
    with pytest.raises(UserError, match="does not exist"):
        load_source(DataParams(source="./no/such/dir"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": ""}, "missing_id"),
        ({"context": ""}, "empty_context"),
        ({"context": None}, "empty_context"),
        ({"question": None}, "empty_question"),
        ({"question": "  "}, "empty_question"),
        ({"is_impossible": None}, "missing_is_impossible"),
        ({"is_impossible": True, "answer": "", "answer_start": -1}, "unanswerable"),
        ({"answer": " "}, "empty_answer"),
        ({"answer_start": -1}, "bad_answer_start"),
        ({"answer_start": 999}, "bad_answer_start"),
        ({"answer_start": 7}, "misaligned_answer"),
    ],
)
def test_check_row_reasons(change, reason):
    assert reason in REASONS
    assert check_row({**ROW, **change}, keep_unanswerable=False)[0] == reason


def test_edge_whitespace_is_stripped_and_offset_shifted():
    reason, row = check_row({**ROW, "answer": " پاکستان ", "answer_start": 5}, keep_unanswerable=False)
    assert reason is None
    assert (row["answer"], row["answer_start"]) == ("پاکستان", 6)
    assert row["context"][row["answer_start"]:row["answer_start"] + len(row["answer"])] == row["answer"]


def test_unanswerable_kept_in_squad2_mode():
    reason, row = check_row({**ROW, "is_impossible": True, "answer": "", "answer_start": -1}, keep_unanswerable=True)
    assert reason is None and row["answer_start"] == -1


def test_bad_rows_are_counted_not_crashing(tmp_path):
    rows = [ROW, {**ROW, "id": "q2", "answer_start": 8}, {**ROW, "id": "q3", "context": ""},
            {**ROW, "id": "q4", "question": math.nan}, {**ROW, "id": "q5", "answer": " پاکستان", "answer_start": 5},
            {**ROW, "id": "q6", "is_impossible": True, "answer": "", "answer_start": -1}]
    path = _write(tmp_path, rows)
    download(DataParams(source={"train": str(path), "validation": str(path)}), tmp_path / "raw", tmp_path / "d.json")
    report = filter_rows(DataParams(), tmp_path / "raw", tmp_path / "filtered", tmp_path / "filter.json")
    train = report["train"]
    assert train["rows_in"] == 6 and train["rows_kept"] == 2
    assert train["dropped"] == {"empty_context": 1, "empty_question": 1, "unanswerable": 1, "misaligned_answer": 1}
    assert train["rows_in"] == train["rows_kept"] + sum(train["dropped"].values())
    assert train["examples"]["misaligned_answer"] == [{"row": 1, "id": "q2"}]
    assert train["answers_stripped"] == 1
    kept = datasets.load_from_disk(str(tmp_path / "filtered" / "train"))
    assert kept["id"] == ["q1", "q5"] and kept["source_row"] == [0, 4]


def test_stage_cli_reports_bad_file_without_traceback(tmp_path):
    bad = _write(tmp_path, [{**ROW, "is_impossible": "maybe"}], "bad.parquet")
    (tmp_path / "params.yaml").write_text(f"data:\n  source: {{train: {bad}, validation: {bad}}}\n")
    r = subprocess.run([sys.executable, "-m", "tasks.download"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.parquet: column 'is_impossible' has type string, expected bool" in r.stderr
    assert "Traceback" not in r.stderr


@needs_shared
def test_filter_invariant_on_real_uqa(tmp_path):
    download(DataParams(source=str(UQA_DIR)), tmp_path / "raw", tmp_path / "d.json")
    for keep in (False, True):
        report = filter_rows(DataParams(keep_unanswerable=keep), tmp_path / "raw", tmp_path / f"f{keep}", tmp_path / "f.json")
        for split, expected_in in (("train", 124_745), ("validation", 8_721)):
            r = report[split]
            assert r["rows_in"] == expected_in
            assert r["rows_in"] == r["rows_kept"] + sum(r["dropped"].values())
        if not keep:
            assert report["train"]["dropped"] == {"unanswerable": 41_727}
            assert report["train"]["rows_kept"] == 83_018
            assert report["train"]["answers_stripped"] > 0
        else:
            assert report["train"]["rows_kept"] == 124_745
