"""The run surface is no wider than it must be (issue 19): what a stranger can send through the API,
what leaves the machine (snapshots, URLs, Hub repos), and writes that survive a power cut."""

from __future__ import annotations

import json
import logging
import os
import subprocess

import pytest
from conftest import run_ok

from uqa.errors import UserError
from uqa.ops.redact import RedactUrlCredentials, strip_url_credentials
from uqa.params.overrides import NOT_FROM_A_DEPLOYMENT_RUN, refuse_unsafe_overrides
from uqa.params.validation import params_from_dict

TOKEN = "ghp_uqaTestToken0123456789abcdef"


# -- register.name -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/etc", "a/../b", "-x", "x-", "a b", "uqa.qa", ""])
def test_register_name_follows_gtos_rule(name):
    import gto.constants

    assert not gto.constants.check_string_is_valid(name, regex=gto.constants.name_re)
    with pytest.raises(UserError, match=r"params\.yaml: register\.name: "):
        params_from_dict({"register": {"name": name}})


@pytest.mark.parametrize("name", ["uqa-qa", "x", "team/uqa_qa-2"])
def test_names_gto_accepts_are_accepted(name):
    import gto.constants

    assert gto.constants.check_string_is_valid(name, regex=gto.constants.name_re)
    assert params_from_dict({"register": {"name": name}}).register.name == name


def test_uqa_run_with_a_path_as_register_name_stops_before_any_work(tmp_path, capsys):
    from uqa_cli.main import main

    (tmp_path / "params.yaml").write_text("register:\n  name: uqa-qa\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["run", "--project", str(tmp_path), "-S", "register.name=../../x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'params.yaml'} (with overrides): register.name: got '../../x' (a "
                          "string); expected a GTO artifact name")
    assert "Prefect server" not in err and "Traceback" not in err  # nothing was started
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path.parent / "x").exists()


# -- overrides from a deployment run -----------------------------------------------------------------


@pytest.mark.parametrize("key", NOT_FROM_A_DEPLOYMENT_RUN)
def test_overrides_that_choose_code_are_refused(key):
    section, *rest = key.split(".")
    nested: dict = {}
    node = nested.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = True if rest[-1] == "trust_remote_code" else ["--x"] if rest[-1] == "extra_args" else "cfg.yaml"
    for form in (nested, {key: node[rest[-1]]}, [f"{key}={json.dumps(node[rest[-1]])}"]):
        with pytest.raises(UserError, match=rf"^run X: overrides may not set {key} \(it would let whoever can start "
                                            r"a run choose code to run on the worker\); set it in params\.yaml"):
            refuse_unsafe_overrides(form, "run X")
    refuse_unsafe_overrides({"train": {"epochs": 1, "launcher": {"num_processes": 2}}, "model": {"name": "m"}})


@pytest.mark.slow
def test_a_deployment_run_with_trust_remote_code_is_refused(tmp_path, monkeypatch):
    """The flow itself refuses it when it runs for a deployment (prefect.runtime.deployment.id is set:
    here through Prefect's documented runtime override variable), before any work."""
    from flows.pipeline import uqa_pipeline

    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "00000000-0000-0000-0000-000000000001")
    (tmp_path / "params.yaml").write_text("model:\n  name: m\n")
    state = uqa_pipeline(project_dir=str(tmp_path), overrides={"model": {"trust_remote_code": True}},
                         return_state=True)
    assert state.is_failed()
    assert "overrides may not set model.trust_remote_code" in state.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# -- sweep snapshots carry tracked and DVC-tracked files only ------------------------------------------


def test_snapshot_never_carries_an_untracked_file(tmp_path):
    from uqa.workspace.experiment import snapshot_commit

    run_ok(["git", "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  source:\n    cmd: x\n    outs:\n      - data/source.json:\n"
                                       "          cache: false\n      - reports\n")
    (tmp_path / "gone.txt").write_text("x")
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 2\n")  # a tracked change
    (tmp_path / "gone.txt").unlink()  # a tracked deletion
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")  # DVC's record, not yet committed
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text("outs: []\n")
    (tmp_path / "data" / "source.json").write_text("{}\n")  # a `cache: false` output: git carries it
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "source.json").write_text("{}\n")
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")  # a secret the user never added
    (tmp_path / "notes.txt").write_text("private notes\n")
    staged_before = run_ok(["git", "ls-files", "--stage"], tmp_path).stdout

    commit = snapshot_commit(tmp_path, "snapshot")
    files = run_ok(["git", "ls-tree", "-r", "--name-only", commit], tmp_path).stdout.split()
    assert sorted(files) == ["data/raw.dvc", "data/source.json", "dvc.lock", "dvc.yaml", "params.yaml",
                             "reports/source.json"]
    assert run_ok(["git", "show", f"{commit}:params.yaml"], tmp_path).stdout == "train:\n  epochs: 2\n"
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=tmp_path,
                             capture_output=True, check=True).stdout
    assert TOKEN.encode() not in objects  # not even as a loose blob
    assert run_ok(["git", "ls-files", "--stage"], tmp_path).stdout == staged_before  # the user's index is untouched
    assert run_ok(["git", "rev-parse", "HEAD^{tree}"], tmp_path).stdout != commit
    assert (tmp_path / ".env").exists()


# -- credentials in URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "clean"), [
    (f"https://user:{TOKEN}@github.com/me/repo.git", "https://github.com/me/repo.git"),
    (f"https://{TOKEN}@github.com/me/repo.git", "https://github.com/me/repo.git"),
    (f"fatal: unable to access 'https://oauth2:{TOKEN}@gitlab.com/x.git/': refused",
     "fatal: unable to access 'https://gitlab.com/x.git/': refused"),
    (f"s3://KEY:{TOKEN}@bucket/path and http://a:b@h:8080/p", "s3://bucket/path and http://h:8080/p"),
    ("ssh://git@github.com/me/repo.git", "ssh://git@github.com/me/repo.git"),
    (f"ssh://git:{TOKEN}@host/x", "ssh://host/x"),
    ("git@github.com:me/repo.git and user@example.com", "git@github.com:me/repo.git and user@example.com"),
])
def test_strip_url_credentials(text, clean):
    assert strip_url_credentials(text) == clean


@pytest.fixture
def remote_with_token(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    run_ok(["git", "init", "-q"], root)
    (root / "README.md").write_text("x")
    run_ok(["git", "add", "-A"], root)
    run_ok(["git", "commit", "-q", "-m", "init"], root)
    # port 9 on loopback: nothing listens, git fails at once (and prints the URL it tried)
    run_ok(["git", "remote", "add", "origin", f"http://someone:{TOKEN}@127.0.0.1:9/repo.git"], root)
    return root


def test_remote_url_and_git_errors_carry_no_credentials(remote_with_token, monkeypatch):
    from uqa.workspace.experiment import publish_commit, remote_url

    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    assert remote_url(remote_with_token, "origin") == "http://127.0.0.1:9/repo.git"
    head = run_ok(["git", "rev-parse", "HEAD"], remote_with_token).stdout.strip()
    with pytest.raises(UserError) as info:
        publish_commit(remote_with_token, "origin", head, "refs/uqa-sweeps/x")
    assert "127.0.0.1" in str(info.value) and TOKEN not in str(info.value)


def test_a_git_call_that_times_out_is_one_line_without_credentials(tmp_path):
    """A remote that accepts the connection and never answers: git would wait for ever; the timeout is a
    GitError of one line, the URL's token stripped (Python's TimeoutExpired repeats the whole command)."""
    import socket

    from uqa.ops.git import GitError, git

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://someone:{TOKEN}@127.0.0.1:{silent.getsockname()[1]}/repo.git"
        with pytest.raises(GitError) as info:
            git(tmp_path, "ls-remote", url, timeout=1)
    message = str(info.value)
    assert "timed out after 1 s" in message and TOKEN not in message and "\n" not in message


def test_git_status_entries_of_a_real_worktree(tmp_path):
    """Renames are one entry under the new name (the source token skipped), names with spaces stay
    whole, and modified, deleted, added and untracked files each come once with their status code."""
    from uqa.ops.git import git, status_entries

    git(tmp_path, "init", "-q")
    for name in ("old name.txt", "kept.txt", "gone.txt"):
        (tmp_path / name).write_text(name * 20)
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    git(tmp_path, "mv", "old name.txt", "new name.txt")
    (tmp_path / "kept.txt").write_text("changed")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "added.txt").write_text("a")
    git(tmp_path, "add", "added.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "loose file.txt").write_text("u")
    out = git(tmp_path, "status", "--porcelain=v1", "-z", "--untracked-files=all", strip=False)
    assert sorted(status_entries(out)) == sorted([("R ", "new name.txt"), (" M", "kept.txt"), (" D", "gone.txt"),
                                                  ("A ", "added.txt"), ("??", "sub/loose file.txt")])


def test_a_replica_s_follow_error_is_one_line_without_credentials():
    """What /v1/model and the log say when following prod fails with a library's error."""
    from uqa.serving.models import ModelHolder

    class Source:
        follows, spec = True, "uqa-qa:prod"

        def fingerprint(self):
            raise RuntimeError(f"fetch of https://bot:{TOKEN}@git.example.com/r.git failed\nsecond line")

    holder = ModelHolder(Source(), load=lambda r: None, poll_seconds=0.01)
    polls = iter([False, True])
    holder._stop.wait = lambda seconds: next(polls)  # one poll, then stop
    holder._watch()
    assert holder.last_error == "RuntimeError: fetch of https://git.example.com/r.git failed"


def test_trial_job_variables_carry_no_credentials():
    from flows.sweep import RemoteTrials, trial_job_variables

    remote = RemoteTrials("origin", f"https://u:{TOKEN}@example.com/r.git", "abc", "refs/x", {"A": "1"})
    variables = trial_job_variables(remote, "sweep-1234567890", 3)
    assert variables["env"]["UQA_TRIAL_REPOSITORY"] == "https://example.com/r.git"
    assert variables["env"]["A"] == "1" and TOKEN not in json.dumps(variables)


def test_run_logs_carry_no_credentials(caplog):
    """Prefect's run loggers (the UI's Logs tab) and the bridge our modules log through both redact."""
    import flows.pipeline  # noqa: F401 - installs the filters
    from flows.logbridge import _RunLogBridge

    caplog.set_level(logging.INFO)
    logging.getLogger("prefect.flow_runs").info("trials clone %s at abc", f"https://u:{TOKEN}@example.com/r.git")
    assert "trials clone https://example.com/r.git at abc" in caplog.text and TOKEN not in caplog.text

    seen: list[str] = []

    class Run:
        def log(self, level, msg, *args):
            seen.append(msg % args)

    bridge = _RunLogBridge(Run())
    record = logging.LogRecord("uqa.workspace.experiment", logging.WARNING, __file__, 1, "pushing to %s", (
        f"https://u:{TOKEN}@example.com/r.git",), None)
    bridge.handle(record)
    assert seen == ["uqa.workspace.experiment: pushing to https://example.com/r.git"]


def test_redaction_filter_keeps_records_it_cannot_format():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert RedactUrlCredentials().filter(record) is True


# -- Hub repos are private unless asked ----------------------------------------------------------------


def test_hub_repo_is_created_private_by_default(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from uqa.registry.hub_push import push_to_hub

    created = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: created.append(kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: type("C", (), {"commit_url": "u"})())
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    params = params_from_dict({})
    assert params.register.hub_private is True
    push_to_hub(tmp_path, "me/uqa", params.register.hub_private)
    push_to_hub(tmp_path, "me/uqa", False)
    assert [kw["private"] for kw in created] == [True, False]


# -- atomic writes reach the disk ----------------------------------------------------------------------


def test_atomic_writes_fsync_the_data_and_the_directory(tmp_path, monkeypatch):
    from uqa.ops import atomic

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "out" / "report.json"
    atomic.atomic_write_json(target, {"a": 1})
    assert any(p.startswith(str(tmp_path / "out" / ".report.json.")) for p in synced)  # the data, before the rename
    assert synced[-1] == str(tmp_path / "out")  # the directory entry, after it

    synced.clear()
    with atomic.atomic_file(tmp_path / "out" / "table.parquet") as tmp:
        tmp.write_bytes(b"data")
    assert synced[0] == str(tmp) and synced[-1] == str(tmp_path / "out")

    synced.clear()
    with atomic.atomic_dir(tmp_path / "out" / "model") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w")
        (tmp / "config.json").write_text("{}")
    names = [p.removeprefix(str(tmp)) for p in synced[:-1]]
    assert sorted(names) == ["", "/config.json", "/sub", "/sub/w.bin"]  # every file and directory of the tree
    assert synced[-1] == str(tmp_path / "out")
    assert (tmp_path / "out" / "model" / "sub" / "w.bin").read_bytes() == b"w"



def test_the_run_form_says_which_overrides_a_deployment_run_may_not_set():
    from uqa.params.overrides import overrides_model

    defs = overrides_model().model_json_schema()["$defs"]
    described = {f"{section}.{key}": spec.get("description", "") for section, model in defs.items()
                 for key, spec in model.get("properties", {}).items()}
    refused = {k for k, d in described.items() if "refused in a deployment run" in d}
    assert refused == {"ModelParamsOverrides.trust_remote_code", "TrainParamsOverridesLauncher.extra_args",
                       "TrainParamsOverridesLauncher.config_file"}


def test_the_run_summary_says_when_nothing_new_was_registered():
    from uqa_cli.runs import registration_line

    again = {"name": "uqa-qa", "version": "v0.0.2", "registered": False, "promoted": True,
             "reason": "these weights are already registered as v0.0.2"}
    assert registration_line(again) == ("nothing new registered: uqa-qa v0.0.2 is prod "
                                        "(these weights are already registered as v0.0.2)")
    new = {"name": "uqa-qa", "version": "v0.0.3", "registered": True, "promoted": False, "reason": "F1 below prod"}
    assert registration_line(new) == "registered uqa-qa v0.0.3 (not promoted: F1 below prod)"
    assert registration_line(new, cached=True) == ("nothing new registered: uqa-qa v0.0.3 is not prod "
                                                   "(register is up to date: an earlier run registered it)")
