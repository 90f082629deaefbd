"""The HTTP API in-process (FastAPI's TestClient, no server): a real tiny model (random weights, a
tokenizer trained on the demo data) answers through the scheduler exactly as uqa.model.predict.Predictor
does, in our shape and in the Hugging Face QA protocol's; bad input gets a 4xx naming the field and
the app stays healthy; the API key, Host and Content-Type guards; Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import DEMO_SOURCE, DEMO_TINY_CONFIG

from uqa.model.predict import Predictor
from uqa.model.settings import INFERENCE_FILE
from uqa.serving.answering import answer
from uqa.serving.app import ROUTES, ServeSettings, create_app
from uqa.serving.backends import load_served
from uqa.serving.guard import Security
from uqa.serving.models import ModelHolder, ModelSource
from uqa.serving.scheduler import ScheduleSettings, WindowScheduler
from uqa.serving.schema import parse_body


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model with 48-token windows (so the demo contexts, repeated, take several windows)."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from uqa.text.tokenizer import train_tokenizer

    rows = pd.read_json(DEMO_SOURCE["train"], lines=True, dtype=False)
    tok = train_tokenizer(list(rows["question"]) + list(rows["context"]), vocab_size=600)
    cfg = dict(DEMO_TINY_CONFIG, vocab_size=len(tok))
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    path = tmp_path_factory.mktemp("served") / "model"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    (path / INFERENCE_FILE).write_text(json.dumps({"max_seq_length": 48, "stride": 16, "n_best": 20,
                                                   "max_answer_length": 30, "no_answer_threshold": 0.5,
                                                   "squad2": True}))
    (path / "registration.json").write_text(json.dumps({"version": "v9.9.9", "metrics": {"f1": 1.0}}))
    return path


def _questions(n: int) -> list[dict]:
    rows = pd.read_json(DEMO_SOURCE["validation"], lines=True, dtype=False).head(n)
    # every third context repeated: several windows each, of different lengths
    return [{"id": r.id, "question": r.question, "context": (r.context + " ") * (1 + i % 3)}
            for i, r in enumerate(rows.itertuples())]


def _expected(model_dir: Path, rows: list[dict]) -> list[dict]:
    predictor = Predictor(model_dir)
    out = []
    for row in rows:  # one at a time: the unbatched answers
        a = predictor([row["question"]], [row["context"]])[0].to_dict()
        out.append({"id": row["id"], **a})
    return out


def _same(got: dict, want: dict) -> bool:
    return all(got[k] == want[k] for k in ("id", "answer", "start", "end", "no_answer")) and \
        abs(got["score"] - want["score"]) <= 1e-5


def test_answers_in_shared_passes_equal_unbatched_ones(model_dir):
    rows = _questions(40)
    want = _expected(model_dir, rows)
    holder = ModelHolder(ModelSource(str(model_dir), model_dir.parent), lambda r: load_served(r, "torch", 16 * 48))
    holder.load_initial()

    async def clients():
        scheduler = WindowScheduler(ScheduleSettings(max_wait_ms=50))
        await scheduler.start()
        try:
            got = await asyncio.gather(*(answer(holder, scheduler, parse_body(json.dumps(r).encode())) for r in rows))
            return [g for g, _ in got], scheduler.stats
        finally:
            await scheduler.stop()

    got, stats = asyncio.run(clients())
    assert stats.largest_pass == 16 and stats.passes < stats.windows  # windows of several requests per pass
    mismatches = [(g, w) for g, w in zip(got, want, strict=True) if not _same(g, w)]
    assert mismatches == []
    assert {g["model_version"] for g in got} == {"v9.9.9"}


def _client(model_dir: Path, security: Security | None = None, **schedule):
    from fastapi.testclient import TestClient

    holder = ModelHolder(ModelSource(str(model_dir), model_dir.parent), lambda r: load_served(r, "torch", 64 * 48))
    holder.load_initial()
    settings = ServeSettings(ScheduleSettings(**{"max_wait_ms": 2, **schedule}), max_body_bytes=20_000,
                             security=security or Security(routes=ROUTES))
    base = "http://127.0.0.1:8000" if security and security.allowed_hosts else "http://testserver"
    return TestClient(create_app(holder, settings), raise_server_exceptions=False, base_url=base)


@pytest.fixture(scope="module")
def client(model_dir):
    with _client(model_dir) as c:
        yield c


def test_single_and_list_requests(client, model_dir):
    rows = _questions(5)
    want = _expected(model_dir, rows)
    r = client.post("/v1/answer", json=rows[0])
    assert r.status_code == 200 and _same(r.json(), want[0]) and r.json()["model_version"] == "v9.9.9"
    r = client.post("/v1/answer", json=rows)
    assert r.status_code == 200 and all(_same(g, w) for g, w in zip(r.json(), want, strict=True))
    no_ids = [{k: v for k, v in row.items() if k != "id"} for row in rows[:2]]
    assert [a["id"] for a in client.post("/v1/answer", json=no_ids).json()] == [0, 1]  # as predict --input
    assert client.post("/v1/answer", json=no_ids[0]).json()["id"] is None


def test_the_hugging_face_payload_gets_the_same_answers_in_its_shape(client, model_dir):
    rows = _questions(6)
    for path in ("/", "/v1/answer"):
        for row in rows:
            ours = client.post("/v1/answer", json=row).json()
            hf = client.post(path, json={"inputs": {"question": row["question"], "context": row["context"]}}).json()
            assert isinstance(hf, dict) and hf["model_version"] == "v9.9.9"
            if ours["no_answer"]:
                assert (hf["answer"], hf["start"], hf["end"], hf["no_answer"]) == ("", 0, 0, True)  # HF's "" at 0
            else:
                assert (hf["answer"], hf["start"], hf["end"]) == (ours["answer"], ours["start"], ours["end"])
            assert hf["score"] == pytest.approx(ours["score"], abs=1e-6)
    # top_k: k distinct spans, best first, the first one the answer; each sliced from the context
    row = rows[1]
    ranked = client.post("/", json={"inputs": {"question": row["question"], "context": row["context"]},
                                    "parameters": {"top_k": 3, "handle_impossible_answer": False}}).json()
    assert isinstance(ranked, list) and len(ranked) == 3
    assert len({(a["start"], a["end"]) for a in ranked}) == 3
    assert all(a["answer"] == row["context"][a["start"]:a["end"]] and a["answer"] for a in ranked)
    first = client.post("/", json={"inputs": {"question": row["question"], "context": row["context"]},
                                   "parameters": {"handle_impossible_answer": False}}).json()
    assert (ranked[0]["start"], ranked[0]["end"]) == (first["start"], first["end"])
    # a list of inputs: a list of answers (of lists, with top_k > 1), ids by position
    many = client.post("/", json={"inputs": [{"question": r["question"], "context": r["context"]} for r in rows[:2]],
                                  "parameters": {"top_k": 2, "handle_impossible_answer": False}}).json()
    assert [len(m) for m in many] == [2, 2] and [m[0]["id"] for m in many] == [0, 1]
    # max_answer_len bounds the span (in tokens): one token is at most one word here
    short = client.post("/", json={"inputs": {"question": row["question"], "context": row["context"]},
                                   "parameters": {"max_answer_len": 1, "handle_impossible_answer": False}}).json()
    assert len(short["answer"].split()) <= 1 and short["answer"]


def test_handle_impossible_answer_and_the_versions_windows(client):
    row = _questions(1)[0]
    inputs = {"question": row["question"], "context": row["context"]}
    always = client.post("/", json={"inputs": inputs, "parameters": {"handle_impossible_answer": False}}).json()
    assert always["no_answer"] is False and always["answer"]
    for name, value in (("doc_stride", 7), ("max_seq_len", 64)):
        r = client.post("/", json={"inputs": inputs, "parameters": {name: value}})
        assert r.status_code == 422 and r.json()["field"] == f"body.parameters.{name}", r.text
        assert "this version's" in r.json()["error"]
    same = client.post("/", json={"inputs": inputs, "parameters": {"doc_stride": 16, "max_seq_len": 48}})
    assert same.status_code == 200


def test_health_readiness_model_info_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "model_version": "v9.9.9"}
    info = client.get("/v1/model").json()
    assert info["version"] == "v9.9.9" and info["backend"] == "torch"
    assert info["inference"]["max_seq_length"] == 48 and info["inference"]["no_answer_threshold"] == 0.5
    assert info["lineage"]["metrics"] == {"f1": 1.0}
    assert info["scheduling"]["max_request_windows"] == 8192
    spec = client.get("/openapi.json").json()
    assert {"/", "/v1/answer", "/metrics"} <= set(spec["paths"]) and "Question" in spec["components"]["schemas"]
    assert "HFRequest" in spec["components"]["schemas"]
    assert {"413", "415", "422", "503", "504"} <= set(spec["paths"]["/"]["post"]["responses"])
    assert client.get("/docs").status_code == 200


def _healthy(client) -> bool:
    rows = _questions(1)
    return client.get("/healthz").status_code == 200 and client.post("/v1/answer", json=rows[0]).status_code == 200


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    (b"[" * 15_000, 400, "body"),  # the 60,000 of the real server's default limit: tests/test_serve_e2e.py
    (b'{"question": "x", "context": "y", "id": ' + b"9" * 5000 + b"}", 400, "body"),
    (json.dumps({"context": "x"}).encode(), 422, "body.question"),
    (json.dumps({"question": 1, "context": "x"}).encode(), 422, "body.question"),
    (json.dumps({"question": " ", "context": "x"}).encode(), 422, "body.question"),
    (json.dumps([{"question": "x", "context": "y"}, {"question": "x", "context": ""}]).encode(), 422,
     "body[1].context"),
    (json.dumps({"question": "x", "context": "y" * 30_000}).encode(), 413, "body"),
])
def test_bad_requests_get_a_4xx_naming_the_field(client, body, status, field):
    r = client.post("/v1/answer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["field"] == field, r.text
    assert "Traceback" not in r.text
    assert _healthy(client)


def test_a_question_too_long_for_the_window_is_cut_to_fit_and_says_so(client, model_dir):
    long_q = "لاہور کہاں ہے؟ " * 40
    context = _questions(1)[0]["context"]
    with pytest.raises(Exception, match="tokens long"):
        Predictor(model_dir)([long_q], [context])  # `uqa predict` refuses it, naming the limit
    r = client.post("/v1/answer", json={"question": long_q, "context": context})
    assert r.status_code == 200 and r.json()["question_truncated"] is True
    good = _questions(1)[0]
    r = client.post("/v1/answer", json=[good, {"question": long_q, "context": context}])
    assert [a["question_truncated"] for a in r.json()] == [False, True]
    # the Hugging Face max_question_len: cut to that many tokens
    r = client.post("/", json={"inputs": {"question": good["question"], "context": context},
                               "parameters": {"max_question_len": 1}})
    assert r.status_code == 200 and r.json()["question_truncated"] is True


def test_a_request_over_the_window_cap_is_refused_naming_both(model_dir):
    row = _questions(1)[0]
    with _client(model_dir, max_request_windows=4, max_queue_windows=8) as c:
        r = c.post("/v1/answer", json={"question": row["question"], "context": (row["context"] + " ") * 20})
        assert r.status_code == 422 and r.json()["field"] == "body"
        assert re.search(r"needs \d+ windows of the model; the cap is 4 per request", r.json()["error"]), r.text
        assert c.post("/v1/answer", json=row).status_code == 200


def test_every_request_is_counted_in_prometheus_metrics_with_its_id(model_dir):
    from prometheus_client.parser import text_string_to_metric_families

    with _client(model_dir) as c:
        row = _questions(1)[0]
        assert c.post("/v1/answer", json=row, headers={"X-Request-ID": "client-123"}).headers["x-request-id"] == \
            "client-123"
        made = c.post("/", json={"inputs": row}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert c.post("/v1/answer", content=b"x", headers={"content-type": "text/plain",
                                                            "X-Request-ID": "bad id with spaces"}).status_code == 415
        c.get("/healthz")
        text = c.get("/metrics").text
        openmetrics = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"uqa_requests", "uqa_request_duration_seconds", "uqa_model_info", "uqa_queue_windows",
            "uqa_request_windows", "uqa_forward_windows", "uqa_model_swaps", "uqa_follow_errors"} <= set(families)
    assert (families["uqa_requests"].type, families["uqa_request_duration_seconds"].type) == ("counter", "histogram")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    assert {f.name: f.type for f in openmetrics_families(openmetrics)}["uqa_model"] == "info"  # as Prometheus scrapes
    counts = {(s.labels["route"], s.labels["status"]): s.value for s in families["uqa_requests"].samples
              if s.name == "uqa_requests_total"}
    assert counts == {("POST /v1/answer", "200"): 1, ("POST /", "200"): 1, ("POST /v1/answer", "415"): 1,
                      ("GET /healthz", "200"): 1}  # a scrape is counted once it has answered (in the next one)
    info = [s for s in families["uqa_model_info"].samples if s.name == "uqa_model_info"]
    assert info[0].labels["version"] == "v9.9.9" and info[0].value == 1
    answered = [s for s in families["uqa_request_windows"].samples if s.name == "uqa_request_windows_count"]
    assert answered[0].value == 2


def test_an_api_key_guards_every_route_but_the_health_checks(model_dir):
    key = "k" * 24
    with _client(model_dir, Security.for_binding("127.0.0.1", key, ROUTES)) as c:
        row = _questions(1)[0]
        auth = {"Authorization": f"Bearer {key}"}
        for method, path in (("get", "/v1/model"), ("get", "/v1/versions"), ("get", "/metrics"), ("get", "/docs"),
                             ("get", "/openapi.json"), ("post", "/v1/answer"), ("post", "/")):
            kwargs = {"json": row} if method == "post" else {}
            for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": key}):
                r = getattr(c, method)(path, headers=headers, **kwargs)
                assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (path, r.text)
            assert getattr(c, method)(path, headers=auth, **kwargs).status_code == 200, path
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        # the page and its files hold nothing secret: open, so that the page can ask for the key
        for path in ("/", "/ui/app.js", "/ui/app.css"):
            assert c.get(path).status_code == 200, path
        assert c.head("/").status_code == 200
        spec = c.get("/openapi.json", headers=auth).json()
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        # a web page's tricks: another Host (DNS rebinding) and a form-like POST
        r = c.post("/v1/answer", json=row, headers={**auth, "Host": "evil.example"})
        assert r.status_code == 400 and r.json()["field"] == "Host"
        r = c.post("/v1/answer", content=json.dumps(row), headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 415
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_the_page_is_served_from_the_package_under_a_strict_policy(client):
    """GET / is the page (its elements by the ids the issue names), its script and style come from this
    server only (no CDN: it works offline), under a Content-Security-Policy; nothing else under /ui."""
    from uqa.serving.app import STATIC_DIR

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="question"', 'id="context"', 'id="ask"', 'id="answer"', 'id="version"', 'id="history"',
                    'id="alternatives"', 'id="score"', 'id="key-form"', 'dir="auto"'):
        assert element in page.text, element
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe" not in policy and page.headers["x-content-type-options"] == "nosniff"
    assert sorted(p.name for p in STATIC_DIR.iterdir()) == ["app.css", "app.js", "index.html"]
    for name, media in (("app.js", "javascript"), ("app.css", "text/css")):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and media in r.headers["content-type"]
        assert "content-security-policy" in r.headers
    for source in (page.text, client.get("/ui/app.js").text, client.get("/ui/app.css").text):
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", source)  # nothing from another origin
        assert "innerHTML" not in source and "eval(" not in source  # text goes in as text
    assert "top_k" in client.get("/ui/app.js").text  # the HF payload, as any client sends it
    for path in ("/ui/../app.py", "/ui/%2e%2e/app.py", "/ui/missing.js", "/ui/"):
        assert client.get(path).status_code == 404, path
    assert "content-security-policy" not in client.get("/v1/model").headers  # the API answers JSON, not pages


def test_versions_of_a_model_directory_say_there_is_no_history(client):
    r = client.get("/v1/versions")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] is None and body["versions"] == [] and body["served"] == "v9.9.9"
    assert "not a registry version" in body["note"]
    spec = client.get("/openapi.json").json()
    assert "/v1/versions" in spec["paths"] and "/" in spec["paths"] and "get" not in spec["paths"]["/"]


def test_binding_beyond_loopback_needs_a_key(tmp_path, capsys, monkeypatch):
    from uqa_cli.main import main

    monkeypatch.delenv("UQA_SERVE_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--api-key-file FILE" in err and "--allow-unauthenticated" in err
    (tmp_path / "weak").write_text("short\n")
    assert main(["serve", "--api-key-file", str(tmp_path / "weak"), "--project", str(tmp_path)]) == 2
    assert "at least 16" in capsys.readouterr().err
    assert main(["serve", "--api-key-file", str(tmp_path / "missing"), "--project", str(tmp_path)]) == 2


def test_onnx_backends_answer_like_torch_and_say_how_closely(model_dir, tmp_path):
    import shutil

    from uqa.model.settings import EVAL_QUESTIONS_FILE
    from uqa.serving.backends import agreement, load_served
    from uqa.serving.models import Resolved

    rows = _questions(30)
    qs, cs = [r["question"] for r in rows], [r["context"] for r in rows]
    torch_answers = Predictor(model_dir)(qs, cs)
    version = tmp_path / "version"
    shutil.copytree(model_dir, version)
    with open(version / EVAL_QUESTIONS_FILE, "w", encoding="utf-8") as f:  # what register records
        for r in _questions(40):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    resolved = Resolved(version, "v9.9.9")
    for backend in ("onnx", "onnx-int8"):
        served = load_served(resolved, backend, onnx_cache=tmp_path / "cache")
        same, total = agreement(torch_answers, served.predictor(qs, cs))
        if backend == "onnx":  # fp32: the same answers (the logits agree to ~1e-6)
            assert same == total == 30
        # the start-up note: the agreement on the version's own questions, a warning exactly when answers change
        m = re.search(r"on (\d+) of (\d+) held-out questions .*the version's own evaluation questions", served.notes[0])
        assert m and int(m.group(2)) == 40, served.notes
        assert ("CHANGES ANSWERS" in served.notes[0]) == (int(m.group(1)) < 40)
    exported = list((tmp_path / "cache").rglob("*.onnx"))
    assert sorted(p.name for p in exported) == ["model.int8.onnx", "model.onnx"]  # once per version
    mtimes = {p: p.stat().st_mtime_ns for p in exported}
    served = load_served(Resolved(model_dir, "v9.9.9"), "onnx-int8", onnx_cache=tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in exported} == mtimes  # cached by the weights: not exported again
    assert "not measured" in served.notes[0] and "--check-questions" in served.notes[0]  # no questions of its own
