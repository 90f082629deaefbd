"""The remotes are the record, end to end, as users run it: `uqa run --push` in the user's repository
(the project's code, prefect.yaml, the demo's data, a tiny model's params), with a `file://` bare
repository as origin and a local directory as the default DVC remote, then shallow clones of the
branch (what Prefect's git_clone step makes) running `uqa run --push`, a replica following prod
(`uqa serve --repo`), two clones publishing at once, a plain clone reading the registry, and the
`weekly-remote` deployment on a process worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, demo_tiny_params, free_port, run_ok, stop_process_group

from uqa.params.overrides import deep_merge

pytestmark = pytest.mark.slow

NAME = "uqa-qa"
DEMO_DATA = {"train": "demo/data/train.jsonl", "validation": "demo/data/validation.jsonl"}  # in the repository


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def user_repository(tmp_path: Path, origin: Path, store: Path) -> Path:
    """The user's repository: this project's files, params.yaml with the demo's data and a tiny model,
    a default DVC remote, pushed to `origin` (branch main)."""
    user = tmp_path / "user"
    for f in tracked_files():
        (user / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, user / f)
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                        deep_merge(demo_tiny_params(max_steps=2), {"data": {"source": dict(DEMO_DATA)}}))
    (user / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    run_ok(["git", "init", "-q", "-b", "main"], user)
    run_ok([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(store)], user)
    run_ok(["git", "add", "-A"], user)
    run_ok(["git", "commit", "-q", "-m", "the user's project"], user)
    run_ok(["git", "remote", "add", "origin", f"file://{origin}"], user)
    run_ok(["git", "push", "-q", "origin", "main"], user)
    return user


def change_params(user: Path, **train) -> None:
    """A change to the branch: params.yaml's train section, committed and pushed (dvc.lock is not)."""
    params = yaml.safe_load((user / "params.yaml").read_text())
    params["train"].update(train)
    (user / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    run_ok(["git", "commit", "-q", "-m", f"train {train}", "params.yaml"], user)
    run_ok(["git", "push", "-q", "origin", "main"], user)


def shallow_clone(url: str, dest: Path) -> Path:
    run_ok(["git", "clone", "-q", "--depth", "1", "--branch", "main", url, str(dest)], dest.parent)
    return dest


def uqa_run_push(cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "uqa_cli", "run", "--push"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finished(proc: subprocess.Popen, timeout: float = 900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        raise
    assert proc.returncode == 0, out[-5000:]
    assert "Traceback" not in out, out[-5000:]
    return out


def origin_versions(url: str) -> set[str]:
    out = run_ok(["git", "ls-remote", "--tags", url], Path("/")).stdout
    return set(re.findall(rf"refs/tags/{NAME}@(v\d+\.\d+\.\d+)$", out, flags=re.M))


class Replica:
    """`uqa serve --repo file://ORIGIN --model uqa-qa:prod` on a machine of its own (a cache directory)."""

    def __init__(self, url: str, tmp_path: Path):
        self.port = free_port()
        self.log_path = tmp_path / "replica.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uqa_cli", "serve", "--model", f"{NAME}:prod", "--repo", url,
             "--port", str(self.port), "--poll-seconds", "2", "--project", str(tmp_path / "not-a-project")],
            cwd=tmp_path, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, UQA_SERVE_CACHE=str(tmp_path / "replica-cache")))

    def version(self) -> str | None:
        import httpx

        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        try:
            r = httpx.post(f"http://127.0.0.1:{self.port}/v1/answer", timeout=30,
                           json={"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔"})
        except httpx.HTTPError:
            return None
        return r.json()["model_version"] if r.status_code == 200 else None

    def wait_for(self, version: str, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.version() == version:
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"the replica did not serve {version} within {timeout} s:\n"
                             f"{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.log.close()


def test_the_remotes_are_the_record(prefect_server, tmp_path):
    origin, store = tmp_path / "origin.git", tmp_path / "dvc-store"
    run_ok(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    url = f"file://{origin}"
    user = user_repository(tmp_path, origin, store)

    # 1. the user's repository: `uqa run --push` puts v0.0.1 on the origin
    out = finished(uqa_run_push(user))
    assert f"published to origin: {NAME}@v0.0.1" in out, out[-3000:]
    assert origin_versions(url) == {"v0.0.1"}

    # 2. a replica elsewhere serves it; a change run on a shallow clone puts v0.0.2 there, and the
    # replica moves to it within a minute of its publication
    replica = Replica(url, tmp_path)
    try:
        replica.wait_for("v0.0.1", timeout=180)
        change_params(user, max_steps=40)  # a real training this time: better than 2 steps
        out = finished(uqa_run_push(shallow_clone(url, tmp_path / "worker-a")))
        assert re.search(rf"registered {NAME} v0\.0\.2 \(promoted to prod", out), out[-3000:]
        assert "download Cached" in out and "tokenize Cached" in out  # restored from the published run-cache
        moved_after = replica.wait_for("v0.0.2", timeout=60)
        print(f"the replica served v0.0.2 {moved_after:.1f} s after its publication")
        # its page's history is the published registry's: both versions, dated by their GTO tags
        import httpx

        history = httpx.get(f"http://127.0.0.1:{replica.port}/v1/versions", timeout=60).json()
        assert [v["version"] for v in history["versions"]] == ["v0.0.1", "v0.0.2"], history
        assert history["prod"] == history["served"] == "v0.0.2" and history["dates_from"] == "GTO tags (git)"
        assert [p["version"] for p in history["prod_history"]] == ["v0.0.1", "v0.0.2"]
    finally:
        replica.stop()

    # 3. another shallow clone with nothing changed trains nothing and registers nothing
    out = finished(uqa_run_push(shallow_clone(url, tmp_path / "worker-b")))
    assert "train Cached" in out and "evaluate Cached" in out, out[-3000:]
    assert (f"nothing new registered: {NAME} v0.0.2 is prod (these weights are already registered as v0.0.2)"
            in out), out[-3000:]
    assert origin_versions(url) == {"v0.0.1", "v0.0.2"}

    # 4. two shallow clones of two commits, at the same time: both succeed, as v0.0.3 and v0.0.4
    change_params(user, seed=11)
    c = shallow_clone(url, tmp_path / "worker-c")
    change_params(user, seed=12)
    d = shallow_clone(url, tmp_path / "worker-d")
    runs = [uqa_run_push(c), uqa_run_push(d)]
    outs = [finished(p) for p in runs]
    assert origin_versions(url) == {"v0.0.1", "v0.0.2", "v0.0.3", "v0.0.4"}, outs
    assert any("re-gat" in o for o in outs) or len({re.search(r"v0\.0\.[34]", o).group(0) for o in outs}) == 2

    # 5. a plain clone knows the registry: each of the two versions records its own params
    plain = tmp_path / "plain"
    run_ok(["git", "clone", "-q", url, str(plain)], tmp_path)
    seeds = set()
    for version in ("v0.0.3", "v0.0.4"):
        shown = json.loads(run_ok([sys.executable, "-m", "uqa_cli", "registry", "show", f"{NAME}@{version}", "--json"],
                                  plain).stdout)
        seeds.add(shown["lineage"]["params"]["train"]["seed"])
    assert seeds == {11, 12}
    assert "prod" in run_ok([sys.executable, "-m", "uqa_cli", "registry", "show", "prod"], plain).stdout
    run_ok([sys.executable, "-m", "uqa_cli", "registry", "diff", f"{NAME}@v0.0.3", f"{NAME}@v0.0.4"], plain)

    # 6. the weekly-remote deployment on a process worker publishes the next version
    change_params(user, seed=13)
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PWD=str(user))
    prefect = [sys.executable, "-m", "prefect"]
    run_ok([*prefect, "work-pool", "create", "uqa-remote", "--type", "process", "--overwrite"], user, env=env)
    run_ok([*prefect, "--no-prompt", "deploy", "-n", "weekly-remote"], user, env=env)
    machine = tmp_path / "gpu-box"
    machine.mkdir()
    worker_log = tmp_path / "worker.log"
    worker = subprocess.Popen([*prefect, "worker", "start", "--pool", "uqa-remote", "--limit", "1"], cwd=machine,
                              env=dict(env, PWD=str(machine), UQA_GIT_REPOSITORY=url, UQA_GIT_BRANCH="main"),
                              stdout=open(worker_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        r = subprocess.run([*prefect, "deployment", "run", "uqa-pipeline/weekly-remote", "--watch"], cwd=user,
                           env=env, capture_output=True, text=True, timeout=900)
    finally:
        stop_process_group(worker, grace=30)
    logs = worker_log.read_text()
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{logs[-5000:]}"
    assert origin_versions(url) == {"v0.0.1", "v0.0.2", "v0.0.3", "v0.0.4", "v0.0.5"}, logs[-5000:]
    assert not any(machine.iterdir())  # the run's fresh clone was in the worker's temporary directory
