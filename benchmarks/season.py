"""A season of weekly runs: the `weekly` deployment, a real Prefect server and process worker, the demo
data growing each week, faults in some weeks, `uqa alerts` listening on a loopback receiver.

    python benchmarks/season.py [--workdir DIR] [--epochs 3] [--dead-after 270]

Weeks (the train pool is the demo's first 2,100 train rows; its last 301 rows are held out as the
"new validation set" of week 7):
  1 1,200 rows                      registered (first prod)
  2 1,400 rows                      registered
  3 bad data (a column missing)     Failed, alert, prod unchanged
  4 1,600 rows, worker kill -9'd    Crashed (no heartbeat -> automation), alert
    during training
  5 1,600 rows (the rerun)          resumes training from week 4's checkpoint, registered
  6 1,800 rows, a regression        registered, not promoted, alert
    (train.max_steps: 2)
  7 1,800 rows, new validation set  what the gate said
  8 2,100 rows                      registered

Per week: final state, alert received and its delay (receiver time minus the registration for a
registered version, minus the run's end for a failed run, minus the kill for the crash week), prod version, disk used by the workspace (without the DVC cache), the
DVC cache and the registry, the Prefect database size, processes left behind. Writes
benchmarks/results/season.json and prints the table for benchmarks/README.md. register.keep_last is 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import ROOT, table, write_result
from webhook_receiver import Receiver  # this folder: the loopback receiver the alert tests use too

from uqa.ops.prefect_server import free_port

DEMO = ROOT / "demo" / "data"
POOL_ROWS, HOLDOUT_FROM = 2100, 2100
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WEEKS = [
    {"week": 1, "rows": 1200, "fault": None},
    {"week": 2, "rows": 1400, "fault": None},
    {"week": 3, "rows": 1400, "fault": "bad data"},
    {"week": 4, "rows": 1600, "fault": "worker killed"},
    {"week": 5, "rows": 1600, "fault": None, "note": "rerun after the kill"},
    {"week": 6, "rows": 1800, "fault": "regression"},
    {"week": 7, "rows": 1800, "fault": "new validation set"},
    {"week": 8, "rows": 2100, "fault": None},
]


def api(url: str, path: str, body: dict | None = None, method: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, method=method or ("POST" if body is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def du(path: Path, exclude: Path | None = None) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if exclude is not None and Path(dirpath) == exclude.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath) / d != exclude]
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                try:
                    total += p.stat().st_size
                except OSError:
                    pass
    return total


def mb(n: int) -> float:
    return round(n / 1e6, 1)


def write_week_data(ws: Path, week: dict, train_rows: list[str], val_rows: list[str], holdout: list[str]) -> None:
    data = ws / "demo-data"
    rows = train_rows[:week["rows"]]
    if week["fault"] == "bad data":  # a new export that lost a column: every row lacks answer_start
        rows = [json.dumps({k: v for k, v in json.loads(r).items() if k != "answer_start"}, ensure_ascii=False)
                for r in rows]
    (data / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    validation = holdout if week["week"] >= 7 else val_rows
    (data / "validation.jsonl").write_text("\n".join(validation) + "\n", encoding="utf-8")


def set_params(ws: Path, overrides: dict) -> None:
    sys.path.insert(0, str(ROOT))
    from uqa.params.files import apply_overrides

    apply_overrides(ws / "params.yaml", overrides)


def git_commit(ws: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A", "demo-data", "params.yaml"], cwd=ws, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=ws, check=True)


def processes_left(worker_pid: int | None, ws: Path, server_pid: int) -> list[str]:
    import psutil

    left = []
    worker = None
    if worker_pid:
        try:
            worker = psutil.Process(worker_pid)
            left += [p for p in worker.children(recursive=True)]
        except psutil.Error:
            pass
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            if p.info["pid"] in (server_pid, worker_pid, os.getpid()):
                continue
            if p.info["cwd"] and Path(p.info["cwd"]).resolve() == ws.resolve() and p not in left:
                left.append(p)
        except (psutil.Error, OSError):
            pass
    out = []
    for p in left:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return out


def _lineage_check(ws: Path, registration: dict) -> dict:
    """What the week's version says about where it came from, against the workspace's git HEAD."""
    record = json.loads((ws / registration["path"] / "registration.json").read_text())
    lin = record.get("lineage") or {}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    run = lin.get("run") or {}
    return {"commit_is_head": (lin.get("code") or {}).get("commit") == head,
            "dirty": (lin.get("code") or {}).get("dirty"), "flow_run": run.get("flow_run_name"),
            "deployment": run.get("deployment"), "dvc_outputs": len((lin.get("data") or {}).get("dvc") or {})}


def kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--dead-after", type=int, default=270)
    ap.add_argument("--week-timeout", type=float, default=1200)
    ap.add_argument("--weeks", type=int, default=len(WEEKS))
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="uqa-season-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "prefect-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", PWD=str(ROOT), PREFECT_SERVER_API_HOST="127.0.0.1",
               PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=url,
               PREFECT_WORKER_QUERY_SECONDS="3")  # the worker picks a week's run up within 3 s
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED",
                                           "DO_NOT_TRACK")})
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker: subprocess.Popen | None = None
    receiver = Receiver()
    rows_out: list[dict[str, Any]] = []

    def start_worker(n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local",
                                 "--limit", "1"], cwd=ROOT, env=env, stdout=open(logs / f"worker-{n}.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def cli(*cmd: str) -> str:
        r = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return r.stdout

    try:
        deadline = time.time() + 180
        while True:
            try:
                if api(url, "/health") is True:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("prefect server did not start: " + (logs / "server.log").read_text()[-2000:])
            time.sleep(1)
        uqa = [sys.executable, "-m", "uqa_cli"]
        print(cli(*uqa, "alerts", "--webhook", receiver.url, "--dead-after", str(args.dead_after)), flush=True)
        cli(sys.executable, "-m", "prefect", "work-pool", "create", "uqa-local", "--type", "process", "--overwrite")
        cli(sys.executable, "-m", "prefect", "--no-prompt", "deploy", "-n", "weekly")
        deployment = api(url, "/deployments/name/uqa-pipeline/weekly")

        sys.path.insert(0, str(ROOT))
        from uqa.registry.store import Registry
        from uqa.workspace.demo import demo_workspace

        ws = demo_workspace(work / "workspace", [f"train.epochs={args.epochs}", "register.min_f1=20",
                                                  "register.keep_last=3"])
        all_train = (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()
        train_rows, holdout = all_train[:POOL_ROWS], all_train[HOLDOUT_FROM:]
        val_rows = (DEMO / "validation.jsonl").read_text(encoding="utf-8").splitlines()
        worker = start_worker(0)
        restarts = 0
        for week in WEEKS[:args.weeks]:
            n = week["week"]
            if week["fault"] == "regression":
                set_params(ws, {"train": {"max_steps": 2}})
            elif n == 7:
                set_params(ws, {"train": {"max_steps": -1}})
            write_week_data(ws, week, train_rows, val_rows, holdout)
            git_commit(ws, f"week {n}: {week['rows']} train rows" + (f" ({week['fault']})" if week["fault"] else ""))
            started = time.time()
            run = api(url, f"/deployments/{deployment['id']}/create_flow_run",
                      {"parameters": {"project_dir": str(ws)}, "name": f"season-week-{n}"})
            run_id = run["id"]
            print(f"week {n}: flow run {run['name']} ({run_id}) {week}", flush=True)
            killed_at = None
            wdeadline = started + args.week_timeout
            while time.time() < wdeadline:
                info = api(url, f"/flow_runs/{run_id}")
                if info["state_type"] in FINAL:
                    break
                if week["fault"] == "worker killed" and killed_at is None and any(
                        (ws / "models" / "checkpoints").glob("checkpoint-*/trainer_state.json")):
                    kill_tree(worker.pid)  # the machine is lost: worker, flow-run process, training, all at once
                    worker.wait()
                    killed_at = time.time()
                    print(f"week {n}: killed the worker tree (kill -9) mid-training", flush=True)
                time.sleep(2)
            info = api(url, f"/flow_runs/{run_id}")
            state = info["state_name"] if info["state_type"] in FINAL else f"{info['state_name']} (timed out here)"
            end = info.get("end_time") or info.get("state", {}).get("timestamp")
            from datetime import datetime

            end_ts = datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp() if end else time.time()
            if killed_at is not None:
                worker = start_worker(restarts := restarts + 1)
            # the alert for this week: failed/crashed -> the run's name; registered -> the version
            registration = json.loads((ws / "reports/register.json").read_text()) if (
                ws / "reports/register.json").exists() else {}
            registered_at = None
            if info["state_type"] == "COMPLETED" and registration.get("registered"):
                registered_at = (ws / "reports/register.json").stat().st_mtime  # when the event was emitted
            alert = None
            adeadline = time.time() + 150
            while alert is None and time.time() < adeadline:
                if info["state_type"] == "COMPLETED" and registration.get("registered"):
                    alert = receiver.find(f"{registration['name']} {registration['version']} registered",
                                          since=started)
                else:
                    alert = receiver.find(info["name"], info["state_name"], since=started)
                if alert is None:
                    time.sleep(1)
            time.sleep(5)
            left = processes_left(worker.pid if worker else None, ws, server.pid)
            train_report = json.loads((ws / "reports/train.json").read_text()) if (
                ws / "reports/train.json").exists() else {}
            prod = Registry(ws, "uqa-qa").stage_version("prod")
            cache = ws / ".dvc" / "cache"
            db = sum(p.stat().st_size for p in home.glob("prefect.db*"))
            row = {
                "week": n, "train_rows": week["rows"], "fault": week["fault"] or "", "state": state,
                "alert": (alert[1]["subject"] if alert else "NOT RECEIVED"),
                "alert_delay_s": round(alert[0] - (killed_at or registered_at or end_ts), 1) if alert else None,
                "alert_delay_from": "kill" if killed_at else "registration" if registered_at else "run end",
                "run_s": round(end_ts - started, 1),
                "version": registration.get("version") if info["state_type"] == "COMPLETED" else None,
                "promoted": registration.get("promoted") if info["state_type"] == "COMPLETED" else None,
                "reason": (registration.get("reason") if info["state_type"] == "COMPLETED"
                           else ((info.get("state") or {}).get("message") or "")[:200]),
                "f1": registration.get("f1") if info["state_type"] == "COMPLETED" else None,
                "resumed_from": train_report.get("resumed_from") if info["state_type"] == "COMPLETED" else None,
                "prod": prod,
                "workspace_mb": mb(du(ws, exclude=cache)), "dvc_cache_mb": mb(du(cache)),
                "registry_mb": mb(du(ws / "registry")), "prefect_db_mb": mb(db),
                "processes_left": left,
                "lineage": _lineage_check(ws, registration) if info["state_type"] == "COMPLETED" else None,
            }
            rows_out.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    finally:
        if worker is not None:
            kill_tree(worker.pid) if worker.poll() is None else None
            try:
                os.killpg(worker.pid, signal.SIGTERM)
            except OSError:
                pass
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        receiver.server.shutdown()

    headers = ["week", "train rows", "fault", "final state", "alert (subject)", "alert delay s", "version",
               "promoted", "F1", "prod", "workspace MB", "DVC cache MB", "registry MB", "Prefect DB MB",
               "processes left"]
    print(table(headers, [[r["week"], r["train_rows"], r["fault"], r["state"], r["alert"], r["alert_delay_s"],
                           r["version"], r["promoted"], r["f1"], r["prod"], r["workspace_mb"], r["dvc_cache_mb"],
                           r["registry_mb"], r["prefect_db_mb"], len(r["processes_left"])] for r in rows_out]))
    write_result("season", {"weeks": rows_out, "epochs": args.epochs, "dead_after_s": args.dead_after,
                            "workdir": str(work)})
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
