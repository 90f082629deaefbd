"""The cost of versioning: where the time outside the stages goes in `dvc repro tokenize` and in the
flow's DVC calls, on full UQA (or the demo data), against the seed's data path.

Sides, each in its own process and a fresh project (tests/conftest.make_project: git + DVC, this
repository's dvc.yaml and .dvc/config), data.source = the UQA parquet files, the Urdu XLM-R-shaped
tokenizer, a tiny model config (only the tokenizer matters here):

  seed    the blog post's data path (benchmarks/tokenize_bench.py's side_seed)
  floor   the tokenizer alone on whole texts: each question and distinct context of the answerable
          rows (validation: an id's first row), once (AutoTokenizer's backend, no special tokens,
          8,192 texts a call), nothing copied out. No data path that gives the tokenizer each whole
          text once can take less; the stage gives it distinct words instead (uqa/text/segments.py)
  stages  the four stage commands dvc.yaml runs (`python -m tasks.source`, download, filter,
          tokenize), one after another, without DVC: the stages' own time, process start included
  repro   `dvc repro tokenize` (the same four commands, and DVC's checks, hashing and cache)
  flow    what the Prefect flow does around each stage, without Prefect: the workspace lock, then
          per stage `dvc status`, the stage function in this process, `dvc commit`; each timed

    python benchmarks/versioning_cost.py [--shared ../shared] [--demo] [--repeats 1]
        [--sides seed,floor,stages,repro,flow] [--profile DIR]

--profile DIR also writes a cProfile dump of DVC's own work in `dvc repro` (DIR/repro.prof;
`python -m pstats` reads it). Results go to benchmarks/results/versioning_cost[_demo].json.
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

from common import ROOT, median, shared_dir, table, write_result

TINY = {"model_type": "xlm-roberta", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 514, "type_vocab_size": 1}
STAGES = ("source", "download", "filter", "tokenize")


def project_params(shared: Path, demo: bool) -> dict:
    if demo:
        from uqa.params.files import read_raw
        from uqa.workspace.demo import DEMO_DIR

        return json.loads(json.dumps(read_raw(DEMO_DIR / "params.yaml")))
    return {"data": {"source": {"train": str(shared / "data/uqa/train.parquet"),
                                "validation": str(shared / "data/uqa/validation.parquet")}},
            "model": {"tokenizer": str(shared / "models/urdu-xlmr-32k"), "init": "scratch", "config": TINY}}


def new_project(work: Path, shared: Path, demo: bool) -> Path:
    from common import make_project

    project = make_project(work / "project", project_params(shared, demo))
    if demo:  # the demo's data lives in the repository: point at it
        from uqa.params.files import apply_overrides
        from uqa.workspace.demo import DEMO_DIR

        apply_overrides(project / "params.yaml", {"data": {"source": {
            "train": str(DEMO_DIR / "data/train.jsonl"), "validation": str(DEMO_DIR / "data/validation.jsonl")}}})
    return project


def env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def side_seed(shared: Path, work: Path, demo: bool, profile: Path | None) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tokenize_bench import side_seed as seed

    return seed(shared, work)


def side_floor(shared: Path, work: Path, demo: bool, profile: Path | None) -> dict:
    import pyarrow.parquet as pq

    from tasks.tokenize import first_row_per_id
    from uqa.text.encoding import CHUNK, prepare_backend
    from uqa.text.tokenizer import load_tokenizer

    texts = []
    for split in ("train", "validation"):
        rows = pq.read_table(shared / f"data/uqa/{split}.parquet").to_pydict()
        keep = [i for i, impossible in enumerate(rows["is_impossible"]) if not impossible]
        if split == "validation":  # the stage keeps an id's first row (first_row_per_id)
            keep = [keep[k] for k in first_row_per_id([rows["id"][i] for i in keep])]
        texts += [rows["question"][i].strip() for i in keep] + list(dict.fromkeys(rows["context"][i] for i in keep))
    t0 = time.perf_counter()
    backend = prepare_backend(load_tokenizer(project_params(shared, demo)["model"]["tokenizer"]).backend_tokenizer)
    t1 = time.perf_counter()
    tokens = 0
    for a in range(0, len(texts), CHUNK):
        tokens += sum(len(e) for e in backend.encode_batch(texts[a : a + CHUNK], add_special_tokens=False))
    t2 = time.perf_counter()
    return {"total_s": t2 - t0, "load_tokenizer_s": t1 - t0, "encode_s": t2 - t1, "texts": len(texts),
            "tokens": tokens}


def side_stages(shared: Path, work: Path, demo: bool, profile: Path | None) -> dict:
    project = new_project(work, shared, demo)
    out = {}
    t0 = time.perf_counter()
    for stage in STAGES:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env(), check=True,
                       capture_output=True)
        out[f"{stage}_s"] = time.perf_counter() - t
    out["total_s"] = time.perf_counter() - t0
    return out


def side_repro(shared: Path, work: Path, demo: bool, profile: Path | None) -> dict:
    project = new_project(work, shared, demo)
    cmd = [sys.executable, "-m", "dvc", "repro", "tokenize"]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        cmd[1:1] = ["-m", "cProfile", "-o", str(profile / "repro.prof")]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=project, env=env(), check=True, capture_output=True)
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "tokenize"], cwd=project, env=env(), check=True,
                   capture_output=True)
    return {"total_s": total, "noop_rerun_s": time.perf_counter() - t1}


def side_flow(shared: Path, work: Path, demo: bool, profile: Path | None) -> dict:
    import importlib

    from uqa.params.files import load_params
    from uqa.workspace.dvc_ops import dvc_commit, dvc_status, locked_workspace, working_dir

    project = new_project(work, shared, demo)
    out = {"status_s": 0.0, "stage_s": 0.0, "commit_s": 0.0}
    t0 = time.perf_counter()
    with locked_workspace(project, command="versioning_cost"):
        out["lock_s"] = time.perf_counter() - t0
        for stage in STAGES:
            t = time.perf_counter()
            dvc_status(project, stage)
            t_status = time.perf_counter()
            with working_dir(project):
                importlib.import_module(f"tasks.{stage}").run(load_params("params.yaml"), "params.yaml")
            t_stage = time.perf_counter()
            dvc_commit(project, stage)
            t_commit = time.perf_counter()
            out[f"{stage}_status_s"], out[f"{stage}_stage_s"], out[f"{stage}_commit_s"] = (
                t_status - t, t_stage - t_status, t_commit - t_stage)
            out["status_s"] += t_status - t
            out["stage_s"] += t_stage - t_status
            out["commit_s"] += t_commit - t_stage
        t = time.perf_counter()
        up_to_date = all(not dvc_status(project, s) for s in STAGES[1:])
        out["rerun_status_s"] = time.perf_counter() - t
    out["total_s"] = time.perf_counter() - t0
    out["up_to_date_after"] = up_to_date
    return out


SIDES = {"seed": side_seed, "floor": side_floor, "stages": side_stages, "repro": side_repro, "flow": side_flow}


def run_child(side: str, shared: Path, demo: bool, profile: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"vcost-{side}-") as tmp:
        child_env = dict(env(), HF_HOME=str(Path(tmp) / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                         HF_DATASETS_DISABLE_PROGRESS_BARS="1", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="bench",
                         GIT_AUTHOR_EMAIL="bench@localhost", GIT_COMMITTER_NAME="bench",
                         GIT_COMMITTER_EMAIL="bench@localhost")
        cmd = [sys.executable, __file__, "--child", side, "--shared", str(shared), "--work", tmp]
        cmd += ["--demo"] if demo else []
        cmd += ["--profile", str(profile)] if profile else []
        r = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared")
    ap.add_argument("--demo", action="store_true", help="the demo's data instead of full UQA")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sides", default="seed,floor,stages,repro,flow")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--child")
    ap.add_argument("--work")
    args = ap.parse_args()
    shared = shared_dir(args.shared)
    if args.child:
        out = SIDES[args.child](shared, Path(args.work), args.demo, args.profile)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    sides = [s for s in args.sides.split(",") if not (args.demo and s in ("seed", "floor"))]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(args.repeats):  # interleaved: drifting load on a shared machine hits every side alike
        for side in runs:
            runs[side].append(run_child(side, shared, args.demo, args.profile if side == "repro" else None))
            print(side, json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                    for k, v in runs[side][-1].items()}), file=sys.stderr, flush=True)
    med = {side: {k: median([r[k] for r in rs]) for k in rs[0] if isinstance(rs[0][k], (int, float))
                  and not isinstance(rs[0][k], bool)} for side, rs in runs.items()}
    rows = [[side, m["total_s"], m.get("peak_rss_mib")] for side, m in med.items()]
    print(table(["side", "median s", "peak RSS MiB"], rows))
    summary = {}
    if "repro" in med and "stages" in med:
        summary["dvc_repro_overhead_s"] = med["repro"]["total_s"] - med["stages"]["total_s"]
    if "flow" in med:
        summary["flow_dvc_s"] = med["flow"]["status_s"] + med["flow"]["commit_s"] + med["flow"]["lock_s"]
    if "seed" in med and "repro" in med:
        summary["repro_speedup_vs_seed"] = med["seed"]["total_s"] / med["repro"]["total_s"]
    if "seed" in med and "floor" in med:
        summary["seed_over_tokenizer_floor"] = med["seed"]["total_s"] / med["floor"]["total_s"]
    print(json.dumps(summary, indent=2))
    write_result("versioning_cost_demo" if args.demo else "versioning_cost",
                 {"repeats": args.repeats, "runs": runs, "medians": med, "summary": summary})


if __name__ == "__main__":
    main()
