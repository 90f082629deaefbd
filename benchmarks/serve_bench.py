"""`uqa serve` under load: requests/s and p50/p99 latency at concurrency 1, 8 and 32, for batched
torch, ONNX Runtime and ONNX Runtime int8, with the demo model and an xlm-roberta-base-shaped model
(for the base shape, also the model FLOP/s achieved as a fraction of this machine's measured matmul
peak); with `--baseline REV`, the server of another revision beside them (a git worktree of REV, its
own code), so that throughput before and after a change is measured on one machine in one run; with
`--fairness`, a small question's latency alone and beside four clients sending 60,000-character
contexts without pause (the goal: median beside <= 3 x alone + 0.5 s).

Each setting is a real `uqa serve` process on 127.0.0.1 (a free port), stopped after its levels.
The load generator is asyncio + httpx: `concurrency` clients, each sending its next request when the
previous one is answered, until `requests` are answered or `--max-seconds` pass (then it stops and
says so). Questions: real UQA validation questions (long contexts: many windows for the demo model).

    python benchmarks/serve_bench.py                      # everything (about 15 minutes on 2 cores)
    python benchmarks/serve_bench.py --shapes demo --setups torch --levels 32 --baseline 00ff997 --fairness
    python benchmarks/serve_bench.py --demo-model demo-run/registry/uqa-qa/v0.0.1   # a trained demo model

Also reports, per backend, the exact-answer agreement with torch on the held-out questions."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, shared_dir

from uqa.ops.prefect_server import free_port

SETUPS = {
    "torch": ["--backend", "torch"],
    "baseline": ["--backend", "torch"],  # the --baseline revision's server
    "onnx": ["--backend", "onnx"],
    "onnx-int8": ["--backend", "onnx-int8"],
}
BASE = {"model_type": "xlm-roberta", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---- models --------------------------------------------------------------------------------------------


def _save(model_cfg: dict, tok, path: Path, settings: dict) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    cfg = dict(model_cfg)
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    (path / "uqa_inference.json").write_text(json.dumps(settings))
    return path


def demo_shaped(out: Path) -> Path:
    """The demo's model (demo/params.yaml: its config, a tokenizer trained on the demo data, its
    windowing) with untrained weights: the same shapes, hence the same cost, as a trained one."""
    import pandas as pd
    import yaml

    from uqa.text.tokenizer import train_tokenizer

    demo = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())
    rows = pd.read_json(ROOT / "demo" / "data" / "train.jsonl", lines=True, dtype=False)
    tok = train_tokenizer(list(rows["question"]) + list(rows["context"]), vocab_size=demo["tokenize"]["vocab_size"])
    lengths = [len(e.ids) for e in tok.backend_tokenizer.encode_batch(list(zip(rows["question"], rows["context"],
                                                                               strict=True)))]
    max_len = min(max(lengths), demo["model"]["config"]["max_position_embeddings"] - 2)  # tokenize: auto
    cfg = dict(demo["model"]["config"], vocab_size=len(tok), pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, cls_token_id=tok.cls_token_id,
               sep_token_id=tok.sep_token_id)
    return _save(cfg, tok, out, {"max_seq_length": max_len, "stride": demo["tokenize"]["stride"], "n_best": 20,
                                 "max_answer_length": 30, "no_answer_threshold": None, "squad2": False})


def base_shaped(out: Path, shared: Path, max_seq_length: int) -> Path:
    """xlm-roberta-base's shape (12 x 768, FFN 3072) with the shared Urdu 32k tokenizer's vocabulary."""
    from uqa.text.tokenizer import load_tokenizer

    tok = load_tokenizer(str(shared / "models" / "urdu-xlmr-32k"))
    return _save(dict(BASE, vocab_size=len(tok)), tok, out,
                 {"max_seq_length": max_seq_length, "stride": 128, "n_best": 20, "max_answer_length": 30,
                  "no_answer_threshold": None, "squad2": False})


# ---- what a request costs --------------------------------------------------------------------------------


def window_lengths(model_dir: Path, rows: list[dict]) -> list[list[int] | None]:
    """Per question, the lengths of the windows the server makes for it (uqa.model.predict.Predictor.prepare);
    None for a question too long for the model's window (cut to fit by the server, refused by servers
    before it and by `uqa predict`: left out, so that every setting answers the same questions)."""
    from uqa.model.predict import Predictor

    p = Predictor(model_dir)
    out: list[list[int] | None] = []
    for r in rows:
        prepared = p.prepare([r["question"]], [r["context"]], truncate_questions=True)
        out.append(None if prepared.truncated[0] else prepared.windows.lengths.tolist())
    return out


def encoder_flops(length: int, cfg: dict) -> float:
    """Forward FLOPs of one window (matmuls: projections, attention, FFN, QA head)."""
    h, f, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    return n * (8 * length * h * h + 4 * length * h * f + 4 * length * length * h) + 4 * length * h


def matmul_peak(threads: int, seconds: float = 3.0) -> float:
    """Measured fp32 matmul FLOP/s (2048^3, best of repeated runs) with `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best, end = 0.0, time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t))
    return best


# ---- the server and the load ------------------------------------------------------------------------------


class Server:
    def __init__(self, model_dir: Path, setup: str, threads: int, log: Path, cache: Path, check: Path | None,
                 code: Path = ROOT):
        """`code`: the checkout whose `uqa serve` runs (the --baseline worktree, or this one)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        env = dict(os.environ, UQA_ONNX_CACHE=str(cache), OMP_NUM_THREADS=str(threads), PYTHONPATH=str(code))
        # the window scheduler's bounds, where the checkout has it (a --baseline from before it: the old queue)
        windowed = (code / "uqa" / "serving" / "scheduler.py").exists()
        queue = ["--max-queue", "65536", "--max-request-windows", "16384"] if windowed else ["--max-queue", "4096"]
        cmd = [sys.executable, "-m", "uqa_cli", "serve", "--model", str(model_dir), "--port", str(self.port),
               "--threads", str(threads), *queue, *SETUPS[setup]]
        if check is not None:
            cmd += ["--check-questions", str(check)]
        self.started = time.time()
        self.ready_s = 0.0
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=code,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 900) -> float:
        import httpx

        while time.time() < self.started + timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.time() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server not ready in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


async def load(url: str, rows: list[dict], concurrency: int, n_requests: int, max_seconds: float) -> dict:
    """`concurrency` clients, closed loop, until n_requests are answered or max_seconds pass."""
    import httpx

    latencies: list[float] = []
    answered: list[int] = []  # row index of each answered request
    errors: list[str] = []
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=max_seconds + 60, limits=limits) as client:
        async def worker():
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                row = rows[i % len(rows)]
                t = time.perf_counter()
                try:
                    r = await client.post(f"{url}/v1/answer", json=row)
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)
                        answered.append(i % len(rows))
                    else:
                        errors.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    lat = sorted(latencies)
    return {"latencies": lat, "concurrency": concurrency, "requests": len(lat), "errors": len(errors), "error_examples": errors[:3],
            "stopped_by_time": len(lat) + len(errors) < n_requests, "wall_s": round(wall, 3),
            "requests_per_s": round(len(lat) / wall, 3) if wall else 0.0,
            "p50_ms": round(1000 * percentile(lat, 0.50), 1), "p99_ms": round(1000 * percentile(lat, 0.99), 1),
            "answered_rows": answered}


async def fairness(url: str, small: list[dict], big: dict, n_small: int, max_seconds: float) -> dict:
    """A small question's latency alone (one client, one after another), then beside four clients that
    send `big` without pause; each phase stops after n_small answers or max_seconds."""
    import httpx

    async def smalls(client) -> list[float]:
        out, deadline = [], time.perf_counter() + max_seconds
        for i in range(n_small):
            if time.perf_counter() > deadline:
                break
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/answer", json=small[i % len(small)])
            r.raise_for_status()
            out.append(time.perf_counter() - t)
        return sorted(out)

    stop = asyncio.Event()
    bigs_done: list[float] = []

    async def big_client(client) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/answer", json=big)
            if r.status_code != 200:
                raise SystemExit(f"a big request was refused: {r.status_code} {r.text[:300]}")
            bigs_done.append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=max_seconds + 600) as client:
        alone = await smalls(client)
        loaders = [asyncio.ensure_future(big_client(client)) for _ in range(4)]
        await asyncio.sleep(2.0)  # the big ones tokenized and under way
        beside = await smalls(client)
        stop.set()
        for task in loaders:  # the big requests still running are abandoned: the server drops them
            task.cancel()
        await asyncio.gather(*loaders, return_exceptions=True)
    median_alone, median_beside = statistics.median(alone), statistics.median(beside) if beside else float("nan")
    return {"alone_n": len(alone), "alone_p50_s": round(median_alone, 3), "alone_p99_s": round(percentile(alone, .99), 3),
            "beside_n": len(beside), "beside_p50_s": round(median_beside, 3),
            "beside_p99_s": round(percentile(beside, .99), 3), "big_requests_answered": len(bigs_done),
            "goal_s": round(3 * median_alone + 0.5, 3), "goal_met": median_beside <= 3 * median_alone + 0.5}


def big_request(rows: list[dict], chars: int = 60_000) -> dict:
    """The shortest question about a 60,000-character context (real UQA paragraphs, one after another):
    a long question would leave the demo model's 55-token windows a few context tokens each."""
    text, i = "", 0
    while len(text) < chars:
        text += rows[i % len(rows)]["context"] + "\n"
        i += 1
    return {"question": min((r["question"] for r in rows), key=len), "context": text[:chars]}


def worktree(rev: str, dest: Path) -> Path:
    """A checkout of `rev` beside this one (its own code: the baseline server imports from it)."""
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(dest), rev], cwd=ROOT, check=True)
    return dest


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else float("nan")


def answers(url: str, rows: list[dict]) -> list[tuple]:
    import httpx

    out = []
    with httpx.Client(timeout=600) as c:
        for i in range(0, len(rows), 16):
            r = c.post(f"{url}/v1/answer", json=rows[i:i + 16])
            r.raise_for_status()
            out.extend((a["answer"], a["start"], a["end"]) for a in r.json())
    return out


# ---- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--shapes", default="demo,base")
    ap.add_argument("--setups", default="torch,onnx,onnx-int8")
    ap.add_argument("--baseline", default=None, metavar="GIT_REV",
                    help="also serve with this revision's code (a git worktree): before/after, one machine, one run")
    ap.add_argument("--fairness", action="store_true",
                    help="a small question's latency alone and beside 4 clients sending 60,000-character contexts")
    ap.add_argument("--fairness-questions", type=int, default=20, help="small questions per fairness phase")
    ap.add_argument("--fairness-seconds", type=float, default=150, help="a fairness phase stops after this long")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests", type=int, default=160, help="requests per level, demo shape")
    ap.add_argument("--base-requests", type=int, default=32, help="requests per level, base shape")
    ap.add_argument("--max-seconds", type=float, default=60, help="a level's round stops after this long")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over every level and setting (pooled)")
    ap.add_argument("--questions", type=int, default=100, help="held-out UQA questions (agreement, load)")
    ap.add_argument("--base-max-seq-length", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads in the server")
    ap.add_argument("--demo-model", default=None, help="a trained demo model directory (default: demo-shaped, untrained)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    import httpx
    import pandas as pd

    signal.signal(signal.SIGTERM, _interrupt)  # the servers are stopped on every way out
    shared = shared_dir(args.shared)
    val = pd.read_parquet(shared / "data" / "uqa" / "validation.parquet").drop_duplicates("id")
    all_rows = val.sample(n=args.questions, random_state=0)[["id", "question", "context"]].to_dict("records")
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    check = work / "check.jsonl"
    results = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "machine": machine(), "uptime_start": uptime(), "runs": [], "baseline": args.baseline}
    peak = None
    print(f"# {uptime()}", flush=True)
    for shape in args.shapes.split(","):
        if shape == "demo":
            model_dir = Path(args.demo_model).resolve() if args.demo_model else demo_shaped(work / "demo")
            n_requests, cfg = args.requests, json.loads((model_dir / "config.json").read_text())
        else:
            model_dir = base_shaped(work / "base", shared, args.base_max_seq_length)
            n_requests, cfg = args.base_requests, BASE
            if peak is None:
                peak = matmul_peak(args.threads)
                results["matmul_peak_gflops"] = round(peak / 1e9, 1)
                print(f"# matmul peak ({args.threads} threads, fp32 2048^3): {peak / 1e9:.1f} GFLOP/s", flush=True)
        all_lengths = window_lengths(model_dir, all_rows)
        rows = [r for r, ls in zip(all_rows, all_lengths, strict=True) if ls is not None]
        lengths = [ls for ls in all_lengths if ls is not None]
        flops = [sum(encoder_flops(n, cfg) for n in ls) for ls in lengths]
        pd.DataFrame(rows).to_json(check, orient="records", lines=True, force_ascii=False)
        print(f"# {shape}: {model_dir}; {len(rows)} of {len(all_rows)} questions fit its window; windows per "
              f"question: mean {statistics.fmean(map(len, lengths)):.1f}, max {max(map(len, lengths))}", flush=True)
        results.setdefault("shapes", {})[shape] = {
            "questions": len(rows), "too_long_for_window": len(all_rows) - len(rows),
            "windows_per_question_mean": round(statistics.fmean(map(len, lengths)), 2),
            "max_seq_length": json.loads((model_dir / "uqa_inference.json").read_text()).get("max_seq_length")}
        setups = args.setups.split(",") + (["baseline"] if args.baseline else [])
        if args.baseline and not (work / "baseline").exists():
            worktree(args.baseline, work / "baseline")
        # agreement on the held-out questions: the demo shape (a trained model with --demo-model);
        # the base shape's untrained weights make it meaningless, and it would cost minutes
        measure = shape == "demo"
        servers: dict[str, Server] = {}
        try:
            for setup in setups:  # every setting's server up at once: the rounds below interleave them
                servers[setup] = Server(model_dir, setup, args.threads, work / f"{shape}-{setup}.log",
                                        work / "onnx-cache", check if measure else None,
                                        code=work / "baseline" if setup == "baseline" else ROOT)
                servers[setup].ready_s = servers[setup].wait_ready()  # one at a time: exports do not overlap
            info, agree, reference = {}, {}, None
            for setup in setups:
                info[setup] = httpx.get(f"{servers[setup].url}/v1/model").json()
                got = answers(servers[setup].url, rows) if measure else None
                if got is not None and setup == "torch" and reference is None:
                    reference = got
                if reference and got:
                    agree[setup] = sum(a == b for a, b in zip(reference, got, strict=True))
                asyncio.run(load(servers[setup].url, rows, 2, 4, 60))  # warm-up
            # rounds: each level runs every setting in turn, so the machine's other load (shared,
            # and varying by the minute) falls on all of them alike; the rounds are pooled
            pooled: dict[tuple[str, int], list[dict]] = {}
            for _ in range(args.rounds):
                for c in levels:
                    for setup in setups:
                        load_before = load_average()
                        res = asyncio.run(load(servers[setup].url, rows, c, max(n_requests, c), args.max_seconds))
                        res["flops"] = sum(flops[i] for i in res.pop("answered_rows"))
                        res["load_before"], res["load_after"] = load_before, load_average()
                        pooled.setdefault((setup, c), []).append(res)
                        print(json.dumps({"shape": shape, "setup": setup, **{k: v for k, v in res.items()
                                                                             if k not in ("error_examples", "latencies")}}), flush=True)
            if args.fairness and shape == "demo":
                small = [r for r, ls in zip(rows, lengths, strict=True) if len(ls) <= 4] or rows[:5]
                big = big_request(rows)
                for setup in ("torch", "baseline"):
                    if setup in servers:
                        fair = asyncio.run(fairness(servers[setup].url, small, big, args.fairness_questions,
                                                    args.fairness_seconds))
                        results.setdefault("fairness", {})[setup] = {**fair, "load_after": load_average()}
                        print(json.dumps({"fairness": setup, **fair}), flush=True)
            for (setup, c), parts in pooled.items():
                lat = sorted(x for p in parts for x in p["latencies"])
                wall = sum(p["wall_s"] for p in parts)
                flops_done = sum(p["flops"] for p in parts)
                run = {"shape": shape, "setup": setup, "concurrency": c, "requests": len(lat),
                       "errors": sum(p["errors"] for p in parts), "rounds": len(parts),
                       "stopped_by_time": any(p["stopped_by_time"] for p in parts), "wall_s": round(wall, 2),
                       "requests_per_s": round(len(lat) / wall, 3), "p50_ms": round(1000 * percentile(lat, 0.5), 1),
                       "p99_ms": round(1000 * percentile(lat, 0.99), 1), "ready_s": round(servers[setup].ready_s, 1),
                       "agreement_with_torch": f"{agree[setup]}/{len(rows)}" if setup in agree else None,
                       "backend_notes": info[setup].get("backend_notes"),
                       "load_before": [p["load_before"][0] for p in parts],
                       "load_after": [p["load_after"][0] for p in parts],
                       "model_gflops_per_s": round(flops_done / wall / 1e9, 2)}
                if shape == "base" and peak:
                    run["fraction_of_matmul_peak"] = round(flops_done / wall / peak, 3)
                results["runs"].append(run)
        finally:
            for server in servers.values():
                server.stop()
    if args.baseline and (work / "baseline").exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")], cwd=ROOT, check=False)
    results["uptime_end"] = uptime()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_bench.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(f"# {uptime()}")
    print(table(results))
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def table(results: dict) -> str:
    lines = ["| model | setup | concurrency | req/s | p50 ms | p99 ms | requests | errors | model GFLOP/s | "
             "of matmul peak | same answer as torch | 1-min load avg during |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["runs"]:
        frac = f"{100 * r['fraction_of_matmul_peak']:.0f}%" if "fraction_of_matmul_peak" in r else "–"
        lines.append(f"| {r['shape']} | {r['setup']} | {r['concurrency']} | {r['requests_per_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests']}{' (time cap)' if r['stopped_by_time'] else ''} | "
                     f"{r['errors']} | {r['model_gflops_per_s']:.1f} | {frac} | {r['agreement_with_torch'] or '–'} | "
                     f"{min(r['load_before'] + r['load_after'])}–{max(r['load_before'] + r['load_after'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
