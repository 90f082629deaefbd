"""Tokenize-and-cache on the full real UQA (train + validation) with the Urdu XLM-R-shaped tokenizer.

Three sides, each in its own process (so peak RSS is its own), each run --repeats times, cold
(fresh caches and outputs every run):
  seed  the blog post's data path, re-implemented faithfully: load, filter(is_impossible), the
        one-example-at-a-time length scan over train and validation, preprocess_examples with
        padding="max_length", Dataset.map (Arrow written by map)
  ours  the pipeline's download -> filter -> tokenize stage functions (Arrow written by save_to_disk)
  bare  the limit: one batched tokenizer call (truncation, stride 128, offsets) over the same pairs
Then the rerun with unchanged inputs: the DVC check the flow and `dvc repro` make before skipping.

    python benchmarks/tokenize_bench.py [--shared ../shared] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import dir_bytes, median, shared_dir, table, write_result

TINY = {"model_type": "xlm-roberta", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 514, "type_vocab_size": 1}


def side_seed(shared: Path, work: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    raw = datasets.load_dataset("parquet", data_files={
        "train": str(shared / "data/uqa/train.parquet"), "validation": str(shared / "data/uqa/validation.parquet")})

    def filter_function(example):
        return not example["is_impossible"]

    raw["train"] = raw["train"].filter(filter_function)
    raw["validation"] = raw["validation"].filter(filter_function)
    tokenizer = AutoTokenizer.from_pretrained(str(shared / "models/urdu-xlmr-32k"))
    t1 = time.perf_counter()
    max_seq_length = 0
    for item in raw["train"]:
        tokens = tokenizer.encode(item["question"] + "\n\n" + item["context"])
        if len(tokens) > max_seq_length:
            max_seq_length = len(tokens)
    for item in raw["validation"]:
        tokens = tokenizer.encode(item["question"] + "\n\n" + item["context"])
        if len(tokens) > max_seq_length:
            max_seq_length = len(tokens)
    if max_seq_length > 512:
        max_seq_length = 512
    stride = 128
    t2 = time.perf_counter()

    def preprocess_examples(examples):
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_seq_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        offset_mapping = inputs.pop("offset_mapping")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        answers = examples["answer"]
        answer_starts = examples["answer_start"]
        start_positions = []
        end_positions = []
        for i, offset in enumerate(offset_mapping):
            sample_idx = sample_map[i]
            answer = answers[sample_idx]
            start_char = answer_starts[sample_idx]
            end_char = answer_starts[sample_idx] + len(answer)
            sequence_ids = inputs.sequence_ids(i)
            idx = 0
            while sequence_ids[idx] != 1:
                idx += 1
            context_start = idx
            while sequence_ids[idx] == 1:
                idx += 1
            context_end = idx - 1
            if offset[context_start][0] > start_char or offset[context_end][1] < end_char:
                start_positions.append(0)
                end_positions.append(0)
            else:
                idx = context_start
                while idx <= context_end and offset[idx][0] <= start_char:
                    idx += 1
                start_positions.append(idx - 1)
                idx = context_end
                while idx >= context_start and offset[idx][1] >= end_char:
                    idx -= 1
                end_positions.append(idx + 1)
        inputs["start_positions"] = start_positions
        inputs["end_positions"] = end_positions
        return inputs

    train = raw["train"].map(preprocess_examples, batched=True, remove_columns=raw["train"].column_names,
                             cache_file_name=str(work / "seed-train.arrow"), load_from_cache_file=False)
    t3 = time.perf_counter()
    validation = raw["validation"].map(preprocess_examples, batched=True,
                                       remove_columns=raw["validation"].column_names,
                                       cache_file_name=str(work / "seed-validation.arrow"), load_from_cache_file=False)
    t4 = time.perf_counter()
    return {
        "total_s": t4 - t0, "load_filter_s": t1 - t0, "length_scan_s": t2 - t1, "train_map_s": t3 - t2,
        "validation_map_s": t4 - t3, "max_seq_length": max_seq_length, "train_features": len(train),
        "validation_features": len(validation),
        "train_arrow_bytes": (work / "seed-train.arrow").stat().st_size,
        "arrow_bytes": (work / "seed-train.arrow").stat().st_size + (work / "seed-validation.arrow").stat().st_size,
    }


def _params(shared: Path):
    from uqa.params.validation import params_from_dict

    return params_from_dict({
        "data": {"source": str(shared / "data/uqa")},
        "model": {"tokenizer": str(shared / "models/urdu-xlmr-32k"), "init": "scratch", "config": TINY},
    })


def side_ours(shared: Path, work: Path) -> dict:
    from tasks.download import download
    from tasks.filter import filter_rows
    from tasks.tokenize import tokenize_splits
    from uqa.workspace.dvc_ops import working_dir

    p = _params(shared)
    with working_dir(work):
        t0 = time.perf_counter()
        download(p.data)
        t1 = time.perf_counter()
        filter_rows(p.data)
        t2 = time.perf_counter()
        report = tokenize_splits(p)
        t3 = time.perf_counter()
    tokenized = work / "data" / "tokenized"
    return {
        "total_s": t3 - t0, "download_s": t1 - t0, "filter_s": t2 - t1, "tokenize_s": t3 - t2,
        **{f"tokenize_{k}_s": v for k, v in report["seconds"].items()},
        "max_seq_length": report["max_seq_length"], "train_features": report["train"]["features"],
        "validation_features": report["validation"]["features"],
        "train_arrow_bytes": dir_bytes(tokenized / "train"),
        "arrow_bytes": dir_bytes(tokenized / "train") + dir_bytes(tokenized / "validation"),
    }


def side_bare(shared: Path, work: Path) -> dict:
    import copy

    import pandas as pd

    from uqa.text.tokenizer import load_tokenizer

    frames = [pd.read_parquet(shared / f"data/uqa/{s}.parquet") for s in ("train", "validation")]
    frame = pd.concat(frames)
    frame = frame[~frame["is_impossible"]]
    pairs = list(zip(frame["question"].str.strip(), frame["context"], strict=True))
    backend = copy.deepcopy(load_tokenizer(str(shared / "models/urdu-xlmr-32k")).backend_tokenizer)
    backend.enable_truncation(512, stride=128, strategy="only_second")
    backend.no_padding()
    t0 = time.perf_counter()
    encodings = backend.encode_batch(pairs)
    t1 = time.perf_counter()
    return {"total_s": t1 - t0, "pairs": len(pairs),
            "windows": sum(1 + len(e.overflowing) for e in encodings)}


def rerun_check(shared: Path, work: Path) -> dict:
    """The no-op: data stages done and recorded in dvc.lock, nothing changed; time the skip decision."""
    from common import make_project

    from uqa.workspace.dvc_ops import dvc_commit, dvc_status

    project = make_project(work / "project", json.loads(json.dumps({
        "data": {"source": str(shared / "data/uqa")},
        "model": {"tokenizer": str(shared / "models/urdu-xlmr-32k"), "init": "scratch", "config": TINY}})))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "tokenize"], cwd=project, env=env, check=True,
                   capture_output=True)
    dvc_status(project, "tokenize")  # DVC's state db learns the hashes once, as on any second run
    t0 = time.perf_counter()
    up_to_date = all(not dvc_status(project, s) for s in ("download", "filter", "tokenize"))
    t1 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dvc", "repro", "tokenize"], cwd=project, env=env, check=True,
                       capture_output=True, text=True)
    t2 = time.perf_counter()
    del dvc_commit
    return {"flow_skip_check_s": t1 - t0, "dvc_repro_noop_s": t2 - t1, "up_to_date": up_to_date,
            "dvc_repro_output": r.stdout.strip().splitlines()[-1]}


SIDES = {"seed": side_seed, "ours": side_ours, "bare": side_bare, "rerun": rerun_check}


def run_child(side: str, shared: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"tokbench-{side}-") as tmp:
        env = dict(os.environ, HF_HOME=str(Path(tmp) / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                   HF_DATASETS_DISABLE_PROGRESS_BARS="1", DVC_NO_ANALYTICS="1")
        r = subprocess.run([sys.executable, __file__, "--child", side, "--shared", str(shared), "--work", tmp],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--work")
    args = parser.parse_args()
    shared = shared_dir(args.shared)
    if args.child:
        out = SIDES[args.child](shared, Path(args.work))
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    runs: dict[str, list[dict]] = {s: [] for s in ("seed", "ours", "bare")}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every side alike
        for side in runs:
            runs[side].append(run_child(side, shared))
            print(f"{side}: {runs[side][-1]['total_s']:.1f}s", file=sys.stderr)
    rerun = run_child("rerun", shared)
    med = {side: {k: median([r[k] for r in rs]) for k in rs[0] if isinstance(rs[0][k], (int, float))}
           for side, rs in runs.items()}
    seed, ours, bare = med["seed"], med["ours"], med["bare"]
    summary = {
        "speedup_vs_seed": seed["total_s"] / ours["total_s"],
        "tokenize_stage_vs_bare_tokenizer": ours["tokenize_s"] / bare["total_s"],
        # like for like: the bare call's tokenizer is loaded before its clock starts
        "tokenize_stage_without_tokenizer_load_vs_bare": (ours["tokenize_s"] - ours["tokenize_load_tokenizer_s"])
        / bare["total_s"],
        "arrow_bytes_ratio_vs_seed": ours["arrow_bytes"] / seed["arrow_bytes"],
        "train_arrow_bytes_ratio_vs_seed": ours["train_arrow_bytes"] / seed["train_arrow_bytes"],
        "rerun_flow_skip_check_s": rerun["flow_skip_check_s"],
        "rerun_dvc_repro_noop_s": rerun["dvc_repro_noop_s"],
        "peak_rss_mib_ours": ours["peak_rss_mib"],
    }
    print(table(
        ["side", "median s", "detail", "Arrow MB", "peak RSS MiB"],
        [["seed data path", seed["total_s"],
          f"load+filter {seed['load_filter_s']:.1f}, length scan {seed['length_scan_s']:.1f}, "
          f"train map {seed['train_map_s']:.1f}, validation map {seed['validation_map_s']:.1f}",
          seed["arrow_bytes"] / 1e6, seed["peak_rss_mib"]],
         ["pipeline download+filter+tokenize", ours["total_s"],
          f"download {ours['download_s']:.1f}, filter {ours['filter_s']:.1f}, tokenize {ours['tokenize_s']:.1f}",
          ours["arrow_bytes"] / 1e6, ours["peak_rss_mib"]],
         ["bare encode_batch (the limit)", bare["total_s"], f"{bare['windows']:.0f} windows", "-",
          bare["peak_rss_mib"]]]))
    print(json.dumps(summary, indent=2))
    print(f"rerun: {rerun}")
    write_result("tokenize", {"repeats": args.repeats, "runs": runs, "medians": med, "rerun": rerun,
                              "summary": summary})


if __name__ == "__main__":
    main()
