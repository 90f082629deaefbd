"""`uqa run --push`: the registry and run-cache from the remotes before the stages, the run's results
to them after (uqa/registry/publish.py), and a re-gate when another machine published first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import allow_failure, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed

from flows.artifacts import notify_registration
from flows.stages import register_task
from uqa import layout
from uqa.errors import UserError
from uqa.ops.git import GIT_REMOTE
from uqa.ops.jsonfile import read_json
from uqa.registry.publish import PublishConflict, publish, sync_from_remotes

PUBLISH_ATTEMPTS = 5  # re-gates after another machine published first, before giving up


@task(name="sync", cache_policy=NO_CACHE)
def sync_task(root: str, name: str) -> dict[str, Any]:
    """The registry branch, tags, registry directory and run-cache from the remotes (uqa/registry/publish.py)."""
    try:
        report = sync_from_remotes(Path(root), name, GIT_REMOTE)
    except UserError as exc:  # a remote that cannot be read: one line, no traceback, nothing run
        get_run_logger().error("sync: %s", exc)
        return Failed(message=f"sync: {exc}", data=exc)
    return {"state": report.state, "registry_restored": report.registry_restored, "dropped": report.discarded}


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(root: str, name: str) -> dict[str, Any]:
    try:
        report = publish(Path(root), name, GIT_REMOTE)
    except PublishConflict as exc:  # another machine published first: the flow re-gates
        return Failed(message=str(exc), data=exc)
    except UserError as exc:
        get_run_logger().error("publish: %s", exc)
        return Failed(message=str(exc), data=exc)
    get_run_logger().info("%s", report.describe(GIT_REMOTE))
    return {"dvc_files": report.dvc_pushed, "tags": [t.removeprefix("refs/tags/") for t in report.tags]}


def publish_and_regate(root: Path, name: str, stages: dict[str, str], upstream: list[State]) -> Any:
    """Publish; when another machine published first, take its registry and register this run's model
    again, gated against the prod that is current now, then publish again (uqa/registry/publish.py)."""
    logger = get_run_logger()
    r = str(root)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        state = publish_task(r, name, return_state=True, wait_for=upstream)
        if state.is_completed():
            published = state.result()
            if not stages.get("register", "").startswith("Cached"):  # a cached register registered nothing now
                notify_registration(read_json(root / layout.report("register")))
            return published
        exc = state.result(raise_on_failure=False)
        if not isinstance(exc, PublishConflict) or attempt == PUBLISH_ATTEMPTS:
            return Failed(message=f"publish: {state.message}")
        logger.warning("publish: %s (attempt %d of %d)", exc, attempt, PUBLISH_ATTEMPTS)
        sync = sync_task(r, name, return_state=True, wait_for=[allow_failure(state)])  # drawn after it in the UI
        if sync.is_failed():
            return Failed(message=sync.message)
        regated = register_task(r, pull=True, return_state=True, wait_for=[sync])
        stages["register"] = f"{regated.name} (re-gated)"
        if regated.is_failed():
            return Failed(message=regated.message)
        upstream = [regated]
    return Failed(message="publish: gave up")
