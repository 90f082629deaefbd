"""A Prefect server with basic auth (PREFECT_SERVER_API_AUTH_STRING), as the README shows it: a stranger
without the credentials gets 401; a worker and `uqa run` with PREFECT_API_AUTH_STRING work; and a
deployment run whose overrides ask for model.trust_remote_code is refused by the flow (issue 19)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, demo_tiny_params, free_port, make_project, stop_process_group

pytestmark = pytest.mark.slow

CREDENTIALS = "uqa-admin:correct-horse-battery"


def _api(url: str, path: str, body: dict | None = None, auth: str | None = CREDENTIALS):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(f"{url}{path}", data=None if body is None else json.dumps(body).encode(),
                                 method="POST" if body is not None else "GET", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _cli(args: list[str], env: dict, cwd: Path = REPO, timeout: float = 240) -> str:
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture
def auth_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = Path(tempfile.mkdtemp(prefix="uqa-auth-prefect-", dir=tmp_path))
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    server_env = dict(base, PREFECT_HOME=str(home), PREFECT_SERVER_API_AUTH_STRING=CREDENTIALS,
                      PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=url)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # health is open, as Prefect has it
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        client_env = dict(base, PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_API_AUTH_STRING=CREDENTIALS,
                          PREFECT_LOGGING_TO_API_ENABLED="true", PWD=str(REPO))
        yield url, client_env
    finally:
        stop_process_group(proc)
        log.close()


def test_worker_and_uqa_run_against_a_server_with_basic_auth(auth_server, tmp_path):
    url, env = auth_server
    with pytest.raises(urllib.error.HTTPError) as denied:  # no credentials: nothing
        _api(url, "/flow_runs/filter", {}, auth=None)
    assert denied.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        _api(url, "/flow_runs/filter", {}, auth="uqa-admin:guess")
    assert wrong.value.code == 401

    project = make_project(tmp_path / "project", demo_tiny_params(max_steps=10))
    _cli(["prefect", "work-pool", "create", "uqa-local", "--type", "process", "--overwrite"], env)
    assert "uqa-pipeline/weekly" in _cli(["prefect", "--no-prompt", "deploy", "-n", "weekly"], env)
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "uqa-local", "--limit",
                               "1"], cwd=REPO, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # a deployment run (what the UI's run form and the API start) asking for remote code: refused by the flow
        out = _cli(["prefect", "deployment", "run", "uqa-pipeline/weekly", "--param", f"project_dir={project}",
                    "--params", json.dumps({"overrides": {"model": {"trust_remote_code": True}}})], env)
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        deadline = time.time() + 300
        while (run := _api(url, f"/flow_runs/{flow_run_id}"))["state_type"] not in (
                "COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(2)
    finally:
        stop_process_group(worker, grace=30)
        worker_log.close()
    assert run["state_type"] == "FAILED", (tmp_path / "worker.log").read_text()[-4000:]
    assert "overrides may not set model.trust_remote_code" in run["state"]["message"]
    assert not list((project / ".dvc" / "tmp").glob("uqa-exps/*"))  # refused before any work

    # `uqa run` reports to the same server with the same credentials
    r = subprocess.run([sys.executable, "-m", "uqa_cli", "run", "--project", str(project)], cwd=project, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "registered uqa-qa v0.0.1 (promoted to prod" in r.stdout
    assert "Starting a temporary Prefect server" not in r.stderr
    runs = _api(url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    assert any(fr["parameters"].get("project_dir") == str(project) for fr in runs)
