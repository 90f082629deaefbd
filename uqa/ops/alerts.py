"""Alerts as code: the Prefect automations that tell a team about its runs, and the registration event.

`uqa alerts --webhook URL` (or `--slack URL`) saves one notification block (`uqa-alerts`) and three
automations on the server PREFECT_API_URL names, creating or updating them by name (run it again:
still one set):

    uqa: run failed        a flow run of uqa-pipeline or uqa-sweep enters Failed, Crashed or TimedOut
                           -> notification: flow run, deployment, the state message (our flows start
                           it with the stage that failed: "train: ..."), the run's UI link
    uqa: run went silent   a flow run of those flows stops sending heartbeats (Prefect's engine emits
                           `prefect.flow-run.heartbeat` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
                           seconds; uqa sets 60) and reaches no final state within the window
                           (default 270 s) -> the run is set Crashed, which "run failed" then reports
    uqa: model registered  the `uqa.model.registered` event the register stage emits -> notification
                           naming the version, promoted or not and why, F1 and its change against prod

Everything a notification says comes from the server's templates (Jinja, rendered by the server when
the automation fires), so nothing here runs in the flow's process except the registration event.
"""

from __future__ import annotations

import urllib.parse
from datetime import timedelta
from typing import Any

from uqa.errors import UserError, first_line

FLOWS = ("uqa-pipeline", "uqa-sweep")
BLOCK_NAME = "uqa-alerts"
PREFIX = "uqa: "
FAILED = PREFIX + "run failed"
SILENT = PREFIX + "run went silent"
REGISTERED = PREFIX + "model registered"
NAMES = (FAILED, SILENT, REGISTERED)
REGISTERED_EVENT = "uqa.model.registered"
FAILED_STATES = ("Failed", "Crashed", "TimedOut")
FINAL_STATES = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")
HEARTBEAT_SECONDS = 60  # set for our runs (uqa/ops/runtime.py, prefect.yaml); Prefect's default is 180
DEAD_AFTER_SECONDS = 270  # Prefect's 180 s heartbeats still fit; with ours a dead run is Crashed in <= 4.5 min
MIN_DEAD_AFTER, MAX_DEAD_AFTER = 45, 3600

_DEPLOYMENT = "{% if deployment %}{{ deployment.name }}{% else %}none (run directly){% endif %}"
_MESSAGE = "{{ ((flow_run.state.message or 'no message') | string).split('\\n')[0][:400] }}"
FAILED_SUBJECT = "uqa: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
FAILED_BODY = (
    "Flow run {{ flow_run.name }} of {{ flow.name }} is {{ flow_run.state.name }}.\n"
    "Deployment: " + _DEPLOYMENT + "\n"
    "Error: " + _MESSAGE + "\n"
    "UI_BASE/runs/flow-run/{{ flow_run.id }}"
)
REGISTERED_SUBJECT = ("uqa: {{ event.payload.name }} {{ event.payload.version }} registered, "
                      "{% if event.payload.promoted %}promoted to prod{% else %}NOT promoted{% endif %}")
REGISTERED_BODY = (
    "{{ event.payload.name }} {{ event.payload.version }}: "
    "{% if event.payload.promoted %}promoted to prod{% else %}registered, not promoted{% endif %} "
    "({{ event.payload.reason }}).\n"
    "F1 {{ event.payload.f1 }}{% if event.payload.prod_before %}, change against prod "
    "{{ event.payload.prod_before }}: {{ event.payload.f1_change }}{% endif %}.\n"
    "{% if flow_run %}Flow run {{ flow_run.name }}: UI_BASE/runs/flow-run/{{ flow_run.id }}{% endif %}"
)
SILENT_MESSAGE = ("no heartbeat for {seconds} s: the process running this flow run died without a word "
                  "(killed, out of memory, machine lost); run it again to resume")


def check_url(url: str, what: str) -> str:
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{what} {url!r} is not an http(s) URL")
    return url


def notification_block(webhook: str | None = None, slack: str | None = None) -> Any:
    """The block the automations notify through: any URL that takes a JSON POST, or a Slack webhook."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook

    if bool(webhook) == bool(slack):
        raise UserError("give one of --webhook URL or --slack URL")
    if slack:
        return SlackWebhook(url=check_url(slack, "--slack"))
    return CustomWebhookNotificationBlock(
        name=BLOCK_NAME, url=check_url(webhook, "--webhook"), method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "uqa-pipeline"})


def check_dead_after(dead_after_s: int) -> int:
    if isinstance(dead_after_s, bool) or not isinstance(dead_after_s, int) or not (
            MIN_DEAD_AFTER <= dead_after_s <= MAX_DEAD_AFTER):
        raise UserError(f"--dead-after {dead_after_s}: give {MIN_DEAD_AFTER}..{MAX_DEAD_AFTER} seconds "
                        f"(well over the runs' heartbeat interval, {HEARTBEAT_SECONDS} s)")
    return dead_after_s


def _flows_related() -> dict[str, Any]:
    return {"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)}


def ui_base() -> str:
    """The Prefect UI of the server the automations go to. The links are made from what this client
    knows (PREFECT_UI_URL, else PREFECT_API_URL without /api): a server started without PREFECT_API_URL
    does not know its own address, and its `ui_url` filter then renders 'None'."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    base = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/").removesuffix("/api")
    return str(base or "http://127.0.0.1:4200").rstrip("/")


def automations(block_id: Any, dead_after_s: int = DEAD_AFTER_SECONDS) -> list[Any]:
    """The three automations, as the client's create/update calls take them (AutomationCore: no id yet)."""
    from prefect.events.actions import ChangeFlowRunState, SendNotification
    from prefect.events.schemas.automations import AutomationCore as Automation
    from prefect.events.schemas.automations import EventTrigger, Posture

    check_dead_after(dead_after_s)
    failed = Automation(
        name=FAILED, description=f"A flow run of {', '.join(FLOWS)} ended {', '.join(FAILED_STATES)}",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{s}" for s in FAILED_STATES}, match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_flows_related(), posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_id, subject=FAILED_SUBJECT,
                                                 body=FAILED_BODY.replace("UI_BASE", ui_base()))])
    silent = Automation(
        name=SILENT, description=f"A flow run of {', '.join(FLOWS)} sent no heartbeat for {dead_after_s} s: "
                                 "set Crashed (the 'run failed' automation then notifies)",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL_STATES)},
            match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=_flows_related(),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=dead_after_s)),
        actions=[ChangeFlowRunState(state="CRASHED", name="Crashed",
                                    message=SILENT_MESSAGE.format(seconds=dead_after_s))])
    registered = Automation(
        name=REGISTERED, description=f"Every {REGISTERED_EVENT} event (the register stage)",
        trigger=EventTrigger(expect={REGISTERED_EVENT}, match={"prefect.resource.id": "uqa.model.*"},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_id, subject=REGISTERED_SUBJECT,
                                                     body=REGISTERED_BODY.replace("UI_BASE", ui_base()))])
    return [failed, silent, registered]


def _server() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UserError("PREFECT_API_URL is not set: alerts live on a Prefect server (e.g. export "
                        "PREFECT_API_URL=http://127.0.0.1:4200/api after `prefect server start`); a temporary "
                        "server would forget them when the command ends")
    return url


def install(webhook: str | None = None, slack: str | None = None,
            dead_after_s: int = DEAD_AFTER_SECONDS) -> list[tuple[str, str]]:
    """Create or update the block and the automations by name; [(automation name, created|updated)]."""
    from prefect.client.orchestration import get_client

    block = notification_block(webhook, slack)  # the input is checked before the server is asked
    check_dead_after(dead_after_s)
    server = _server()
    try:
        block_id = block.save(BLOCK_NAME, overwrite=True)
        done = []
        with get_client(sync_client=True) as client:
            for automation in automations(block_id, dead_after_s):
                existing = client.read_automations_by_name(automation.name)
                if existing:
                    client.update_automation(existing[0].id, automation)
                    for extra in existing[1:]:  # a set made twice by hand or by an older uqa: one stays
                        client.delete_automation(extra.id)
                    done.append((automation.name, "updated"))
                else:
                    client.create_automation(automation)
                    done.append((automation.name, "created"))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreachable or refusing server: one line, no traceback
        raise UserError(f"could not set up alerts on {server}: {type(exc).__name__}: "
                        f"{first_line(exc)}") from None
    return done


def listing() -> list[dict[str, Any]]:
    """Our automations on the server: name, enabled, what they watch, where they notify."""
    from prefect.client.orchestration import get_client

    server = _server()
    try:
        with get_client(sync_client=True) as client:
            found = [a for a in client.read_automations() if a.name in NAMES]
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not read automations from {server}: {type(exc).__name__}: {exc}") from None
    return [{"name": a.name, "id": str(a.id), "enabled": a.enabled, "description": a.description,
             "actions": [a_.type for a_ in a.actions]} for a in sorted(found, key=lambda a: a.name)]


def remove() -> list[str]:
    """Delete our automations and the notification block; the names removed."""
    from prefect.client.orchestration import get_client

    server = _server()
    removed = []
    try:
        with get_client(sync_client=True) as client:
            for automation in client.read_automations():
                if automation.name in NAMES:
                    client.delete_automation(automation.id)
                    removed.append(automation.name)
            try:
                client.delete_block_document(client.read_block_document_by_name(
                    BLOCK_NAME, block_type_slug=_block_slug(client)).id)
            except Exception:  # noqa: BLE001 - no block (or another type): nothing to remove
                pass
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not remove automations from {server}: {type(exc).__name__}: {exc}") from None
    return removed


def _block_slug(client: Any) -> str:
    for doc in client.read_block_documents():
        if doc.name == BLOCK_NAME:
            return doc.block_type.slug
    raise LookupError(BLOCK_NAME)


def emit_registered(report: dict[str, Any]) -> Any:
    """The `uqa.model.registered` event for a register stage's report (reports/register.json); the
    flow run it happens in is attached by Prefect. None when the version was already registered."""
    if not report.get("registered"):
        return None
    from prefect.events import emit_event

    name, version = report.get("name"), report.get("version")
    payload = {k: report.get(k) for k in ("name", "version", "promoted", "reason", "f1", "prod_before",
                                          "prod_f1", "f1_change", "prod_version")}
    return emit_event(
        event=REGISTERED_EVENT,
        resource={"prefect.resource.id": f"uqa.model.{name}@{version}", "prefect.resource.name": f"{name}@{version}",
                  "uqa.promoted": str(bool(report.get("promoted"))).lower()},
        payload=payload)
