"""The Prefect flow: download -> filter -> tokenize -> train -> evaluate -> register.

Each task is a thin shell over the stage function that `dvc repro` runs (tasks/<stage>.py). A stage
that DVC reports up to date is skipped and shown as `Cached` in the UI; one that ran is recorded in
dvc.lock with `dvc commit`. A run reads params.yaml as it is; one with `overrides` is a DVC experiment
in a worktree of its own, whose copy of params.yaml gets them (as `dvc exp run -S` does): the
project's params.yaml is never edited.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import allow_failure, flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed

from tasks.chain import BY_NAME, STAGES, stage_name
from uqa import layout
from uqa.errors import TransientError, UserError, first_line
from uqa.model.progress import TerminalProgress, describe_progress, progress_reporter
from uqa.ops.git import GIT_REMOTE
from uqa.ops.jsonfile import read_json
from uqa.ops.redact import RedactUrlCredentials, strip_url_credentials
from uqa.ops.runtime import apply_runtime_defaults
from uqa.params.files import apply_overrides, load_params, read_raw
from uqa.params.overrides import deep_merge, overrides_dict, overrides_model, refuse_unsafe_overrides
from uqa.params.schema import PARAMS_FILE
from uqa.params.validation import params_from_dict, plain
from uqa.registry.publish import PublishConflict, publish, require_remotes, sync_from_remotes
from uqa.workspace.dvc_ops import (
    dvc_checkout,
    dvc_commit,
    dvc_repo,
    dvc_restore,
    dvc_status,
    locked_workspace,
    working_dir,
)
from uqa.workspace.experiment import experiment_name, experiment_workspace, push_experiment, save_experiment

ParamsOverrides = overrides_model()  # the flow's `overrides` parameter type (its schema in the Prefect API)

BRIDGED_LOGGERS = ("tasks", "uqa", "flows", "transformers", "datasets", "accelerate")


class _RunLogBridge(logging.Handler):
    """Forward our and the libraries' log records to the Prefect run log (the UI's Logs tab).

    Records from threads without a run context (the reader of the training process's output) go
    to the flow run's logger."""

    def __init__(self, flow_logger, level: int = logging.INFO):
        super().__init__(level)
        self.flow_logger = flow_logger
        self.addFilter(RedactUrlCredentials())  # no user:token@ of a URL reaches the run log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            try:
                logger = get_run_logger()
            except Exception:  # no run context in this thread
                logger = self.flow_logger
            logger.log(record.levelno, "%s: %s", record.name, record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def run_log_bridge() -> Iterator[None]:
    """Our and the libraries' log records go to this flow run's log meanwhile (see _RunLogBridge)."""
    handler, saved = _bridge_logs()
    try:
        yield
    finally:
        _unbridge_logs(handler, saved)


def _bridge_logs() -> tuple[logging.Handler, dict[str, tuple[int, bool, list[logging.Handler]]]]:
    """Attach the bridge; our loggers stop propagating meanwhile (the run logger prints them once).
    In a subflow (a sweep's trial) the parent's bridge is detached meanwhile: each record goes to
    the innermost run only, once."""
    handler = _RunLogBridge(get_run_logger(), level=logging.INFO)
    saved = {}
    for name in BRIDGED_LOGGERS:
        lg = logging.getLogger(name)
        outer = [h for h in lg.handlers if isinstance(h, _RunLogBridge)]
        for h in outer:
            lg.removeHandler(h)
        saved[name] = (lg.level, lg.propagate, outer)
        lg.addHandler(handler)
        if name in ("tasks", "uqa", "flows"):
            lg.setLevel(logging.INFO)
            lg.propagate = False
        elif lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
    return handler, saved


def _unbridge_logs(handler: logging.Handler, saved: dict[str, tuple[int, bool, list[logging.Handler]]]) -> None:
    for name, (level, propagate, outer) in saved.items():
        lg = logging.getLogger(name)
        lg.removeHandler(handler)
        for h in outer:
            lg.addHandler(h)
        lg.setLevel(level)
        lg.propagate = propagate


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
        return run_stage("train", root, pull=pull)
    finally:
        progress_reporter.reset(token)


class ArtifactProgress(TerminalProgress):
    """Training progress as a Prefect progress artifact (step/total, ETA, last loss) and, on a
    terminal, as a bar. Called from the supervising thread, which carries the task run's context."""

    def __init__(self) -> None:
        super().__init__()
        self.artifact_id = None

    def __call__(self, p: dict[str, Any]) -> None:
        super().__call__(p)
        percent = 100.0 * p.get("step", 0) / max(1, p.get("total") or 1)
        text = f"Training: {describe_progress(p)}"
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(percent, key="uqa-train-progress", description=text)
            else:
                update_progress_artifact(self.artifact_id, percent, description=text)
        except Exception as exc:  # the UI missing an update must never stop training
            get_run_logger().debug("progress artifact not updated: %s", exc)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(root: str, pull: bool = False) -> Any:
    return run_and_publish("evaluate", root, _metrics_artifact, pull=pull)


@task(name="register", cache_policy=NO_CACHE)
def register_task(root: str, pull: bool = False) -> Any:
    # with `pull` (uqa run --push) the registration event waits for the publication (_publish_and_regate):
    # a version registered here is announced once the remotes hold it, never one that a re-gate replaced
    return run_and_publish("register", root, _register_artifact_unannounced if pull else _register_artifact,
                           pull=pull)


# one Prefect task per stage, chained in tasks/chain.py's order (dvc.yaml's, checked by tests/test_dvc_yaml.py)
_TASKS = {t.name: t for t in (source_task, download_task, filter_task, tokenize_task, train_task, evaluate_task,
                              register_task)}
assert set(_TASKS) == set(BY_NAME), f"a stage without a task, or a task without a stage: {set(_TASKS) ^ set(BY_NAME)}"
STAGE_TASKS = tuple(_TASKS[stage_name(m)] for m in STAGES)


def _source_artifact(root: Path, ran_now: bool = True) -> None:
    from tasks.source import source_markdown

    report = read_json(root / layout.report("source"))
    create_markdown_artifact(source_markdown(report), key="uqa-source",
                             description="What data.source resolved to (or which data was kept)")


def _filter_artifact(root: Path, ran_now: bool = True) -> None:
    report = read_json(root / layout.report("filter"))
    lines = ["# Filter report", "", "| split | rows in | kept | dropped (by reason) | answers stripped |",
             "|---|---:|---:|---|---:|"]
    for split in ("train", "validation"):
        r = report.get(split, {})
        dropped = ", ".join(f"{k}: {v}" for k, v in r.get("dropped", {}).items()) or "none"
        lines.append(f"| {split} | {r.get('rows_in')} | {r.get('rows_kept')} | {dropped} | {r.get('answers_stripped')} |")
    create_markdown_artifact("\n".join(lines), key="uqa-filter-report", description="Rows dropped by reason")


def metrics_markdown(metrics: dict[str, Any]) -> str:
    rows = [("exact match", "exact_match", "urdu_exact_match"), ("F1", "f1", "urdu_f1")]
    lines = ["# Evaluation metrics", "", "| metric | official SQuAD v2 | Urdu-normalized |", "|---|---:|---:|"]
    for label, official, urdu in rows:
        lines.append(f"| {label} | {metrics.get(official, float('nan')):.2f} | {metrics.get(urdu, float('nan')):.2f} |")
    for key in ("HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]:.4g} | |")
    lines += ["", f"{metrics.get('n_questions')} questions ({metrics.get('mode')})."]
    return "\n".join(lines)


def _metrics_artifact(root: Path, ran_now: bool = True) -> None:
    metrics = read_json(root / layout.METRICS_FILE)
    create_markdown_artifact(metrics_markdown(metrics), key="uqa-metrics", description="EM/F1 on validation")
    errors = root / layout.ERRORS
    if errors.exists():
        create_markdown_artifact(errors.read_text(encoding="utf-8"), key="uqa-errors", description="Error analysis")


def _register_artifact(root: Path, ran_now: bool = True) -> None:
    r = read_json(root / layout.report("register"))
    publish_registration(root, r)
    if ran_now:  # a register stage DVC found up to date registered nothing now: no new registration event
        notify_registration(r)


def _register_artifact_unannounced(root: Path, ran_now: bool = True) -> None:
    publish_registration(root, read_json(root / layout.report("register")))


def notify_registration(r: dict[str, Any]) -> None:
    """The `uqa.model.registered` event (`uqa alerts` notifies on it); a failure to send is a warning,
    never a failed run: the version is registered either way."""
    from uqa.ops.alerts import emit_registered

    try:
        emit_registered(r)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("registration event not sent (%s: %s)", type(exc).__name__, exc)


def publish_registration(root: Path, r: dict[str, Any]) -> None:
    """The registration in the UI: a link artifact to the version's directory and a summary with its lineage."""
    card = Path(r.get("model_card") or "")
    version_dir = (root / r["path"]).resolve() if r.get("path") else None
    if version_dir is not None:
        create_link_artifact(version_dir.as_uri(), link_text=f"{r.get('name')}@{r.get('version')}",
                             key="uqa-registered-version", description="The registered version's files")
    lineage = (read_json(version_dir / "registration.json") if version_dir else {}).get("lineage") or {}
    code, run = lineage.get("code") or {}, lineage.get("run") or {}
    lines = [
        "# Registered model", "",
        f"- model: **[{r.get('name')}@{r.get('version')}]({version_dir.as_uri() if version_dir else ''})**"
        f" (`uqa registry show {r.get('name')}@{r.get('version')}`)",
        f"- code: commit `{code.get('commit')}`" + (" + uncommitted changes" if code.get("dirty") else ""),
        f"- made by: flow run `{run.get('flow_run_name')}`" + (
            f", DVC experiment `{run['experiment'].get('name')}`" if run.get("experiment") else ""),
        f"- promoted to prod: **{'yes' if r.get('promoted') else 'no'}** ({r.get('reason')})",
        f"- prod version now: {r.get('prod_version')}",
        f"- path: `{(root / r['path']).resolve() if r.get('path') else '?'}`",
        f"- model card: `{(root / card).resolve() if r.get('model_card') else '?'}`",
    ]
    create_markdown_artifact("\n".join(lines), key="uqa-registration", description="Registry result")


@flow(name="uqa-pipeline")
def uqa_pipeline(project_dir: str = ".", overrides: ParamsOverrides | None = None,
                 push: bool = False, wait_for_lock_minutes: float = 0.0, pin_source: bool = False) -> dict[str, Any]:
    """Run the pipeline in `project_dir` with its params.yaml as it is.

    With `overrides` (e.g. {"train": {"epochs": 1}}; typed by the params schema, so the UI's run form
    shows every section with its fields and defaults and rejects bad values) the run is a DVC experiment
    named after this flow run, in its own worktree sharing the DVC cache (uqa/workspace/experiment.py):
    params.yaml is never edited, and nothing is registered. A plain run holds the workspace (DVC's
    repo lock) from start to end: another run, `dvc repro` or `dvc exp run` there fails at once, or
    this run waits up to `wait_for_lock_minutes` for them, saying who holds it.

    `push` makes the remotes the record (uqa/registry/publish.py): the registry and DVC's run-cache come from the git
    remote `origin` and the default DVC remote first, and the run's outputs, run-cache, registry branch and
    GTO tags go to them at the end (an experiment: `dvc exp push origin NAME`);
    `pin_source` (a sweep's trials) keeps data.source as the run's data/source.json recorded it."""
    apply_runtime_defaults()  # a deployment's run imports us in Prefect's engine: the stages' libraries come later
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    with run_log_bridge():
        try:
            nested = overrides_dict(overrides)
            if nested and deployment.id:  # from the API (run form, deployment run): no code choices
                refuse_unsafe_overrides(nested, f"deployment run {flow_run.get_name()}")
            if nested:
                return _run_experiment(root, nested, push, pin_source)
            with locked_workspace(root, wait_s=wait_for_lock_minutes * 60, command="uqa-pipeline flow run",
                                  flow_run=flow_run.get_name()):
                return _run_stages(root, push)
        except UserError as exc:  # a busy workspace, bad overrides, no git repository: one clear message
            logger.error("%s", exc)
            return Failed(message=str(exc))


def _run_stages(root: Path, push: bool, register: bool = True, pin_source: bool = False) -> Any:
    """The stages in order. With `push` (a plain run: uqa run --push), the remotes are the record: the
    registry and DVC's run-cache come from them first, and what the run made goes to them at the end."""
    logger = get_run_logger()
    params = load_params(root / PARAMS_FILE)  # every mistyped param, before any stage does work
    r = str(root)
    remote = push and register
    upstream: list[State] = []
    if remote:
        require_remotes(root, GIT_REMOTE)  # before any work: which remote to add, in one line
        sync = sync_task(r, params.register.name, return_state=True)
        if sync.is_failed():
            return Failed(message=sync.message)
        upstream = [sync]
    stages: dict[str, str] = {}
    for stage_task in STAGE_TASKS:
        if stage_task is register_task and not register:
            stages[stage_task.name] = "Skipped (experiment)"
            continue
        # wait_for records the previous stage as this one's upstream: the UI draws the chain
        extra = {"pinned": True} if stage_task is source_task and pin_source else {}
        state = stage_task(r, **extra, pull=remote, return_state=True, wait_for=upstream)
        upstream = [state]
        stages[stage_task.name] = state.name
        if state.is_failed():
            logger.error("stopped: %s", state.message)
            return Failed(message=state.message)
    if register:  # retention (register.keep_last): old experiments and the DVC cache, with the workspace held
        _retention(root)
    published = None
    if remote:
        published = _publish_and_regate(root, params.register.name, stages, upstream)
        if isinstance(published, State):
            return published
    metrics = read_json(root / layout.METRICS_FILE)
    registration = read_json(root / layout.report("register")) if register else {}
    result = {"metrics": metrics, "registration": registration, "stages": stages}
    if published is not None:
        result["published"] = published
    return result


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


def _publish_and_regate(root: Path, name: str, stages: dict[str, str], upstream: list[State]) -> Any:
    """Publish; when another machine published first, take its registry and register this run's model
    again, gated against the prod that is current now, then publish again (uqa/registry/publish.py)."""
    logger = get_run_logger()
    r = str(root)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        state = publish_task(r, name, return_state=True, wait_for=upstream)
        if state.is_completed():
            published = state.result()
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


def _retention(root: Path) -> None:
    """register.keep_last for experiments and the DVC cache. The run's work is done and recorded:
    a retention failure is reported in the run log, it does not fail the run."""
    from uqa.registry.retention import prune_experiments_and_cache

    try:
        prune_experiments_and_cache(root, load_params(root / PARAMS_FILE).register.keep_last)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning("retention (register.keep_last) did not finish: %s: %s; the next run tries "
                                 "again", type(exc).__name__, first_line(exc))


def _run_experiment(root: Path, overrides: dict[str, Any], push: bool, pin_source: bool = False) -> Any:
    logger = get_run_logger()
    params_from_dict(deep_merge(plain(read_raw(root / PARAMS_FILE)), overrides),
                     f"{root / PARAMS_FILE} (with overrides)")  # a bad override fails before any work
    name = experiment_name(flow_run.get_name() or "uqa-exp")
    logger.info("overrides %s: running as DVC experiment %r in its own workspace; %s is not changed",
                overrides, name, root / PARAMS_FILE)
    with experiment_workspace(root, name) as workspace:
        apply_overrides(workspace / PARAMS_FILE, overrides)
        with locked_workspace(workspace, command=f"uqa-pipeline experiment {name}", flow_run=name):
            result = _run_stages(workspace, push=False, register=False, pin_source=pin_source)
        if isinstance(result, State):
            return result
        save_experiment(workspace, name, [t.name for t in STAGE_TASKS if t is not register_task])
    result["experiment"] = name
    if push:  # e.g. a sweep's trial on another machine: the results go back through git and DVC
        push_experiment(root, name, GIT_REMOTE)  # the remote a clone (a trial's pull step) was made from
        logger.info("dvc exp push %s %s: the experiment's commit is on the git remote, its outputs on the "
                    "default DVC remote", GIT_REMOTE, name)
        _remove_trial_clone(root)
    create_markdown_artifact(strip_url_credentials(experiment_markdown(name, overrides, result["metrics"])),
                             key="uqa-experiment",
                             description="This run as a DVC experiment")
    logger.info("saved as DVC experiment %r: `dvc exp show` lists it, `dvc exp apply %s` brings it into the "
                "workspace", name, name)
    return result


TRIAL_CLONE_ENV = "UQA_TRIAL_CLONE_DIR"  # set by uqa-sweep for its trials on other machines


def _remove_trial_clone(root: Path) -> None:
    """A sweep's trial on another machine ran in a clone made for it alone (the `trial-remote`
    deployment's pull step, named by the sweep): once its experiment is pushed, the clone (with its
    DVC cache of data and checkpoints) is only disk space on the worker."""
    if os.environ.get(TRIAL_CLONE_ENV) != root.name or not (root / ".git").is_dir():
        return
    os.chdir(root.parent)
    shutil.rmtree(root, ignore_errors=True)
    get_run_logger().info("removed this trial's clone %s (its experiment is pushed)", root)


def experiment_markdown(name: str, overrides: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = [f"# Experiment `{name}`", "",
             f"Overrides: `{json.dumps(overrides, ensure_ascii=False)}` (params.yaml itself is unchanged).", "",
             f"F1 {metrics.get('f1', float('nan')):.2f}, EM {metrics.get('exact_match', float('nan')):.2f} "
             f"on {metrics.get('n_questions')} questions. Not registered: an experiment is compared, not shipped.", "",
             f"`dvc exp show` lists it; `dvc exp apply {name}` brings its params and outputs into the workspace, "
             "then `uqa run` registers it through the promotion gate."]
    return "\n".join(lines)


if __name__ == "__main__":
    from prefect.context import refresh_global_settings_context

    from uqa.ops.runtime import apply_runtime_defaults

    apply_runtime_defaults()  # quiet, no telemetry, patient first start (the uqa CLI does this before importing us)
    refresh_global_settings_context()
    uqa_pipeline()
