"""Tokenize-and-cache at scale: wall time and peak RSS of the tokenize stage against corpus size.

Distinct-text corpora of N rows from real UQA train (124,745 rows): the train rows repeated, copy
k >= 1 with " (k)" appended to every question and context and "-k" to every id, so that no text
repeats (the stage tokenizes each distinct context once: plain copies would cost nothing). Validation
is the real validation split. Per size, in a temporary directory:

  prep      (its own process) the corpus as parquet, then the pipeline's download and filter stages
            (data/filtered: the answerable rows, as with the default params)
  sharded   (a fresh process) tasks.tokenize.tokenize_splits with the Urdu XLM-R-shaped tokenizer;
            timed, and its peak RSS taken from the kernel (wait4's ru_maxrss: the largest resident
            set of the process and of any worker it waited for) and by sampling the whole process
            tree (the sum, which is what matters with tokenize.num_proc > 1)
  previous  (--previous-sizes, a fresh process) the implementation before shards, which held every
            split in memory: tests/test_tokenize.py's reference_tokenize_splits + save_to_disk; it
            also checks that both outputs are the same table (after its own peak RSS is taken)

    python benchmarks/tokenize_scaling.py [--sizes 125000,250000,500000,1000000] [--num-proc 1]
        [--previous-sizes 125000,250000] [--repeats 1] [--name tokenize_scaling] [--shared ../shared]

With --repeats N the sides run N times each, interleaved (tokenize, previous, tokenize, ...), on the
same corpus; the table shows medians. Results go to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import dir_bytes, median, shared_dir, table, write_result

TINY = {"model_type": "xlm-roberta", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 514, "type_vocab_size": 1}
GIB = 2**30


def _params(shared: Path, work: Path, num_proc: int = 1):
    from uqa.params.validation import params_from_dict

    return params_from_dict({
        "data": {"source": {s: str(work / f"{s}.parquet") for s in ("train", "validation")}},
        "model": {"tokenizer": str(shared / "models/urdu-xlmr-32k"), "init": "scratch", "config": TINY},
        "tokenize": {"num_proc": num_proc},
    })


def child_prep(shared: Path, work: Path, rows: int, num_proc: int) -> dict:
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.download import download
    from tasks.filter import filter_rows

    t0 = time.perf_counter()
    train = pq.read_table(shared / "data/uqa/train.parquet")
    parts, k = [], 0
    while sum(p.num_rows for p in parts) < rows:
        part = train.slice(0, min(train.num_rows, rows - sum(p.num_rows for p in parts)))
        if k:
            for name, suffix in (("question", f" ({k})"), ("context", f" ({k})"), ("id", f"-{k}")):
                joined = pc.binary_join_element_wise(part.column(name), pa.scalar(suffix), "")
                part = part.set_column(part.schema.get_field_index(name), part.schema.field(name), joined)
        parts.append(part)
        k += 1
    corpus = pa.concat_tables(parts)
    pq.write_table(corpus, work / "train.parquet", compression="zstd")
    del corpus, parts, train
    shutil.copy2(shared / "data/uqa/validation.parquet", work / "validation.parquet")
    t1 = time.perf_counter()
    p = _params(shared, work, num_proc)
    download(p.data, work / "raw", work / "download.json")
    t2 = time.perf_counter()
    report = filter_rows(p.data, work / "raw", work / "filtered", work / "filter.json")
    t3 = time.perf_counter()
    shutil.rmtree(work / "raw")
    return {"build_s": t1 - t0, "download_s": t2 - t1, "filter_s": t3 - t2,
            "train_rows_kept": report["train"]["rows_kept"], "validation_rows_kept": report["validation"]["rows_kept"]}


def child_tokenize(shared: Path, work: Path, rows: int, num_proc: int) -> dict:
    from tasks.tokenize import tokenize_splits

    p = _params(shared, work, num_proc)
    t0 = time.perf_counter()
    report = tokenize_splits(p, work / "filtered", work / "tokenized", work / "tokenize.json")
    return {"stage_s": time.perf_counter() - t0, "report": report,
            "train_shards": len(list((work / "tokenized/train").glob("*.arrow"))),
            "arrow_bytes": dir_bytes(work / "tokenized/train") + dir_bytes(work / "tokenized/validation")}


def child_previous(shared: Path, work: Path, rows: int, num_proc: int) -> dict:
    """The stage before shards (every split in memory), then: is its output the new stage's?"""
    import datasets
    from common import tests_importable

    with tests_importable():  # this benchmark's environment, as for the other sides
        from test_tokenize import reference_tokenize_splits

    p = _params(shared, work, 1)
    t0 = time.perf_counter()
    tables, report = reference_tokenize_splits(p, work / "filtered", work / "previous/tokenizer")
    for split, t in tables.items():
        datasets.Dataset(t).save_to_disk(str(work / "previous" / split))
    stage_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del tables
    new_report = json.loads((work / "tokenize.json").read_text())
    new_report.pop("seconds")
    same = new_report == report
    for split in ("train", "validation"):
        a = datasets.load_from_disk(str(work / "previous" / split))
        b = datasets.load_from_disk(str(work / "tokenized" / split))
        same = same and a.features == b.features and a.data.table.equals(b.data.table)
    return {"stage_s": stage_s, "peak_rss_before_check": peak, "identical_to_sharded": bool(same)}


CHILDREN = {"prep": child_prep, "sharded": child_tokenize, "previous": child_previous}


def run_child(kind: str, shared: Path, work: Path, rows: int, num_proc: int) -> dict:
    """The child in a fresh process: its wall time, CPU time and peak RSS (wait4 and tree sampling)."""
    import psutil

    env = dict(os.environ, HF_HOME=str(work / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", DVC_NO_ANALYTICS="1", TOKENIZERS_PARALLELISM="true")
    cmd = [sys.executable, __file__, "--child", kind, "--shared", str(shared), "--work", str(work),
           "--rows", str(rows), "--num-proc", str(num_proc)]
    t0 = time.perf_counter()
    errors = open(work / f"{kind}.stderr", "w+")  # noqa: SIM115 (read back below)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    tree_peak = 0
    stop = threading.Event()

    def sample() -> None:  # the sum over the process and its workers, every 0.1 s
        nonlocal tree_peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            tree_peak = max(tree_peak, total)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    errors.seek(0)
    err = errors.read()
    errors.close()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} ({rows} rows) failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_rss_bytes=usage.ru_maxrss * 1024,
                  tree_peak_rss_bytes=tree_peak)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared")
    parser.add_argument("--sizes", default="125000,250000,500000,1000000")
    parser.add_argument("--previous-sizes", default="125000,250000",
                        help="sizes at which to run the previous (in-memory) implementation too; '' for none")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--name", default="tokenize_scaling")
    parser.add_argument("--child")
    parser.add_argument("--work")
    parser.add_argument("--rows", type=int)
    args = parser.parse_args()
    shared = shared_dir(args.shared)
    if args.child:
        print(json.dumps(CHILDREN[args.child](shared, Path(args.work), args.rows, args.num_proc)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    previous_sizes = {int(s) for s in args.previous_sizes.split(",") if s}
    runs = []
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix=f"tokscale-{rows}-") as tmp:
            work = Path(tmp)
            prep = run_child("prep", shared, work, rows, args.num_proc)
            run = {"rows": rows, "prep": prep, "tokenize_runs": [], "previous_runs": []}
            for _ in range(args.repeats):  # interleaved: drifting machine load hits both sides alike
                tok = run_child("sharded", shared, work, rows, args.num_proc)
                run["tokenize_runs"].append(tok)
                print(f"{rows} rows: tokenize {tok['wall_s']:.1f} s (CPU {tok['cpu_s']:.1f} s), peak RSS "
                      f"{tok['peak_rss_bytes'] / GIB:.2f} GiB (tree {tok['tree_peak_rss_bytes'] / GIB:.2f}); "
                      f"{tok['report']['train']['examples']} train examples, {tok['train_shards']} shards",
                      file=sys.stderr)
                write_result(args.name, {"complete": False, "runs": [*runs, run]})  # a killed run keeps these
                if rows in previous_sizes:
                    prev = run_child("previous", shared, work, rows, 1)
                    run["previous_runs"].append(prev)
                    print(f"  previous: {prev['wall_s']:.1f} s (CPU {prev['cpu_s']:.1f} s), peak RSS "
                          f"{prev['peak_rss_before_check'] / GIB:.2f} GiB, identical: {prev['identical_to_sharded']}",
                          file=sys.stderr)
                    write_result(args.name, {"complete": False, "runs": [*runs, run]})
            run["tokenize"] = _medians(run["tokenize_runs"])
            run["previous"] = _medians(run["previous_runs"]) if run["previous_runs"] else None
            runs.append(run)
    headers = ["corpus rows", "train examples", "train windows", "shards", "wall s", "CPU s", "peak RSS GiB",
               "tree peak GiB", "previous: wall s", "previous: CPU s", "previous: peak RSS GiB", "identical"]
    lines = []
    for r in runs:
        t, prev = r["tokenize"], r.get("previous")
        lines.append([f"{r['rows']:,}", f"{t['report']['train']['examples']:,}", f"{t['report']['train']['features']:,}",
                      t["train_shards"], t["wall_s"], t["cpu_s"], round(t["peak_rss_bytes"] / GIB, 2),
                      round(t["tree_peak_rss_bytes"] / GIB, 2),
                      prev["wall_s"] if prev else "-", prev["cpu_s"] if prev else "-",
                      round(prev["peak_rss_before_check"] / GIB, 2) if prev else "-",
                      prev["identical_to_sharded"] if prev else "-"])
    print(table(headers, lines))
    peaks = [r["tokenize"]["peak_rss_bytes"] for r in runs]
    summary = {"max_peak_rss_gib": max(peaks) / GIB, "goal_peak_rss_le_2_gib": max(peaks) <= 2 * GIB,
               "peak_rss_gib_by_rows": {r["rows"]: r["tokenize"]["peak_rss_bytes"] / GIB for r in runs},
               "seconds_per_100k_rows": {r["rows"]: r["tokenize"]["wall_s"] / r["rows"] * 1e5 for r in runs}}
    print(json.dumps(summary, indent=2))
    write_result(args.name, {"complete": True, "num_proc": args.num_proc, "repeats": args.repeats, "runs": runs,
                             "summary": summary})


def _medians(results: list[dict]) -> dict:
    """Medians of the numeric figures of repeated runs (the rest from the first run); `identical` only
    if every run was."""
    out = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = median([r[key] for r in results])
    if "identical_to_sharded" in out:
        out["identical_to_sharded"] = all(r["identical_to_sharded"] for r in results)
    return out


if __name__ == "__main__":
    main()
