"""The HTTP API in-process (FastAPI's TestClient, no server): a real tiny model (random weights, a
tokenizer trained on the demo data) answers through the batcher exactly as uqa.predict.Predictor
does; bad input gets a 4xx naming the field and the app stays healthy."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import DEMO_SOURCE, DEMO_TINY_CONFIG

from uqa.inference_settings import INFERENCE_FILE
from uqa.predict import Predictor
from uqa.serving.answering import BatchAnswerer
from uqa.serving.app import ServeSettings, create_app
from uqa.serving.backends import load_served
from uqa.serving.batcher import BatchSettings, DynamicBatcher
from uqa.serving.models import ModelHolder, ModelSource
from uqa.serving.schema import Question


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model with 48-token windows (so the demo contexts, repeated, take several windows)."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from uqa.tokenizer import train_tokenizer

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


def test_batched_answers_equal_unbatched_ones(model_dir):
    rows = _questions(40)
    want = _expected(model_dir, rows)
    holder = ModelHolder(ModelSource(str(model_dir), model_dir.parent), lambda r: load_served(r, "torch", 64 * 48))
    holder.load_initial()

    async def clients():
        batcher = DynamicBatcher(BatchAnswerer(holder), BatchSettings(max_batch_size=16, max_wait_ms=50))
        await batcher.start()
        try:
            got = await asyncio.gather(*(batcher.submit(([Question(**r)], False)) for r in rows))
            return got, batcher.stats
        finally:
            await batcher.stop()

    got, stats = asyncio.run(clients())
    assert stats.largest_batch == 16 and stats.batches < len(rows)  # they really were batched
    mismatches = [(g[0], w) for g, w in zip(got, want, strict=True) if not _same(g[0], w)]
    assert mismatches == []
    assert {g[0]["model_version"] for g in got} == {"v9.9.9"}


@pytest.fixture(scope="module")
def client(model_dir):
    from fastapi.testclient import TestClient

    holder = ModelHolder(ModelSource(str(model_dir), model_dir.parent), lambda r: load_served(r, "torch", 64 * 48))
    holder.load_initial()
    app = create_app(holder, ServeSettings(BatchSettings(max_batch_size=8, max_wait_ms=2), max_body_bytes=20_000))
    with TestClient(app, raise_server_exceptions=False) as c:
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


def test_health_readiness_model_info_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "model_version": "v9.9.9"}
    info = client.get("/v1/model").json()
    assert info["version"] == "v9.9.9" and info["backend"] == "torch"
    assert info["inference"]["max_seq_length"] == 48 and info["inference"]["no_answer_threshold"] == 0.5
    assert info["lineage"]["metrics"] == {"f1": 1.0}
    spec = client.get("/openapi.json").json()
    assert "/v1/answer" in spec["paths"] and "Question" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def _healthy(client) -> bool:
    rows = _questions(1)
    return client.get("/healthz").status_code == 200 and client.post("/v1/answer", json=rows[0]).status_code == 200


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
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


def test_a_question_too_long_for_the_window_gets_predicts_error(client, model_dir):
    long_q = "لاہور کہاں ہے؟ " * 40
    context = _questions(1)[0]["context"]
    with pytest.raises(Exception) as info:
        Predictor(model_dir)([long_q], [context])
    r = client.post("/v1/answer", json={"question": long_q, "context": context})
    assert r.status_code == 422 and r.json() == {"error": str(info.value), "field": "body.question"}
    # in a list, the row at fault is named; a good request in the same batch is answered
    good = _questions(1)[0]
    r = client.post("/v1/answer", json=[good, {"question": long_q, "context": context}])
    assert r.status_code == 422 and r.json()["field"] == "body[1].question" and "row 1" in r.json()["error"]
    assert _healthy(client)


def test_onnx_backends_answer_like_torch_and_say_how_closely(model_dir, tmp_path):
    from uqa.serving.backends import agreement, load_served
    from uqa.serving.models import Resolved

    rows = _questions(30)
    qs, cs = [r["question"] for r in rows], [r["context"] for r in rows]
    torch_answers = Predictor(model_dir)(qs, cs)
    resolved = Resolved(model_dir, "v9.9.9")
    for backend in ("onnx", "onnx-int8"):
        served = load_served(resolved, backend, onnx_cache=tmp_path / "cache")
        same, total = agreement(torch_answers, served.predictor(qs, cs))
        if backend == "onnx":  # fp32: the same answers (the logits agree to ~1e-6)
            assert same == total == 30
        # the start-up note: the agreement on the check set, and a warning exactly when answers change
        m = re.search(r"on (\d+) of (\d+) held-out questions", served.notes[0])
        assert m and int(m.group(2)) == 64, served.notes
        assert ("CHANGES ANSWERS" in served.notes[0]) == (int(m.group(1)) < 64)
    exported = list((tmp_path / "cache").rglob("*.onnx"))
    assert sorted(p.name for p in exported) == ["model.int8.onnx", "model.onnx"]  # once per version
    mtimes = {p: p.stat().st_mtime_ns for p in exported}
    load_served(resolved, "onnx-int8", onnx_cache=tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in exported} == mtimes  # cached: not exported again
