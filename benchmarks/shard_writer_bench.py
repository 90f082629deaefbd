"""The tokenize stage's shard writer against what `datasets` offers for the same job: writing a split
of features, chunk by chunk, as a multi-shard `save_to_disk` directory in bounded memory.

Synthetic features shaped like real UQA train windows (input_ids uint16 lists of 150-384 tokens,
start/end int16), CHUNK windows per chunk (~ the stage's 32,768 examples per chunk), in these ways,
each in a fresh process (peak RSS = its ru_maxrss; the chunk tables are generated in the same way
by every variant, so the generation's own memory is the same on each side):

  ours        the stage's writer: each chunk's table written as one shard with datasets' ArrowWriter
              (record batches of 1,000 rows), then state.json / dataset_info.json
  generator   datasets.Dataset.from_generator (rows, as it takes them; written in batches of 1,000
              into its cache) + save_to_disk(num_shards=chunks): the library's bounded-memory path
  concat      each chunk as a Dataset (Dataset(table)), concatenate_datasets, save_to_disk(num_shards=
              chunks): no per-row Python, but the chunk tables are all held in memory

    python benchmarks/shard_writer_bench.py [--chunks 8] [--chunk-windows 35000] [--repeats 1]

Results go to benchmarks/results/shard_writer.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, median, table, write_result

VARIANTS = ("ours", "generator", "concat")


def chunk_table(k: int, windows: int):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(k)
    lengths = rng.integers(150, 385, windows)
    splits = np.zeros(windows + 1, dtype=np.int32)
    np.cumsum(lengths, out=splits[1:])
    ids = rng.integers(5, 32_000, int(splits[-1])).astype(np.uint16)
    starts = rng.integers(0, 150, windows).astype(np.int16)
    return pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(splits), pa.array(ids)),
                     "start_positions": pa.array(starts), "end_positions": pa.array(starts + 3)})


def run_variant(variant: str, out: Path, chunks: int, windows: int) -> dict:
    import datasets

    started = time.perf_counter()
    if variant == "ours":
        from uqa.data.arrow_shards import write_dataset_files, write_shard

        out.mkdir(parents=True)  # the stage writes into its atomic_dir's temporary directory
        results = [write_shard(chunk_table(k, windows), str(out / f"data-{k:05d}-of-{chunks:05d}.arrow"))
                   for k in range(chunks)]
        write_dataset_files(out, chunks, results[0][0], [digest for _, digest in results])
    elif variant == "generator":
        features = datasets.Features({"input_ids": datasets.List(datasets.Value("uint16")),
                                      "start_positions": datasets.Value("int16"),
                                      "end_positions": datasets.Value("int16")})

        def rows():
            for k in range(chunks):
                t = chunk_table(k, windows)
                for batch in t.to_batches(1000):
                    yield from batch.to_pylist()

        cache = out.parent / "gen-cache"
        ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(cache))
        ds.save_to_disk(str(out), num_shards=chunks)
        del ds
        shutil.rmtree(cache, ignore_errors=True)
    elif variant == "concat":
        parts = [datasets.Dataset(chunk_table(k, windows)) for k in range(chunks)]
        datasets.concatenate_datasets(parts).save_to_disk(str(out), num_shards=chunks)
    seconds = time.perf_counter() - started
    check = datasets.load_from_disk(str(out))
    return {"variant": variant, "seconds": round(seconds, 2), "windows": check.num_rows,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--chunk-windows", type=int, default=35_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_variant(args.one, Path(args.out), args.chunks, args.chunk_windows)))
        return
    runs: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    for _ in range(args.repeats):
        for variant in runs:  # interleaved: a loaded machine slows every side alike
            with tempfile.TemporaryDirectory(prefix="uqa-shards-") as tmp:
                out = Path(tmp) / "split"
                cmd = [sys.executable, __file__, "--one", variant, "--out", str(out), "--chunks", str(args.chunks),
                       "--chunk-windows", str(args.chunk_windows)]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
                runs[variant].append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(runs[variant][-1], flush=True)
    rows = [[v, rs[0]["windows"], median([r["seconds"] for r in rs]), median([r["peak_rss_mb"] for r in rs])]
            for v, rs in runs.items()]
    print(table(["variant", "windows", "seconds (median)", "peak RSS MB (median)"], rows))
    write_result("shard_writer", {"chunks": args.chunks, "chunk_windows": args.chunk_windows, "runs": runs})


if __name__ == "__main__":
    main()
