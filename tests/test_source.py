"""The `source` stage: download reruns exactly when the data changed (local files or a new Hub commit).

Real DVC in temporary git projects, real files, a real (local) HTTP server standing in for the Hub
where the Hub's answers matter; the Hub itself is never reachable here (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import datasets
import pandas as pd
import pytest
from conftest import DEMO_SOURCE, demo_tiny_params, free_port, run_ok

from tasks.download import download
from tasks.source import check_source, source_markdown
from uqa.data.source import HubUnreachable, current_fingerprint, hub_fingerprint, resolve_hub_sha
from uqa.errors import UserError
from uqa.ops.atomic import atomic_write_json
from uqa.params.schema import DataParams

ROW = {"id": "q1", "title": "t", "context": "لاہور پاکستان کا ایک شہر ہے۔", "question": "لاہور کہاں ہے؟",
       "is_impossible": False, "answer": "پاکستان", "answer_start": 6}
SHA = "0123456789abcdef0123456789abcdef01234567"
LOCAL_SOURCE = {"train": "input/train.parquet", "validation": "input/validation.parquet"}


def _env() -> dict[str, str]:
    # stage commands run `python -m tasks...`: the test's interpreter must be the `python` on PATH
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _dvc(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dvc", *args]
    if ok:
        return run_ok(cmd, cwd=cwd, env=_env())
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _write_inputs(root: Path) -> None:
    """The demo data as parquet files inside the project, named by relative paths in params.yaml."""
    (root / "input").mkdir(parents=True, exist_ok=True)
    for split, path in DEMO_SOURCE.items():
        pd.read_json(path, lines=True).to_parquet(root / "input" / f"{split}.parquet", index=False)


def _rewrite(path: Path, change) -> None:
    """Change a data file in place (same path), as a new export of the data would."""
    frame = change(pd.read_parquet(path))
    frame.to_parquet(path, index=False)


# --- fingerprints ------------------------------------------------------------------------------------


def test_local_fingerprint_is_deterministic_with_paths_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    pd.DataFrame([ROW]).to_parquet(tmp_path / "in" / "train-0.parquet", index=False)
    pd.DataFrame([ROW, {**ROW, "id": "q2"}]).to_parquet(tmp_path / "in" / "train-1.parquet", index=False)
    pd.DataFrame([ROW]).to_json(tmp_path / "in" / "val.jsonl", orient="records", lines=True, force_ascii=False)
    params = DataParams(source={"train": "in/train-*.parquet", "validation": "in/val.jsonl"})

    report = check_source(params)
    first = Path("data/source.json").read_bytes()
    fingerprint = json.loads(first)
    assert fingerprint["kind"] == "files" and fingerprint["source"] == params.source
    assert [f["path"] for f in fingerprint["files"]["train"]] == ["in/train-0.parquet", "in/train-1.parquet"]
    entry = fingerprint["files"]["validation"][0]
    assert entry == {"path": "in/val.jsonl", "size": (tmp_path / "in" / "val.jsonl").stat().st_size,
                     "sha256": hashlib.sha256((tmp_path / "in" / "val.jsonl").read_bytes()).hexdigest()}
    assert report == {"checked": True, **fingerprint}
    assert b"time" not in first

    check_source(params)
    assert Path("data/source.json").read_bytes() == first  # unchanged data: the same bytes, DVC skips download

    pd.DataFrame([ROW]).to_parquet(tmp_path / "in" / "train-1.parquet", index=False)  # one row fewer
    check_source(params)
    assert Path("data/source.json").read_bytes() != first


def test_unchanged_source_files_are_not_read_again_in_a_dvc_project(tmp_path, monkeypatch):
    """The source stage runs on every `dvc repro`: a file whose stat is unchanged keeps its sha256
    without being read; one rewritten with the same size and mtime (cp -p) is hashed again."""
    import uqa.ops.hashing

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    pd.DataFrame([ROW]).to_parquet(tmp_path / "train.parquet", index=False)
    pd.DataFrame([ROW]).to_parquet(tmp_path / "val.parquet", index=False)
    params = DataParams(source={"train": "train.parquet", "validation": "val.parquet"})
    check_source(params)
    first = Path("data/source.json").read_bytes()
    read: list[str] = []
    real = uqa.ops.hashing.file_sha256
    monkeypatch.setattr(uqa.ops.hashing, "file_sha256", lambda path: read.append(str(path)) or real(path))

    check_source(params)
    assert read == [] and Path("data/source.json").read_bytes() == first

    stat = (tmp_path / "train.parquet").stat()
    pd.DataFrame([{**ROW, "id": "q9"}]).to_parquet(tmp_path / "train.parquet", index=False)
    assert (tmp_path / "train.parquet").stat().st_size == stat.st_size  # same length: only the id differs
    os.utime(tmp_path / "train.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    check_source(params)
    assert read == ["train.parquet"]
    assert json.loads(Path("data/source.json").read_text())["files"]["train"][0]["sha256"] == \
        hashlib.sha256((tmp_path / "train.parquet").read_bytes()).hexdigest()


def test_directory_fingerprint_lists_the_files_datasets_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        pd.DataFrame([ROW]).to_parquet(tmp_path / "ds" / "data" / f"{split}-00000-of-00001.parquet", index=False)
    check_source(DataParams(source="ds"))
    fingerprint = json.loads(Path("data/source.json").read_text())
    assert fingerprint["kind"] == "directory"
    assert fingerprint["files"]["train"][0]["path"] == os.path.join("ds", "data", "train-00000-of-00001.parquet")
    assert fingerprint["files"]["validation"][0]["path"].endswith("validation-00000-of-00001.parquet")


def test_missing_local_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"data\.source\.train: no file matches 'nope/\*\.parquet'"):
        check_source(DataParams(source={"train": "nope/*.parquet", "validation": "nope/v.parquet"}))


# --- the Hub: offline, and a stand-in server for its answers -------------------------------------------


def test_hub_sha_offline_is_unreachable_not_an_error():
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE=1"):
        resolve_hub_sha("uqa/UQA", None)


def test_hub_unreachable_keeps_the_previous_fingerprint(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    atomic_write_json("data/source.json", hub_fingerprint("uqa/UQA", None, SHA))
    before = Path("data/source.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="tasks"):
        report = check_source(DataParams(source="uqa/UQA"))
    assert Path("data/source.json").read_bytes() == before
    assert report == json.loads(Path("reports/source.json").read_text())
    assert report == {"checked": False, "reason": "HF_HUB_OFFLINE=1", "kept": SHA, "source": "uqa/UQA",
                      "revision": None}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
        "WARNING", f"source: the Hugging Face Hub is unreachable (HF_HUB_OFFLINE=1); keeping the current data "
                   f"of uqa/UQA (commit {SHA}) and checking again on the next run")]
    assert "unreachable" in source_markdown(report) and SHA in source_markdown(report)


@pytest.mark.parametrize("previous", [None, hub_fingerprint("uqa/UQA", "v1", SHA),
                                      hub_fingerprint("other/data", None, SHA)],
                         ids=["no-previous", "other-revision", "other-dataset"])
def test_hub_unreachable_without_data_to_keep_writes_no_commit(tmp_path, monkeypatch, caplog, previous):
    monkeypatch.chdir(tmp_path)
    if previous:
        atomic_write_json("data/source.json", previous)
    with caplog.at_level(logging.INFO, logger="tasks"):
        report = check_source(DataParams(source="uqa/UQA"))
    assert json.loads(Path("data/source.json").read_text()) == hub_fingerprint("uqa/UQA", None, None)
    assert report["checked"] is False and report["kept"] is None
    assert len(caplog.records) == 1 and "none to keep" in caplog.records[0].getMessage()
    # download, run on its own afterwards, gets a fingerprint without a commit and fails with the hub error
    assert current_fingerprint(DataParams(source="uqa/UQA"))["resolved_revision"] is None


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers /api/datasets/<id>[/revision/<rev>] as the Hub does: the sha, or 404 RepoNotFound."""

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        known = {"/api/datasets/uqa/UQA": SHA, "/api/datasets/uqa/UQA/revision/v1.0": "f" * 40}
        if path in known:
            body = json.dumps({"id": "uqa/UQA", "sha": known[path], "siblings": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = json.dumps({"error": "Repository not found"}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound" if "revision" not in path else "RevisionNotFound")
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _source_stage(cwd: Path, endpoint: str, source: str = "uqa/UQA", revision: str | None = None):
    (cwd / "params.yaml").write_text(json.dumps({"data": {"source": source, "revision": revision}}))
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint)  # online, to the given endpoint only
    return subprocess.run([sys.executable, "-m", "tasks.source"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_hub_sha_from_the_hub_api(tmp_path):
    with _fake_hub() as endpoint:
        r = _source_stage(tmp_path, endpoint)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "data/source.json").read_text()) == hub_fingerprint("uqa/UQA", None, SHA)
        assert json.loads((tmp_path / "reports/source.json").read_text())["checked"] is True

        r = _source_stage(tmp_path, endpoint, revision="v1.0")
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "data/source.json").read_text())["resolved_revision"] == "f" * 40

        for source, revision, message in (("uqa/nope", None, "no dataset by that name"),
                                          ("uqa/UQA", "v9", "'v9' is not a revision of the Hub dataset 'uqa/UQA'")):
            r = _source_stage(tmp_path, endpoint, source, revision)
            assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_hub_that_does_not_answer_keeps_the_data(tmp_path):
    atomic_write_json(tmp_path / "data/source.json", hub_fingerprint("uqa/UQA", None, SHA))
    before = (tmp_path / "data/source.json").read_bytes()
    r = _source_stage(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "WARNING" in lines[0], r.stderr
    assert "the Hugging Face Hub is unreachable (ConnectError" in lines[0] and f"(commit {SHA})" in lines[0]
    assert (tmp_path / "data/source.json").read_bytes() == before
    report = json.loads((tmp_path / "reports/source.json").read_text())
    assert report["checked"] is False and report["kept"] == SHA and report["reason"].startswith("ConnectError")


# --- dvc repro -----------------------------------------------------------------------------------------


@pytest.fixture
def local_project(project_factory):
    project = project_factory({"data": {"source": dict(LOCAL_SOURCE)}})
    _write_inputs(project)
    return project


def test_dvc_repro_reruns_download_exactly_when_the_files_change(local_project):
    project = local_project
    first = _dvc("repro", "filter", cwd=project).stdout
    assert "Running stage 'download'" in first
    assert len(datasets.load_from_disk(str(project / "data/raw/train"))) == 2401

    unchanged = _dvc("repro", "filter", cwd=project).stdout
    assert "Running stage 'source'" in unchanged
    assert "Running stage 'download'" not in unchanged and "Running stage 'filter'" not in unchanged
    assert "Stage 'download' didn't change, skipping" in unchanged

    _rewrite(project / "input/train.parquet", lambda frame: frame.iloc[:-1000])  # the same file, 1,000 rows fewer
    changed = _dvc("repro", "filter", cwd=project).stdout
    assert "Running stage 'download'" in changed and "Running stage 'filter'" in changed
    assert len(datasets.load_from_disk(str(project / "data/raw/train"))) == 1401
    assert json.loads((project / "reports/filter.json").read_text())["train"]["rows_in"] == 1401
    record = json.loads((project / "reports/download.json").read_text())
    assert record["files"] == json.loads((project / "data/source.json").read_text())["files"]
    assert json.loads(_dvc("status", "--json", "download", "filter", cwd=project).stdout) == {}


def test_dvc_repro_rejects_a_dropped_column(local_project):
    project = local_project
    _dvc("repro", "filter", cwd=project)
    _rewrite(project / "input/train.parquet", lambda frame: frame.drop(columns=["answer_start"]))
    r = _dvc("repro", "filter", cwd=project, ok=False)
    assert r.returncode != 0
    assert "input/train.parquet: missing column(s) answer_start" in r.stderr
    assert "Traceback" not in r.stderr


def test_dvc_repro_hub_offline_keeps_the_current_data(project_factory, tmp_path):
    project = project_factory({"data": {"source": "uqa/UQA"}})  # the Hub can't be reached here
    # data downloaded by an earlier run at commit SHA (the demo data stands in for it), recorded in dvc.lock
    atomic_write_json(project / "data/source.json", hub_fingerprint("uqa/UQA", None, SHA))
    before = (project / "data/source.json").read_bytes()
    download(DataParams(source=dict(DEMO_SOURCE)), project / "data/raw", project / "reports/download.json")
    _dvc("commit", "-f", "download", cwd=project)

    r = _dvc("repro", "download", cwd=project)
    assert "Running stage 'source'" in r.stdout
    assert "Stage 'download' didn't change, skipping" in r.stdout and "Running stage 'download'" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "WARNING" in lines[0] and ("the Hugging Face Hub is unreachable (HF_HUB_OFFLINE=1); keeping the "
                                      f"current data of uqa/UQA (commit {SHA})") in lines[0]
    assert (project / "data/source.json").read_bytes() == before
    assert json.loads((project / "reports/source.json").read_text())["kept"] == SHA
    assert len(datasets.load_from_disk(str(project / "data/raw/train"))) == 2401


def test_dvc_repro_hub_offline_with_no_data_yet_fails_in_download(project_factory):
    project = project_factory({"data": {"source": "uqa/UQA"}})
    r = _dvc("repro", "download", cwd=project, ok=False)
    assert r.returncode != 0
    assert "none to keep" in r.stderr
    assert "error: download: dataset 'uqa/UQA': the Hugging Face Hub is switched off here" in r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads((project / "data/source.json").read_text())["resolved_revision"] is None


# --- the flow -----------------------------------------------------------------------------------------


def _artifacts(api_url: str, flow_run_id) -> dict[str, str]:
    body = json.dumps({"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}}).encode()
    req = urllib.request.Request(f"{api_url}/artifacts/filter", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return {a["key"]: a.get("data") or "" for a in json.loads(r.read())}


@pytest.mark.slow
def test_flow_reruns_download_exactly_when_the_files_change(project_factory, prefect_server):
    from flows.pipeline import uqa_pipeline

    params = demo_tiny_params(max_steps=4, logging_steps=2)
    params["data"] = {"source": {"train": "input/train.jsonl", "validation": "input/validation.jsonl"}}
    project = project_factory(params)
    (project / "input").mkdir()
    for split, path in DEMO_SOURCE.items():
        shutil.copy2(path, project / "input" / f"{split}.jsonl")

    def flow():
        state = uqa_pipeline(project_dir=str(project), return_state=True)
        assert state.is_completed(), state.message
        return state.result()["stages"], _artifacts(prefect_server, state.state_details.flow_run_id)

    stages, _ = flow()
    assert set(stages.values()) == {"Completed"} and next(iter(stages)) == "source"

    stages, artifacts = flow()  # nothing changed: source checks, download and everything after skip
    assert stages["source"] == "Completed"
    assert {s for name, s in stages.items() if name != "source"} == {"Cached"}
    train_sha = json.loads((project / "data/source.json").read_text())["files"]["train"][0]["sha256"]
    assert "`input/train.jsonl`" in artifacts["uqa-source"] and train_sha in artifacts["uqa-source"]

    lines = (project / "input/train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (project / "input/train.jsonl").write_text("".join(lines[:-1000]), encoding="utf-8")
    stages, artifacts = flow()
    assert stages["download"] == stages["filter"] == "Completed"
    assert len(datasets.load_from_disk(str(project / "data/raw/train"))) == 1401
    new_sha = json.loads((project / "data/source.json").read_text())["files"]["train"][0]["sha256"]
    assert new_sha != train_sha and new_sha in artifacts["uqa-source"]
