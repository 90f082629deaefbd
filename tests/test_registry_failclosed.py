"""The registry fails closed: an inconsistent registry stops registration (nothing promoted on doubt),
and a Hub push that failed is retried by the next run with the same weights."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import run_ok
from test_register import _metrics, _model, _params

from tasks.register import register
from uqa.errors import DataError, TransientError
from uqa.params.validation import params_from_dict
from uqa.registry.lookup import resolve_model
from uqa.registry.store import Registry, RegistryInconsistent

NAME = "uqa-qa"


@pytest.fixture
def registered(tmp_path):
    """A git project whose prod is v0.0.1 (F1 60), with a better model (F1 90) ready to register."""
    run_ok(["git", "init", "-q"], tmp_path)
    (tmp_path / "README.md").write_text("x")
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0)
    assert register(_params(), tmp_path)["prod_version"] == "v0.0.1"
    _model(tmp_path, 2)
    _metrics(tmp_path, 90.0)
    return tmp_path


def _state(root: Path) -> tuple[list[str], bytes | None, list[str]]:
    """What a registration would change: the git tags, the index, the version directories."""
    index = root / "registry" / NAME / "index.json"
    return (sorted(run_ok(["git", "tag"], root).stdout.split()) if (root / ".git").exists() else [],
            index.read_bytes() if index.exists() else None,
            sorted(p.name for p in (root / "registry" / NAME).iterdir()))


def _refused(root: Path, match: str, params=None) -> RegistryInconsistent:
    before = _state(root)
    with pytest.raises(RegistryInconsistent, match=match) as info:
        register(params or _params(), root)
    assert _state(root) == before  # no version, no prod tag, no index stage written
    assert "\n" not in str(info.value)  # one line, shown without a traceback
    return info.value


def _index(root: Path) -> Path:
    return root / "registry" / NAME / "index.json"


def test_prod_directory_missing(registered):
    vdir = registered / "registry" / NAME / "v0.0.1"
    shutil.rmtree(vdir)
    _refused(registered, rf"^uqa-qa v0\.0\.1 is in prod \(tag 'uqa-qa#prod#1'\) but {vdir} has no config\.json and "
                         r"no \*\.safetensors weights: restore the registry \(`dvc pull registry`\), or take v0\.0\.1 "
                         r"out of prod \(`gto deprecate uqa-qa v0\.0\.1 prod` or `git tag -d 'uqa-qa#prod#1'`\)$")


def test_prod_weights_missing(registered):
    vdir = registered / "registry" / NAME / "v0.0.1"
    (vdir / "model.safetensors").unlink()
    _refused(registered, rf"but {vdir} has no \*\.safetensors weights: restore the registry \(`dvc pull registry`\)")
    with pytest.raises(RegistryInconsistent, match="tag 'uqa-qa#prod#1'"):
        register(_params(min_f1=95.0), registered)  # refused whatever the gate would say


def test_prod_record_missing_from_the_index(registered):
    index = json.loads(_index(registered).read_text())
    index["versions"] = []
    _index(registered).write_text(json.dumps(index))
    # today's bug: this promoted the new model as the "first prod model"
    _refused(registered, rf"^uqa-qa v0\.0\.1 is in prod \(tag 'uqa-qa#prod#1'\) but {_index(registered)} has no "
                         r"record of it: restore the index \(`dvc pull registry`\), or take v0\.0\.1 out of prod "
                         r"\(`gto deprecate uqa-qa v0\.0\.1 prod` or `git tag -d 'uqa-qa#prod#1'`\) and rerun$")


def test_prod_record_without_f1(registered):
    index = json.loads(_index(registered).read_text())
    del index["versions"][0]["metrics"]["f1"]
    _index(registered).write_text(json.dumps(index))
    _refused(registered, rf"but its record in {_index(registered)} has no numeric metrics\.f1 \(got None\): "
                         r"restore the index \(`dvc pull registry`\)")


def test_corrupt_index(registered):
    _index(registered).write_text('{"name": "uqa-qa", "versions": [')
    _refused(registered, rf"^{_index(registered)} is unreadable \(Expecting value: line 1 column 33 \(char 32\)\): "
                         r"restore it from DVC \(`dvc pull registry`\) or from a backup$")
    _index(registered).write_text('{"name": "uqa-qa"}')
    _refused(registered, rf"^{_index(registered)} is not a registry index \(no 'versions' list\): restore it")
    _index(registered).write_text('{"name": "uqa-qa", "versions": [{"version": "v0.0.1"}]}')
    _refused(registered, rf"^{_index(registered)}: versions\[0\] is not a version record \(it needs 'version', "
                         r"'metrics', 'promoted', 'reason'\): restore it from DVC")


def test_gto_error_is_not_no_prod(registered):
    """A tag GTO cannot parse (here: one on a blob) is an error, not "nothing registered yet"."""
    blob = run_ok(["git", "hash-object", "-w", "README.md"], registered).stdout.strip()
    run_ok(["git", "tag", "-a", "uqa-qa@v0.0.7", "-m", "broken", blob], registered)
    _refused(registered, r"^GTO cannot read the 'prod' stage of uqa-qa in .* \(AttributeError: .*\): list the tags "
                         r"with `git tag -l 'uqa-qa@\*' 'uqa-qa#\*'`, delete the broken one \(`git tag -d TAG`\) "
                         r"or fetch them again \(`git fetch --tags --force`\)$")


def test_index_versions_without_tags(registered):
    """A clone without tags (CI's --no-tags) must not look like "no prod yet"."""
    for tag in run_ok(["git", "tag"], registered).stdout.split():
        run_ok(["git", "tag", "-d", tag], registered)
    _refused(registered, rf"^{_index(registered)} lists 1 version\(s\) of uqa-qa but git has no 'uqa-qa@\*' tags: "
                         r"fetch them \(`git fetch --tags`\)")


def test_index_only_prod_directory_missing(tmp_path):
    _model(tmp_path, 1)
    _metrics(tmp_path, 60.0)
    register(_params(), tmp_path)
    shutil.rmtree(tmp_path / "registry" / NAME / "v0.0.1")
    _model(tmp_path, 2)
    _metrics(tmp_path, 90.0)
    _refused(tmp_path, rf"^uqa-qa v0\.0\.1 is in prod but .* has no config\.json .*take v0\.0\.1 out of prod "
                       rf"\(remove 'prod' from its stages in {_index(tmp_path)}\)$")


@pytest.mark.parametrize("eval_json", ['{"exact_match": 50.0}', '{"f1": NaN}', '{"f1": "80"}', "{"])
def test_metrics_without_f1(registered, eval_json):
    (registered / "metrics" / "eval.json").write_text(eval_json)
    before = _state(registered)
    with pytest.raises(DataError, match=r"metrics/eval\.json (has no numeric 'f1'|is unreadable).*"
                                        r"rerun the evaluate stage \(`dvc repro evaluate`\)"):
        register(_params(), registered)
    assert _state(registered) == before


def test_unrelated_tags_are_not_registrations(tmp_path):
    """The "no tags for this artifact yet" case is legitimate: other artifacts' and release tags don't count."""
    run_ok(["git", "init", "-q"], tmp_path)
    (tmp_path / "README.md").write_text("x")
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    run_ok(["git", "tag", "v1.0"], tmp_path)
    run_ok(["git", "tag", "-a", "other@v0.0.3", "-m", "x"], tmp_path)
    assert Registry(tmp_path, NAME).stage_version() is None
    _model(tmp_path, 1)
    _metrics(tmp_path, 10.0)
    assert register(_params(), tmp_path)["version"] == "v0.0.1"


def test_read_only_paths_give_one_line_errors(registered, capsys):
    from uqa_cli.main import main

    blob = run_ok(["git", "hash-object", "-w", "README.md"], registered).stdout.strip()
    run_ok(["git", "tag", "-a", "uqa-qa@v0.0.7", "-m", "broken", blob], registered)
    with pytest.raises(RegistryInconsistent, match="GTO cannot read"):
        resolve_model("prod", registered)
    assert main(["registry", "--project", str(registered)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: GTO cannot read the 'prod' stage of uqa-qa") and "Traceback" not in err
    run_ok(["git", "tag", "-d", "uqa-qa@v0.0.7"], registered)
    _index(registered).write_text("{")
    assert main(["registry", "--project", str(registered)]) == 2
    assert f"error: {_index(registered)} is unreadable" in capsys.readouterr().err


TOKEN = "hf_secretTOKEN0123456789"


def test_failed_hub_push_is_retried(registered, monkeypatch, caplog):
    """The Hub is stood in for at its client (HfApi's network calls): the first upload fails, the rerun retries."""
    from huggingface_hub import HfApi

    calls: list[str] = []

    def create_repo(self, repo_id, **kw):
        calls.append(f"create {repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls.append(f"upload {Path(folder_path).name}")
        assert (Path(folder_path) / "config.json").exists()
        if len(calls) == 2:  # the first upload: a 503 whose text carries the token, as some clients do
            raise OSError(f"503 Service Unavailable for url https://hub/api (Authorization: Bearer {TOKEN})")
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    params = params_from_dict({"register": {"min_f1": 0.0, "push_to_hub": True, "hub_repo_id": "me/uqa"}})
    caplog.set_level(logging.DEBUG)

    with pytest.raises(TransientError, match=r"push to the Hub \(me/uqa\) failed: OSError: 503") as info:
        register(params, registered)
    assert TOKEN not in str(info.value) and "***" in str(info.value)
    # the registration itself is complete and consistent: v0.0.2 is prod, the push is recorded as pending
    assert Registry(registered, NAME).verified_stage()[0] == "v0.0.2"
    entry = Registry(registered, NAME).record("v0.0.2")
    assert entry["hub"]["repo_id"] == "me/uqa" and entry["hub"]["pushed"] is False
    assert "503" in entry["hub"]["error"]

    again = register(params, registered)  # same weights: not registered again, the push is retried
    assert (again["registered"], again["version"], again["promoted"]) == (False, "v0.0.2", True)
    assert again["hub_url"] == "https://hub/me/uqa/commit/abc"
    assert calls == ["create me/uqa", "upload v0.0.2", "create me/uqa", "upload v0.0.2"]
    hub = Registry(registered, NAME).record("v0.0.2")["hub"]
    assert hub == {"repo_id": "me/uqa", "pushed": True, "url": "https://hub/me/uqa/commit/abc", "error": None}

    assert register(params, registered)["hub_url"] == "https://hub/me/uqa/commit/abc"
    assert len(calls) == 4  # done: not pushed a third time
    assert sorted(run_ok(["git", "tag"], registered).stdout.split()) == [
        "uqa-qa#prod#1", "uqa-qa#prod#2", "uqa-qa@v0.0.1", "uqa-qa@v0.0.2"]
    texts = [caplog.text, *(p.read_text() for p in registered.rglob("*.json") if ".git" not in p.parts)]
    assert not any(TOKEN in t for t in texts)


def test_no_push_for_a_version_not_in_prod(registered, monkeypatch):
    from huggingface_hub import HfApi

    def fail(*a, **kw):
        raise AssertionError("no push expected")

    monkeypatch.setattr(HfApi, "upload_folder", fail)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _metrics(registered, 50.0)  # worse than prod: registered, not promoted, not pushed (now or on a rerun)
    params = params_from_dict({"register": {"min_f1": 0.0, "push_to_hub": True, "hub_repo_id": "me/uqa"}})
    assert register(params, registered)["promoted"] is False
    assert register(params, registered)["hub_url"] is None
    assert "hub" not in Registry(registered, NAME).record("v0.0.2")


class HubStandIn:
    """A local stand-in for the Hub's API on 127.0.0.1: just the calls `HfApi.create_repo` and
    `HfApi.upload_folder` make (huggingface_hub 1.x/2.x), every file answered as a regular (non-LFS)
    upload. It requires `Authorization: Bearer <token>` on every API call, records what it was sent,
    and can refuse the next commit with an error whose text echoes the Authorization header."""

    def __init__(self, token: str):
        import http.server
        import threading

        self.token = token
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.commits: list[dict[str, bytes]] = []  # {path_in_repo: content} per accepted commit
        self.validated: list[str] = []  # README.md texts sent to /api/validate-yaml
        self.fail_next_commit = False
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stand_in.requests.append(("GET", self.path, self.headers.get("Authorization")))
                self._send(404, {"error": "not here"})  # e.g. the client's optional agent-harness list

            def do_POST(self):
                auth = self.headers.get("Authorization")
                stand_in.requests.append(("POST", self.path, auth))
                body = self._body()
                if auth != f"Bearer {stand_in.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                stand_in.handle(self, self.path.split("?")[0], body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, h, path: str, body: bytes) -> None:
        import base64

        if path == "/api/repos/create":
            req = json.loads(body)
            return h._send(200, {"url": f"{self.url}/{req['organization']}/{req['name']}"})
        if path == "/api/validate-yaml":  # what the Hub does with README.md before a commit
            from huggingface_hub import ModelCard

            content = json.loads(body)["content"]
            self.validated.append(content)
            try:
                ModelCard(content)
            except Exception as exc:
                return h._send(400, {"errors": [{"message": str(exc)}]})
            return h._send(200, {"errors": [], "warnings": []})
        parts = path.split("/")  # /api/models/{org}/{name}/{preupload|commit}/{revision}
        if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] == "preupload":
            files = json.loads(body)["files"]
            return h._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in files]})
        if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            assert lines[0]["key"] == "header"
            if self.fail_next_commit:  # a refusal whose body quotes the request's credentials back
                self.fail_next_commit = False  # (a 403: the client would retry a 5xx with backoff)
                return h._send(403, {"error": f"Authorization: Bearer {self.token} may not write here"},
                               {"X-Error-Message": f"this token may not write to {parts[3]}/{parts[4]}"})
            files = {}
            for line in lines[1:]:
                assert line["key"] == "file" and line["value"]["encoding"] == "base64", line["key"]
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            self.commits.append(files)
            oid = f"{len(self.commits):040x}"
            return h._send(200, {"commitUrl": f"{self.url}/{parts[3]}/{parts[4]}/commit/{oid}",
                                 "commitOid": oid, "pullRequestUrl": None})
        h._send(404, {"error": f"the stand-in does not answer {path}"})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_hub_push_reads_and_sends_the_token_and_never_records_it(registered, monkeypatch, caplog):
    """End to end over HTTP: register with push_to_hub against a local stand-in for the Hub (HF_ENDPOINT).
    The stand-in only accepts the token from HF_TOKEN, so the push proves it was read and sent; the first
    commit fails with an error quoting the token, the rerun pushes; no log record, report, index,
    registration, card or git object carries the token."""
    import subprocess

    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import close_session

    token = "hf_standInSecret" + "Q7x9" * 6
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx2", "httpx", "httpcore"):  # their own levels would drop DEBUG
        caplog.set_level(logging.DEBUG, logger=name)
    with HubStandIn(token) as hub:
        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        # huggingface_hub reads these at import, before this test could set the environment
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_DEBUG", True)  # it logs each request as a curl command too
        close_session()  # a client made before this test would not see NO_PROXY
        try:
            params = params_from_dict({"register": {"min_f1": 0.0, "push_to_hub": True, "hub_repo_id": "me/uqa"}})
            hub.fail_next_commit = True
            with pytest.raises(TransientError, match=r"push to the Hub \(me/uqa\) failed: .*403") as info:
                register(params, registered)
            assert "403 Forbidden: this token may not write to me/uqa" in str(info.value)
            assert token in str(info.value.__context__) and token not in str(info.value)  # the echo is dropped
            assert hub.commits == [] and Registry(registered, NAME).record("v0.0.2")["hub"]["pushed"] is False

            report = register(params, registered)  # same weights: the push is retried, and goes through
        finally:
            close_session()

    vdir = registered / "registry" / NAME / "v0.0.2"
    assert (report["version"], report["promoted"]) == ("v0.0.2", True)
    assert report["hub_url"] == f"{hub.url}/me/uqa/commit/{1:040x}"
    assert Registry(registered, NAME).record("v0.0.2")["hub"] == {
        "repo_id": "me/uqa", "pushed": True, "url": report["hub_url"], "error": None}
    # the token went out, as a bearer token, on every API call
    api_calls = [(m, p) for m, p, _ in hub.requests if p.startswith("/api/") and "agent-harnesses" not in p]
    assert api_calls == 2 * [("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
                             ("POST", "/api/models/me/uqa/preupload/main"), ("POST", "/api/models/me/uqa/commit/main")]
    assert all(auth == f"Bearer {token}" for _, p, auth in hub.requests if (("POST", p) in api_calls))
    # the version directory, file for file, byte for byte; its card passed the stand-in's YAML check
    (uploaded,) = hub.commits
    assert sorted(uploaded) == sorted(p.name for p in vdir.iterdir())
    assert {"README.md", "config.json", "model.safetensors", "registration.json"} <= set(uploaded)
    assert all(uploaded[name] == (vdir / name).read_bytes() for name in uploaded)
    assert hub.validated[-1] == (vdir / "README.md").read_text(encoding="utf-8")

    # the client's own DEBUG logs were captured, its curl dump of each request among them
    assert any("authenticated: True" in r.getMessage() for r in caplog.records)
    assert any("authorization: <TOKEN>" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert token not in record.getMessage() and token not in str(record.args), record.name
    assert token not in caplog.text
    written = [registered / "reports" / "register.json", registered / "registry" / NAME / "index.json",
               vdir / "registration.json", vdir / "README.md"]
    written += [p for p in registered.rglob("*") if p.is_file() and ".git" not in p.parts]
    for path in written:
        assert token.encode() not in path.read_bytes(), path
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=registered,
                             capture_output=True, check=True).stdout  # commits, tags, tag messages
    assert b"uqa-qa@v0.0.2" in objects and token.encode() not in objects
