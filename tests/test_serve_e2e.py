"""`uqa serve` for real: a uvicorn server process on 127.0.0.1 serving a demo model that the
pipeline's own stage code trained, evaluated and registered (GTO) in a temporary git project.

- 100 real UQA questions (long contexts: many windows each) sent by 8 clients at once get exactly
  the answers `uqa predict --input` gives;
- bad requests get their 4xx (and an overfull queue its 503 + Retry-After), and the server stays healthy;
- while a client keeps asking, a second version is registered and promoted: the server moves to it
  with no failed request, and every answer names the version that gave it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    REPO,
    UQA_DIR,
    demo_tiny_params,
    free_port,
    make_project,
    needs_shared,
    stop_process_group,
)

from uqa.params.overrides import deep_merge

pytestmark = pytest.mark.slow

SQUAD2 = {"data": {"keep_unanswerable": True}, "evaluate": {"tune_fraction": 0.5}}


def _train_and_register(root: Path, seed: int) -> dict:
    from tasks.download import download
    from tasks.evaluate import evaluate
    from tasks.filter import filter_rows
    from tasks.register import register
    from tasks.tokenize import tokenize_splits
    from tasks.train_recipe import run as train_recipe
    from uqa.params.files import apply_overrides, load_params
    from uqa.workspace.dvc_ops import working_dir

    if seed != 42:
        apply_overrides(root / "params.yaml", {"train": {"seed": seed}})
    p = load_params(root / "params.yaml")
    with working_dir(root):
        download(p.data)
        filter_rows(p.data)
        tokenize_splits(p)
        train_recipe(p)  # what `accelerate launch -m tasks.train_recipe` runs, in this process
        evaluate(p)
        return register(p, root)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("serve") / "project",
                        deep_merge(demo_tiny_params(epochs=2, logging_steps=50), SQUAD2))
    report = _train_and_register(root, 42)
    assert (report["version"], report["promoted"]) == ("v0.0.1", True)
    return root


class Server:
    def __init__(self, project: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(project.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uqa_cli", "serve", "--project", str(project), "--model", "prod",
             "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process_group(self.proc)
        self.log.close()


@contextlib.contextmanager
def running_server(project, *args: str):
    """`uqa serve` on the project, ready; stopped on every way out, a failed start included."""
    s = Server(project, *args)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture
def server(project, request):
    with running_server(project, *getattr(request, "param", ())) as s:
        yield s


@needs_shared
def test_eight_clients_get_exactly_what_predict_gives(project, server, tmp_path):
    import httpx

    from uqa_cli.main import main

    rows = pd.read_parquet(UQA_DIR / "validation.parquet").drop_duplicates("id").head(100)
    rows = rows[["id", "question", "context"]]
    rows.to_json(tmp_path / "q.jsonl", orient="records", lines=True, force_ascii=False)
    assert main(["predict", "--project", str(project), "--model", "prod", "--input", str(tmp_path / "q.jsonl"),
                 "--output", str(tmp_path / "predicted.jsonl")]) == 0
    predicted = [json.loads(line) for line in (tmp_path / "predicted.jsonl").read_text().splitlines()]

    def ask(row) -> dict:
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{server.url}/v1/answer", json=row)
            assert r.status_code == 200, r.text
            return r.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(ask, rows.to_dict("records")))
    assert len(served) == len(predicted) == 100
    for got, want in zip(served, predicted, strict=True):
        assert (got["id"], got["answer"], got["start"], got["end"], got["no_answer"]) == \
            (want["id"], want["answer"], want["start"], want["end"], want["no_answer"])
        assert abs(got["score"] - want["score"]) <= 1e-5 and got["model_version"] == "v0.0.1"
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["scheduling"]["largest_pass"] > 1  # requests shared forward passes
    # many windows each: UQA contexts are far longer than the demo model's window
    assert info["inference"]["max_seq_length"] < 100


def _bad_requests(url: str) -> list[tuple[int, str | None, dict]]:
    import httpx

    cases = [
        (b"not json", 400, "body"),
        (b"[" * 60_000, 400, "body"),  # deeper than any parser goes
        (b'{"question": "x", "context": "y", "id": ' + b"9" * 5000 + b"}", 400, "body"),
        (b'\xff\xfe{"question": 1}', 400, "body"),  # not UTF-8
        (json.dumps({"context": "x"}).encode(), 422, "body.question"),
        (json.dumps({"question": ["x"], "context": "y"}).encode(), 422, "body.question"),
        (json.dumps({"question": "", "context": "y"}).encode(), 422, "body.question"),
        (json.dumps({"question": "x", "context": ""}).encode(), 422, "body.context"),
        (json.dumps({"question": "x", "context": "y", "id": 2**70}).encode(), 422, "body.id"),
        (json.dumps({"question": "x", "context": "y" * (2 << 20)}).encode(), 413, "body"),
    ]
    out = []
    with httpx.Client(timeout=60) as c:
        for body, status, field in cases:
            r = c.post(f"{url}/v1/answer", content=body, headers={"content-type": "application/json"})
            assert r.headers["content-type"].startswith("application/json")
            out.append((r.status_code, r.json().get("field"), {"want": (status, field), "body": r.json()}))
        text = c.post(f"{url}/v1/answer", content=b"{}", headers={"content-type": "text/plain"})
        out.append((text.status_code, text.json().get("field"), {"want": (415, "Content-Type"), "body": text.json()}))
        foreign = c.post(f"{url}/v1/answer", json={"question": "x", "context": "y"}, headers={"Host": "evil.example"})
        out.append((foreign.status_code, foreign.json().get("field"), {"want": (400, "Host"), "body": foreign.json()}))
    return out


def test_bad_requests_get_their_4xx_and_the_server_stays_healthy(project, server):
    import httpx

    for status, field, info in _bad_requests(server.url):
        assert (status, field) == info["want"], info
        assert "Traceback" not in json.dumps(info["body"])
    assert "Traceback" not in server.output() and "status=500" not in server.output()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    ok = httpx.post(f"{server.url}/v1/answer", json={"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔"})
    assert ok.status_code == 200 and ok.json()["model_version"] == "v0.0.1"
    # a question too long for the model's window is cut to fit, and the answer says so
    long_q = "لاہور کہاں ہے؟ " * 40
    cut = httpx.post(f"{server.url}/v1/answer", json={"question": long_q, "context": "لاہور ایک شہر ہے۔"})
    assert cut.status_code == 200 and cut.json()["question_truncated"] is True


BIG = "یہ ایک شہر ہے۔ اس کا افتتاح 1927 میں ہوا۔ " * 1500  # 60,000 characters: thousands of windows


# one window per forward pass: the tiny model computes a pass in milliseconds, and with passes of hundreds
# of windows 16 clients could not keep 300 waiting (the queue drained as fast as requests were tokenized)
@pytest.mark.parametrize("server", [("--max-wait-ms", "0", "--max-request-windows", "200", "--max-queue", "300",
                                     "--forward-tokens", "1")], indirect=True)
def test_more_waiting_windows_than_the_bound_get_503_with_retry_after(project, server):
    import httpx

    context = "یہ ایک شہر ہے۔ " * 300  # ~90 windows: three fill the queue

    def ask(_):
        r = httpx.post(f"{server.url}/v1/answer", json={"question": "کیا ہے؟", "context": context}, timeout=120)
        return r.status_code, r.headers.get("retry-after"), r.json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(48)))
    statuses = {s for s, _, _ in results}
    assert statuses <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    assert all(ra and int(ra) >= 1 for s, ra, _ in results if s == 503)
    refused = next(body for s, _, body in results if s == 503)
    assert "windows are waiting" in refused["error"]
    too_big = httpx.post(f"{server.url}/v1/answer", json={"question": "کیا ہے؟", "context": BIG}, timeout=120)
    assert too_big.status_code == 422 and "the cap is 200 per request" in too_big.json()["error"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    r = httpx.post(f"{server.url}/v1/answer", json={"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔"}, timeout=60)
    assert r.status_code == 200


@pytest.mark.parametrize("server", [("--max-queue", "65536")], indirect=True)
def test_a_small_question_is_not_starved_behind_big_ones_and_an_abandoned_one_is_dropped(project, server):
    """Four requests of four 60,000-character contexts each, then a small question: it is answered while
    the big ones are still being computed (each pass gives every request a share), not after all of them.
    A client that gives up on its big request leaves no work behind: its windows are never computed."""
    import httpx

    done: dict[str, float] = {}

    def ask(name: str, body):
        r = httpx.post(f"{server.url}/v1/answer", json=body, timeout=300)
        assert r.status_code == 200, r.text
        done[name] = time.monotonic()

    big = [{"question": "افتتاح کب ہوا؟", "context": BIG}] * 4
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        bigs = [pool.submit(ask, f"big{i}", big) for i in range(4)]
        deadline = time.time() + 60
        while httpx.get(f"{server.url}/v1/model").json()["scheduling"]["waiting_windows"] < 10_000:
            assert time.time() < deadline and not any(f.done() for f in bigs)
            time.sleep(0.05)
        small = pool.submit(ask, "small", {"question": "افتتاح کب ہوا؟", "context": "اس کا افتتاح 1927 میں ہوا۔"})
        for f in [small, *bigs]:
            f.result()
    assert done["small"] < min(done[f"big{i}"] for i in range(4)), done  # not after the work queued before it

    with pytest.raises(httpx.TimeoutException):  # a client that gives up on ~7,000 windows after 0.3 s
        httpx.post(f"{server.url}/v1/answer", json=[{"question": "کیا ہے؟", "context": BIG}] * 5, timeout=0.3)
    deadline = time.time() + 60
    while time.time() < deadline:
        info = httpx.get(f"{server.url}/v1/model").json()["scheduling"]
        if info["dropped"] >= 1 and info["waiting_windows"] == 0:
            break
        time.sleep(0.5)
    assert info["dropped"] >= 1 and info["waiting_windows"] == 0, info
    assert "status=499" in server.output()  # the access log says the client went away


KEY = "e2e-api-key-0123456789abcdef"


@pytest.fixture
def keyed_server(project, tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    with running_server(project, "--api-key-file", str(tmp_path / "key")) as s:
        yield s


@needs_shared
def test_hugging_face_clients_get_the_same_answers_with_the_key(project, keyed_server, monkeypatch):
    """huggingface_hub's InferenceClient, at / and at /v1/answer: the answers of our own body on held-out
    UQA questions; top_k=3 gives three spans, best first; without the key, 401."""
    import httpx
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' offline switch; this server is loopback

    url = keyed_server.url
    rows = pd.read_parquet(UQA_DIR / "validation.parquet").drop_duplicates("id").head(12)
    auth = {"Authorization": f"Bearer {KEY}"}
    for path in ("/", "/v1/answer"):
        client = InferenceClient(model=f"{url}{path}", token=KEY)
        for row in rows.itertuples():
            ours = httpx.post(f"{url}/v1/answer", json={"question": row.question, "context": row.context},
                              headers=auth, timeout=60).json()
            got = client.question_answering(question=row.question, context=row.context)
            if ours["no_answer"]:
                assert (got.answer, got.start, got.end) == ("", 0, 0)
            else:
                assert (got.answer, got.start, got.end) == (ours["answer"], ours["start"], ours["end"])
        ranked = client.question_answering(question=rows.iloc[0].question, context=rows.iloc[0].context, top_k=3,
                                           handle_impossible_answer=False)
        assert len(ranked) == 3 and len({(a.start, a.end) for a in ranked}) == 3
        assert all(a.answer == rows.iloc[0].context[a.start:a.end] for a in ranked)
        with pytest.raises(HfHubHTTPError) as refused:
            InferenceClient(model=f"{url}{path}").question_answering(question="x", context="y")
        assert refused.value.response.status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200  # open to a load balancer
    assert httpx.get(f"{url}/metrics").status_code == 401 and httpx.get(f"{url}/v1/model").status_code == 401


def test_schemathesis_finds_no_failure_in_the_openapi_contract(project, keyed_server):
    """schemathesis (an OpenAPI fuzzer) with every check, over the served /openapi.json, with the key:
    no 500, every schema-valid request accepted, every invalid one refused, responses as documented."""
    r = subprocess.run(["schemathesis", "run", f"{keyed_server.url}/openapi.json", "--checks", "all",
                        "-H", f"Authorization: Bearer {KEY}", "--max-examples", "50", "--seed", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    assert r.returncode == 0 and "No issues found" in r.stdout, r.stdout[-6000:]
    assert "status=500" not in keyed_server.output() and "Traceback" not in keyed_server.output()


@pytest.mark.parametrize("server", [("--poll-seconds", "0.5")], indirect=True)
def test_the_server_follows_prod_with_no_failed_request(project, server):
    import httpx

    from uqa.registry.store import Registry

    answers, failures, stop = [], [], threading.Event()

    def keep_asking():
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{server.url}/v1/answer", json=[{"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔"}])
                    if r.status_code != 200:
                        failures.append((r.status_code, r.text))
                    else:
                        answers.append(r.json()[0]["model_version"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    client = threading.Thread(target=keep_asking)
    client.start()
    try:
        report = _train_and_register(project, seed=7)  # the register stage's own code: GTO tag v0.0.2
        assert report["version"] == "v0.0.2"
        if not report["promoted"]:  # the gate kept v0.0.1 (a worse F1): promote it as a user would
            Registry(project, "uqa-qa").git_promote("v0.0.2", "promote for the serving test")
        deadline = time.time() + 120
        while time.time() < deadline and (not answers or answers[-1] != "v0.0.2"):
            time.sleep(0.5)
        time.sleep(1)  # a few more answers from the new version
    finally:
        stop.set()
        client.join(60)
    assert failures == []
    assert answers[0] == "v0.0.1" and answers[-1] == "v0.0.2", server.output()
    first_new = answers.index("v0.0.2")
    assert set(answers[first_new:]) == {"v0.0.2"}  # the swap is one step: never back to the old one
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["version"] == "v0.0.2" and info["swaps"][-1]["from"] == "v0.0.1"
    # the version's record: registration.json and the registry index (why it was promoted, its metrics)
    assert info["lineage"]["version"] == "v0.0.2" and "f1" in info["lineage"]["metrics"]
    assert "reason" in info["lineage"] and info["stage"] == "prod"


def test_a_replica_elsewhere_gets_prod_through_gto_and_the_dvc_remote(project, tmp_path):
    """`uqa serve --repo GIT_URL`: a clone (GTO tags) and `dvc get` from the project's DVC remote,
    with nothing shared on disk: the replica's answers name prod's version and equal the project's."""
    import httpx
    from conftest import dvc, run_ok

    from uqa.model.predict import Predictor
    from uqa.registry.lookup import resolve_model
    from uqa.registry.store import Registry

    store = tmp_path / "dvc-store"
    dvc("remote", "add", "-d", "store", str(store), cwd=project)
    dvc("commit", "-f", "register", cwd=project)  # the stages ran as plain functions here: record them
    dvc("push", "registry", cwd=project)
    run_ok(["git", "add", "-A", ".dvc/config", "dvc.lock"], project)
    run_ok(["git", "commit", "-q", "-m", "register and push"], project)
    origin = tmp_path / "origin.git"
    run_ok(["git", "clone", "-q", "--bare", str(project), str(origin)], tmp_path)  # branches and GTO tags

    prod = Registry(project, "uqa-qa").stage_version("prod")
    row = {"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔ اس کا افتتاح 1927 میں ہوا۔"}
    want = Predictor(resolve_model("prod", project))([row["question"]], [row["context"]])[0]
    port = free_port()
    log = open(tmp_path / "replica.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uqa_cli", "serve", "--model", "uqa-qa:prod", "--repo", f"file://{origin}",
         "--port", str(port), "--project", str(tmp_path / "not-a-project")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env=dict(os.environ, UQA_SERVE_CACHE=str(tmp_path / "cache")))
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "replica.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        got = httpx.post(f"http://127.0.0.1:{port}/v1/answer", json=row, timeout=60).json()
        assert got["model_version"] == prod
        assert (got["answer"], got["start"], got["end"]) == (want.answer, want.start, want.end)
        downloaded = tmp_path / "cache" / "models" / "uqa-qa" / prod
        assert (downloaded / "config.json").exists() and not str(downloaded).startswith(str(project))
    finally:
        stop_process_group(proc)
        log.close()
