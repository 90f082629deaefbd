"""A 4-trial sweep on the demo data, trials as runs of the `trial` deployment on 1 and on 2 process workers.

    python benchmarks/sweep_workers.py [--configs 1x2,2x1,2x2] → results/sweep_workers.json

Each config is WORKERSxTHREADS: that many `prefect worker start --pool uqa-local --limit 1`, each with
OMP_NUM_THREADS / MKL_NUM_THREADS set to THREADS (torch's intra-op threads in every trial it runs).
A real `prefect server start` (temporary PREFECT_HOME) and one demo workspace (uqa demo's); its data
stages are run once before the first config, so every sweep starts with them cached, as a sweep in a
working project does. The grid is the issue's: train.learning_rate 1e-3, 2e-3 × train.epochs 1, 2 on
the demo's model. Wall time is the whole `uqa_sweep` call (data stages cached, 4 trials, collecting the
experiments, registering the winner); per trial, the trial flow run's own run time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GRID = {"train.learning_rate": [1e-3, 2e-3], "train.epochs": [1, 2]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(home: Path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST="127.0.0.1",
               PREFECT_SERVER_API_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((home / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(30)


def run_config(project: Path, env: dict[str, str], workers: int, threads: int, logs: Path) -> dict:
    from flows.sweep import uqa_sweep

    wenv = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PWD=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local", "--limit",
                               "1"], cwd=REPO, env=wenv, stdout=open(logs / f"w{workers}x{threads}-{i}.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True) for i in range(workers)]
    try:
        started = time.monotonic()
        state = uqa_sweep(project_dir=str(project), grid=GRID, trial_deployment="uqa-pipeline/trial",
                          return_state=True)
        wall = time.monotonic() - started
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
            p.wait(60)
    if not state.is_completed():
        raise RuntimeError(f"sweep {workers}x{threads} failed: {state.message}")
    result = state.result()
    return {"workers": workers, "threads_per_worker": threads, "wall_s": round(wall, 1),
            "trials": [{k: t.get(k) for k in ("number", "overrides", "state", "duration_s", "f1")}
                       for t in result["trials"]],
            "winner": (result.get("winner") or {}).get("number")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="1x2,2x1,2x2", help="WORKERSxTHREADS,...")
    args = ap.parse_args()
    from uqa.ops.runtime import apply_runtime_defaults

    apply_runtime_defaults()  # no telemetry, as the uqa command (the flows set nothing on import)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    home = tmp / "prefect-home"
    home.mkdir()
    try:
        with server(home) as url:
            env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url, HF_HUB_OFFLINE="1",
                       TOKENIZERS_PARALLELISM="false")
            os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=url, HF_HUB_OFFLINE="1")
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
            from uqa.workspace.demo import prepare_workspace

            project = prepare_workspace(tmp / "demo-run")
            subprocess.run([sys.executable, "-m", "dvc", "repro", "tokenize"], cwd=project, env=env, check=True,
                           capture_output=True)
            subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "uqa-local", "--type", "process",
                            "--overwrite"], cwd=REPO, env=env, check=True, capture_output=True)
            subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "-n", "trial"], cwd=REPO,
                           env=dict(env, PWD=str(REPO)), check=True, capture_output=True)
            runs = []
            for workers, threads in configs:
                print(f"sweep on {workers} worker(s) x {threads} thread(s) ...", flush=True)
                runs.append(run_config(project, env, workers, threads, tmp))
                print(f"  {runs[-1]['wall_s']} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = runs[0]["wall_s"]
    for r in runs:
        r["speedup_vs_first"] = round(base / r["wall_s"], 2)
        r["efficiency_vs_first"] = round(base / r["wall_s"] / (r["workers"] / runs[0]["workers"]), 2)
        r["trial_s_sum"] = round(sum(t["duration_s"] or 0 for t in r["trials"]), 1)
    rows = [[f"{r['workers']} × {r['threads_per_worker']}", r["wall_s"],
             ", ".join(f"{t['duration_s']:.0f}" for t in r["trials"]), r["trial_s_sum"], r["speedup_vs_first"],
             r["efficiency_vs_first"]] for r in runs]
    print(table(["workers × threads", "wall s", "trial run times s (0..3)", "sum of trials s", "speedup",
                 "efficiency"], rows))
    write_result("sweep_workers", {"grid": GRID, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
