"""One Prefect task per stage, a thin shell over the stage function `dvc repro` runs (tasks/<stage>.py):
a stage DVC reports up to date is skipped and shown `Cached`, one whose result DVC holds (its cache, its
run-cache, with `pull` the remote's) is restored, any other runs and is recorded with `dvc commit`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from flows.artifacts import (
    ArtifactProgress,
    _filter_artifact,
    _metrics_artifact,
    _register_artifact,
    _source_artifact,
    _train_artifact,
)
from tasks.chain import BY_NAME, STAGES, stage_name
from uqa.errors import TransientError, UserError
from uqa.model.progress import progress_reporter
from uqa.params.files import load_params
from uqa.params.schema import PARAMS_FILE
from uqa.workspace.dvc_ops import dvc_checkout, dvc_commit, dvc_repo, dvc_restore, dvc_status, working_dir


def _only_missing_outputs(status: dict[str, Any]) -> bool:
    for entries in status.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict) or set(entry) != {"changed outs"}:
                return False
            if any(v not in ("deleted", "not in cache") for v in entry["changed outs"].values()):
                return False
    return bool(status)


def run_stage(name: str, root: str, params_file: str = PARAMS_FILE, pull: bool = False) -> Any:
    """Skip the stage when DVC says it is up to date, restore it when DVC holds its result (the cache,
    then the run-cache, as `dvc repro` does; with `pull` also the DVC remote's), else run it and
    `dvc commit` it."""
    logger = get_run_logger()
    root_path = Path(root)
    status = dvc_status(root_path, name)
    if not status:
        logger.info("%s: up to date in dvc.lock, skipped", name)
        return Completed(name="Cached", message=f"{name}: up to date in dvc.lock")
    where = "the DVC remote" if pull else "the DVC cache"
    if _only_missing_outputs(status) and dvc_checkout(root_path, name, pull=pull):
        logger.info("%s: outputs restored from %s", name, where)
        return Completed(name="Cached", message=f"{name}: restored from {where}")
    if dvc_restore(root_path, name, pull=pull):
        logger.info("%s: a run with the same deps and params is in DVC's run-cache: its outputs restored from %s",
                    name, where)
        return Completed(name="Cached", message=f"{name}: restored from the run-cache ({where})")
    logger.info("%s: running (%s)", name, status)
    try:
        with working_dir(root_path):
            params = load_params(params_file)
            result = BY_NAME[name].run(params, params_file)
    except TransientError:
        raise  # retried where the task has retries
    except UserError as exc:
        # bad data or configuration: a clear message in the UI, no traceback, no retry
        logger.error("%s: %s", name, exc)
        return Failed(message=f"{name}: {exc}", data=exc)
    dvc_commit(root_path, name)
    # the stage's report is in its files; the task returns nothing. Prefect links a task to earlier
    # ones by the id() of the objects it is handed, and the components of a returned report, once
    # freed, had their ids reused: the UI's graph showed a spurious tokenize -> register edge
    del result
    return None


def succeeded(result: Any) -> bool:
    """A stage's artifact is published only when the stage succeeded (ran, or was up to date) in
    this run: after a failure the report files are the previous run's and would be shown as this one's."""
    return not (isinstance(result, State) and result.is_failed())


def run_and_publish(name: str, root: str, publish: Callable[[Path, bool], None], pull: bool = False) -> Any:
    """Run the stage (or skip it, up to date); then show its report as an artifact, if it succeeded.
    `publish(root, ran_now)`: ran_now is False when DVC found the stage up to date (shown Cached)."""
    result = run_stage(name, root, pull=pull)
    if succeeded(result):
        publish(Path(root), not isinstance(result, State))
    return result


def _no_retry_on_bad_data(task, task_run, state) -> bool:
    try:
        state.result()
    except TransientError:
        return True
    except UserError:
        return False  # bad data or config: a retry would fail the same way
    except Exception:
        return True
    return True


def pinned_source(root: str) -> Any:
    """A sweep's trial: data.source as the sweep resolved it (its data/source.json, from the DVC
    cache), not as it is now: every trial trains on the same data even if the hub moved meanwhile."""
    from tasks.source import FINGERPRINT as SOURCE_OUT

    try:
        with dvc_repo(Path(root)) as repo:
            repo.checkout(targets=["source"])
    except Exception as exc:  # noqa: BLE001 - reported as the stage's failure
        return Failed(message=f"source: the sweep's data/source.json is not in the DVC cache ({exc}); "
                              "dvc pull, or run the trial without the sweep")
    if not (Path(root) / SOURCE_OUT).is_file():
        return Failed(message="source: the sweep's data/source.json is not in the DVC cache")
    get_run_logger().info("source: pinned by the sweep (%s restored, not resolved again)", SOURCE_OUT)
    return Completed(name="Pinned", message="source: as the sweep resolved it")


@task(name="source", cache_policy=NO_CACHE)
def source_task(root: str, pinned: bool = False, pull: bool = False) -> Any:
    # always runs: resolves what data.source is now; download reruns only when that changed
    if pinned:
        return pinned_source(root)
    return run_and_publish("source", root, _source_artifact, pull=pull)


@task(name="download", retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=_no_retry_on_bad_data,
      cache_policy=NO_CACHE)
def download_task(root: str, pull: bool = False) -> Any:
    return run_stage("download", root, pull=pull)


@task(name="filter", cache_policy=NO_CACHE)
def filter_task(root: str, pull: bool = False) -> Any:
    return run_and_publish("filter", root, _filter_artifact, pull=pull)


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize_task(root: str, pull: bool = False) -> Any:
    return run_stage("tokenize", root, pull=pull)


@task(name="train", cache_policy=NO_CACHE)
def train_task(root: str, pull: bool = False) -> Any:
    # no retries: a failed run resumes from its last checkpoint on the next flow run;
    # the timeout (train.timeout_minutes) is enforced on the training process itself
    reporter = ArtifactProgress()
    token = progress_reporter.set(reporter)
    try:
        return run_and_publish("train", root, _train_artifact, pull=pull)
    finally:
        progress_reporter.reset(token)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(root: str, pull: bool = False) -> Any:
    return run_and_publish("evaluate", root, _metrics_artifact, pull=pull)


@task(name="register", cache_policy=NO_CACHE)
def register_task(root: str, pull: bool = False) -> Any:
    # with `pull` (uqa run --push) the registration event waits for the publication (publish_and_regate):
    # a version registered here is announced once the remotes hold it, never one that a re-gate replaced
    return run_and_publish("register", root, lambda at, ran_now: _register_artifact(at, ran_now and not pull),
                           pull=pull)


# one Prefect task per stage, chained in tasks/chain.py's order (dvc.yaml's, checked by tests/test_dvc_yaml.py)
_TASKS = {t.name: t for t in (source_task, download_task, filter_task, tokenize_task, train_task, evaluate_task,
                              register_task)}
assert set(_TASKS) == set(BY_NAME), f"a stage without a task, or a task without a stage: {set(_TASKS) ^ set(BY_NAME)}"
STAGE_TASKS = tuple(_TASKS[stage_name(m)] for m in STAGES)
