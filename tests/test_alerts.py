"""Alerts as code: `uqa alerts` makes one set of automations on a real Prefect server, and a failed run,
a registration and a kill -9'd run each reach a loopback HTTP receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, demo_tiny_params

sys.path.insert(0, str(REPO / "benchmarks"))
from webhook_receiver import Receiver  # noqa: E402  (the loopback receiver the season benchmark uses too)

from uqa.errors import UserError
from uqa.ops import alerts
from uqa_cli.main import main

# -- without a server ------------------------------------------------------------------------------

def test_the_automations_cover_failures_silence_and_registrations():
    failed, silent, registered = alerts.automations(uuid.uuid4(), dead_after_s=120)
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
    assert failed.trigger.model_dump()["match_related"]["prefect.resource.name"] == ["uqa-pipeline", "uqa-sweep"]
    assert silent.trigger.posture == "Proactive" and silent.trigger.within.total_seconds() == 120
    assert silent.trigger.after == {"prefect.flow-run.heartbeat"} and silent.trigger.for_each == {"prefect.resource.id"}
    assert silent.actions[0].type == "change-flow-run-state" and silent.actions[0].state.value == "CRASHED"
    assert registered.trigger.expect == {alerts.REGISTERED_EVENT}
    assert alerts.DEAD_AFTER_SECONDS <= 300 - 2 * 5  # Crashed within 5 minutes (the server checks every 5 s)


@pytest.mark.parametrize("args, message", [
    (["--webhook", "file:///etc/passwd"], "is not an http(s) URL"),
    (["--webhook", "http://127.0.0.1:1/x", "--dead-after", "10"], "--dead-after 10: give 45..3600"),
    ([], "give --webhook URL or --slack URL"),
])
def test_alerts_rejects_bad_input_before_touching_a_server(args, message, capsys):
    assert main(["alerts", *args]) == 2
    assert message in capsys.readouterr().err


def test_alerts_need_a_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(UserError, match="PREFECT_API_URL is not set"):
            alerts.install(webhook="http://127.0.0.1:1/x")


# -- against a real server -------------------------------------------------------------------------

@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _flow_run(project: Path) -> dict:
    """The newest flow run on the server whose project_dir is `project`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(limit=50, sort="START_TIME_DESC"):
            if Path(str(run.parameters.get("project_dir"))).resolve() == project.resolve():
                return {"id": str(run.id), "name": run.name, "state": run.state.name if run.state else None}
    raise AssertionError(f"no flow run for {project}")


def _uqa(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "uqa_cli", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_failed_and_registered_runs_are_notified(prefect_server, receiver, project_factory, tmp_path, capsys):
    # twice: still one set of automations (updated in place)
    assert main(["alerts", "--webhook", receiver.url]) == 0
    assert main(["alerts", "--webhook", receiver.url]) == 0
    assert "updated: uqa: run failed" in capsys.readouterr().out
    assert main(["alerts", "--list"]) == 0
    listed = [line.split("  (")[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(listed) == sorted(alerts.NAMES)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "title": "t", "context": "c", "question": "q"}) + "\n")
    failing = project_factory({"data": {"source": {"train": str(bad), "validation": str(bad)}}}, name="failing")
    proc = _uqa("run", "--project", str(failing))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    run = _flow_run(failing)
    assert run["state"] == "Failed"
    _, note = receiver.wait_for(run["name"], "Failed", "download:", "missing column(s)", timeout=120)
    assert f"/runs/flow-run/{run['id']}" in note["body"] and "Deployment: none" in note["body"]

    good = project_factory(demo_tiny_params(max_steps=3), name="good")
    proc = _uqa("run", "--project", str(good))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    run = _flow_run(good)
    _, note = receiver.wait_for("uqa-qa v0.0.1 registered, promoted to prod", timeout=120)
    assert run["name"] in note["body"] and "F1 " in note["body"]
    # the version names the flow run that made it, and the commit of the workspace
    assert main(["registry", "show", "prod", "--json", "--project", str(good)]) == 0
    shown = json.loads(capsys.readouterr().out)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=good, capture_output=True, text=True).stdout.strip()
    assert shown["lineage"]["code"]["commit"] == head
    assert shown["lineage"]["run"]["flow_run_id"] == run["id"]
    assert shown["lineage"]["run"]["ui_url"].endswith(f"/runs/flow-run/{run['id']}")

    # the same run again: every stage is up to date, nothing is registered, nobody is told twice
    proc = _uqa("run", "--project", str(good))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    time.sleep(10)
    registered = [b for _, b in receiver.received if "registered" in str(b.get("subject"))]
    assert len(registered) == 1, registered

    assert main(["alerts", "--remove"]) == 0
    assert main(["alerts", "--list"]) == 1


@pytest.mark.slow
def test_a_killed_run_is_crashed_and_notified(prefect_server, receiver, project_factory, capsys):
    from uqa.workspace.dvc_ops import locked_workspace

    dead_after = 45
    assert main(["alerts", "--webhook", receiver.url, "--dead-after", str(dead_after)]) == 0
    project = project_factory(demo_tiny_params(max_steps=3), name="killed")
    # the run waits for the workspace (held here) with heartbeats going, as a run stuck in training would
    with locked_workspace(project, command="test_alerts (holding the workspace)"):
        proc = _uqa("run", "--project", str(project), "--wait", "10",
                    env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"})
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                try:
                    run = _flow_run(project)
                except AssertionError:
                    run = {}
                if run.get("state") == "Running":
                    break
                time.sleep(1)
            assert run.get("state") == "Running", run
            time.sleep(5)  # its first heartbeat is sent as it starts running
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # as a lost machine would: no word to the server
            proc.wait()
            killed_at = time.time()
    assert _flow_run(project)["state"] == "Running"  # nothing told the server yet
    at, note = receiver.wait_for(run["name"], "Crashed", "no heartbeat", timeout=dead_after + 120)
    assert _flow_run(project)["state"] == "Crashed"
    print(f"kill -9 -> notified in {at - killed_at:.0f} s (window {dead_after} s)")
    assert main(["alerts", "--remove"]) == 0


def test_slack_or_any_webhook_is_the_notification_block():
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook

    slack = alerts.notification_block(slack="https://hooks.slack.com/services/T/B/X")
    assert isinstance(slack, SlackWebhook)
    hook = alerts.notification_block(webhook="http://127.0.0.1:9/hook")
    assert isinstance(hook, CustomWebhookNotificationBlock)
    assert hook.json_data == {"subject": "{{subject}}", "body": "{{body}}", "source": "uqa-pipeline"}
    with pytest.raises(UserError, match="one of --webhook URL or --slack URL"):
        alerts.notification_block(webhook="http://127.0.0.1:9/hook", slack="https://hooks.slack.com/x")
