"""The Prefect flow `uqa-pipeline`: source -> download -> filter -> tokenize -> train -> evaluate ->
register, each stage a Prefect task over the function `dvc repro` runs (flows/stages.py).

A run reads params.yaml as it is and holds the workspace (DVC's repo lock) from start to end; one with
`overrides` is a DVC experiment in a worktree of its own, whose copy of params.yaml gets them (as
`dvc exp run -S` does): the project's params.yaml is never edited. With `push`, the remotes are the
record (flows/remote.py); what the UI shows of a run is in flows/artifacts.py, its log in
flows/logbridge.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.runtime import deployment, flow_run
from prefect.states import Failed

from flows.artifacts import experiment_markdown
from flows.logbridge import run_log_bridge
from flows.remote import publish_and_regate, sync_task
from flows.stages import STAGE_TASKS, register_task, source_task
from uqa import layout
from uqa.errors import UserError, first_line
from uqa.ops.git import GIT_REMOTE
from uqa.ops.jsonfile import read_json
from uqa.ops.redact import strip_url_credentials
from uqa.ops.runtime import apply_runtime_defaults
from uqa.params.files import apply_overrides, load_params, read_raw
from uqa.params.overrides import deep_merge, overrides_dict, overrides_model, refuse_unsafe_overrides
from uqa.params.schema import PARAMS_FILE
from uqa.params.validation import params_from_dict, plain
from uqa.registry.publish import require_remotes
from uqa.workspace.dvc_ops import locked_workspace, require_stage_params
from uqa.workspace.experiment import experiment_name, experiment_workspace, push_experiment, save_experiment

ParamsOverrides = overrides_model()  # the flow's `overrides` parameter type (its schema in the Prefect API)


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
    require_stage_params(root, params)  # and every param a stage records, which DVC checks only after it
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
        _retention(root, params.register.keep_last)
    published = None
    if remote:
        published = publish_and_regate(root, params.register.name, stages, upstream)
        if isinstance(published, State):
            return published
    metrics = read_json(root / layout.METRICS_FILE)
    registration = read_json(root / layout.report("register")) if register else {}
    result = {"metrics": metrics, "registration": registration, "stages": stages}
    if published is not None:
        result["published"] = published
    return result


def _retention(root: Path, keep_last: int | None) -> None:
    """register.keep_last for experiments and the DVC cache. The run's work is done and recorded:
    a retention failure is reported in the run log, it does not fail the run."""
    from uqa.registry.retention import prune_experiments_and_cache

    try:
        prune_experiments_and_cache(root, keep_last)
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


if __name__ == "__main__":
    from prefect.context import refresh_global_settings_context

    from uqa.ops.runtime import apply_runtime_defaults

    apply_runtime_defaults()  # quiet, no telemetry, patient first start (the uqa CLI does this before importing us)
    refresh_global_settings_context()
    uqa_pipeline()
