"""The sweep flow: several settings tried as DVC experiments, the best one registered.

uqa-sweep: the data stages run once, in the project (every trial restores them from the shared DVC
cache); each trial is one child flow run of the pipeline with its overrides, i.e. one DVC experiment
(flows/pipeline.py, uqa/workspace/experiment.py): in this process one after another, or, with
`trial_deployment`, as runs of that deployment that a work pool's workers pick up, at most as many
at once as the pool / queue / concurrency limit allows. Each child run gets an idempotency key made
of the sweep's flow run and the trial's number, so a retried sweep never starts a trial twice. A
failed trial is reported and the sweep goes on. The results come back through DVC (`dvc exp show`),
never as in-memory results; the best trial by F1 (ties: the shorter run) is registered through the
promotion gate, from its experiment's outputs; the project's params.yaml is never changed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run
from prefect.states import Failed

from flows.artifacts import notify_registration, publish_registration
from flows.logbridge import run_log_bridge
from flows.pipeline import TRIAL_CLONE_ENV, uqa_pipeline
from flows.stages import STAGE_TASKS
from tasks.chain import DATA_STAGES
from uqa.errors import UserError
from uqa.ops.git import GIT_REMOTE
from uqa.ops.redact import strip_url_credentials
from uqa.ops.runtime import apply_runtime_defaults
from uqa.params.files import load_params
from uqa.params.overrides import deep_merge, overrides_to_nested, refuse_unsafe_overrides
from uqa.params.schema import PARAMS_FILE
from uqa.params.validation import params_from_dict
from uqa.workspace.dvc_ops import dvc_push, locked_workspace
from uqa.workspace.experiment import (
    experiment_name,
    experiment_results,
    publish_commit,
    pull_experiments,
    remote_url,
    restored_experiment,
    snapshot_commit,
    unpublish,
)

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def grid_trials(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, in the order the keys and values were given: [{'train.epochs': 1, ...}, ...]."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_range(spec: str) -> tuple[float, float, str]:
    """'1e-4:1e-2:log' -> (1e-4, 1e-2, 'log'); kinds: float (default), log, int."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise UserError(f"range {spec!r}: expected LOW:HIGH or LOW:HIGH:log or LOW:HIGH:int")
    kind = parts[2] if len(parts) == 3 else "float"
    if kind not in ("float", "log", "int"):
        raise UserError(f"range {spec!r}: the kind must be float, log or int, not {kind!r}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(f"range {spec!r}: LOW and HIGH must be numbers") from None
    if not low < high:
        raise UserError(f"range {spec!r}: LOW must be below HIGH")
    return low, high, kind


class RandomSearch:
    """Optuna's ask-and-tell over the given ranges (TPE: random at first, then guided by the F1 told)."""

    def __init__(self, ranges: dict[str, str], seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.distributions = {}
        for key, spec in ranges.items():
            low, high, kind = parse_range(spec)
            self.distributions[key] = (optuna.distributions.IntDistribution(int(low), int(high)) if kind == "int"
                                       else optuna.distributions.FloatDistribution(low, high, log=kind == "log"))
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self.pending: dict[int, Any] = {}

    def ask(self, number: int) -> dict[str, Any]:
        trial = self.study.ask(self.distributions)
        self.pending[number] = trial
        return dict(trial.params)

    def tell(self, number: int, f1: float | None) -> None:
        import optuna

        trial = self.pending.pop(number)
        if f1 is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, f1)


def pick_winner(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best F1 among the completed trials; on a tie the one that ran for less time."""
    done = [t for t in trials if t["state"] == "COMPLETED" and t.get("f1") is not None]
    return min(done, key=lambda t: (-t["f1"], t.get("duration_s") or 0.0)) if done else None


def sweep_markdown(trials: list[dict[str, Any]], winner: dict[str, Any] | None,
                   registration: dict[str, Any] | None) -> str:
    lines = ["# Sweep", "", "| trial | params | EM | F1 | duration | state | experiment |", "|---:|---|---:|---:|---:|---|---|"]
    for t in trials:
        em = f"{t['exact_match']:.2f}" if t.get("exact_match") is not None else "–"
        f1 = f"{t['f1']:.2f}" if t.get("f1") is not None else "–"
        mark = " **(winner)**" if winner is t else ""
        lines.append(f"| {t['number']}{mark} | `{json.dumps(t['overrides'])}` | {em} | {f1} | "
                     f"{t.get('duration_s', 0):.0f} s | {t['state']} | `{t.get('experiment') or '–'}` |")
    lines.append("")
    if winner is None:
        lines.append("No trial completed: nothing registered.")
    else:
        r = registration or {}
        lines.append(f"Winner: trial {winner['number']} (F1 {winner['f1']:.2f}), registered as "
                     f"{r.get('name')} {r.get('version')}: {'promoted to prod' if r.get('promoted') else 'not promoted'} "
                     f"({r.get('reason')}).")
    return "\n".join(lines)


def _flow_run_times(flow_run_ids: list[str]) -> dict[str, dict[str, Any]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = {str(i): client.read_flow_run(i) for i in flow_run_ids}
    return {i: {"name": r.name, "state": r.state_type.value if r.state_type else "UNKNOWN",
                "duration_s": r.total_run_time.total_seconds(), "message": r.state.message if r.state else ""}
            for i, r in runs.items()}


@dataclass
class RemoteTrials:
    """Trials on other machines: each clones the project at `commit` (published on `git_remote` as
    `ref`), pulls the data stages' outputs from the default DVC remote, and `dvc exp push`es its
    experiment back; the parent `dvc exp pull`s them."""

    git_remote: str
    url: str
    commit: str
    ref: str
    env: dict[str, str]  # the trial deployment's own job environment, which the trial's env extends


def _deployment_clones(trial_deployment: str) -> tuple[bool, dict[str, str]]:
    """Whether the deployment's pull steps clone the project (trials on other machines), and its env."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(trial_deployment)
    clones = any(any(key.endswith(".git_clone") for key in step) for step in deployment.pull_steps or [])
    env = (deployment.job_variables or {}).get("env") or {}
    return clones, {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}


def _publish_workspace(root: Path, git_remote: str, sweep_id: str, env: dict[str, str]) -> RemoteTrials:
    """The project as the data stages left it, for machines that clone it: a snapshot commit on the
    git remote, and the data stages' outputs on the default DVC remote."""
    url = remote_url(root, git_remote)
    commit = snapshot_commit(root, f"uqa-sweep {sweep_id}: the workspace the trials start from")
    ref = f"refs/uqa-sweeps/{sweep_id}"
    publish_commit(root, git_remote, commit, ref)
    pushed = dvc_push(root, targets=list(DATA_STAGES))
    if pushed is None:
        raise UserError(f"{root}: trials on other machines pull the tokenized data from the default DVC remote, "
                        "and none is configured (dvc remote add -d NAME URL, then commit .dvc/config)")
    get_run_logger().info("trials clone %s at %s (%s) and dvc pull the data (%s files pushed)", url, commit[:12],
                          ref, pushed)
    return RemoteTrials(git_remote, url, commit, ref, env)


@flow(name="uqa-sweep")
def uqa_sweep(project_dir: str = ".", grid: dict[str, list[Any]] | None = None, ranges: dict[str, str] | None = None,
              samples: int = 0, seed: int = 0, trial_deployment: str | None = None,
              git_remote: str = GIT_REMOTE) -> dict[str, Any]:
    """Try each setting of `grid` ({'train.learning_rate': [1e-3, 2e-3], ...}, every combination), or
    `samples` settings drawn from `ranges` ({'train.learning_rate': '1e-4:1e-2:log'}); register the best.
    When `trial_deployment`'s pull steps clone the project (`trial-remote`), the trials run wherever
    its workers are, from the project as published on `git_remote` and the default DVC remote."""
    apply_runtime_defaults()  # a deployment's run imports us in Prefect's engine: the stages' libraries come later
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    with run_log_bridge():
        try:
            if deployment.id:  # the grid came through the API: it may not choose code to run
                refuse_unsafe_overrides({**(grid or {}), **(ranges or {})}, f"deployment run {flow_run.get_name()}")
            base, search, planned = plan_trials(root, grid, ranges, samples, seed)
            sweep_id = str(flow_run.get_id() or f"local-{time.time_ns()}")
            clones, deployment_env = _deployment_clones(trial_deployment) if trial_deployment else (False, {})
            if clones:
                remote_url(root, git_remote)  # before any work: trials elsewhere need it
            remote = run_data_stages(root, sweep_id, git_remote if clones else None, deployment_env)
            try:
                trials = _run_trials(root, planned, sweep_id, trial_deployment, search, remote)
                winner = pick_winner(trials)
                registration = _register_winner(root, base, winner, remote) if winner else None
                if registration:
                    publish_registration(root, registration)
                    notify_registration(registration)
            finally:
                if remote is not None:  # the experiments' baseline is the project's HEAD, not this snapshot
                    with contextlib.suppress(UserError):
                        unpublish(root, remote.git_remote, remote.ref)
            create_markdown_artifact(strip_url_credentials(sweep_markdown(trials, winner, registration)),
                                     key="uqa-sweep", description="Every trial of this sweep and the winner")
            if winner:
                logger.info("winner: trial %d (%s), F1 %.2f", winner["number"], winner["overrides"], winner["f1"])
            return {"trials": trials, "winner": winner, "registration": registration}
        except UserError as exc:
            logger.error("%s", exc)
            return Failed(message=str(exc))


def plan_trials(root: Path, grid: dict[str, list[Any]] | None, ranges: dict[str, str] | None, samples: int,
                seed: int) -> tuple[Any, RandomSearch | None, list[dict[str, Any]]]:
    """(the project's params, the search that proposes trials (ranges) or None (grid), the trials'
    overrides); every trial's params are checked before anything runs."""
    if bool(grid) == bool(ranges and samples > 0):
        raise UserError("give either a grid, or ranges with samples > 0")
    base = load_params(root / PARAMS_FILE)
    search = RandomSearch(ranges or {}, seed) if ranges else None
    planned = grid_trials(grid) if grid else [search.ask(i) for i in range(samples)]
    for overrides in planned:
        params_from_dict(deep_merge(base.to_dict(), overrides_to_nested(overrides)), f"trial {overrides}")
    return base, search, planned


def run_data_stages(root: Path, sweep_id: str, git_remote: str | None,
                    deployment_env: dict[str, str]) -> RemoteTrials | None:
    """The data stages, once, in the project (every trial restores them from the DVC cache); with
    `git_remote` (trials on other machines) the workspace is then published for them to clone."""
    with locked_workspace(root, command="uqa-sweep (data stages)", flow_run=flow_run.get_name()):
        upstream: list[Any] = []
        for stage_task in (t for t in STAGE_TASKS if t.name in DATA_STAGES):
            state = stage_task(str(root), return_state=True, wait_for=upstream)
            upstream = [state]
            if state.is_failed():
                raise UserError(f"data stages failed, no trial started: {state.message}")
        if git_remote is None:
            return None
        return _publish_workspace(root, git_remote, sweep_id, deployment_env)


def _run_trials(root: Path, planned: list[dict[str, Any]], sweep_id: str, trial_deployment: str | None,
                search: RandomSearch | None, remote: RemoteTrials | None = None) -> list[dict[str, Any]]:
    logger = get_run_logger()
    trials = [{"number": i, "overrides": o, "state": "SCHEDULED"} for i, o in enumerate(planned)]
    run_ids: dict[int, str] = {}
    if trial_deployment is None:  # no work pool: in this process, one after another
        for t in trials:
            logger.info("trial %d/%d: %s", t["number"] + 1, len(trials), t["overrides"])
            state = uqa_pipeline(project_dir=str(root), overrides=overrides_to_nested(t["overrides"]),
                                 pin_source=_pins_source(t["overrides"]), return_state=True)
            run_ids[t["number"]] = str(state.state_details.flow_run_id)
            _record(root, t, run_ids[t["number"]], search)
        return trials
    from prefect.deployments import run_deployment

    for t in trials:  # submitted at once; the pool's workers and limits decide how many run together
        parameters: dict[str, Any] = {"project_dir": str(root), "overrides": overrides_to_nested(t["overrides"]),
                                      "pin_source": _pins_source(t["overrides"])}
        job_variables = None
        if remote is not None:  # a clone of its own at the sweep's commit; results pushed back
            parameters.update(project_dir=".", push=True)
            job_variables = trial_job_variables(remote, sweep_id, t["number"])
        child = run_deployment(
            trial_deployment, parameters=parameters, job_variables=job_variables,
            idempotency_key=f"uqa-sweep-{sweep_id}-trial-{t['number']}", timeout=0, as_subflow=True)
        run_ids[t["number"]] = str(child.id)
        logger.info("trial %d: flow run %s (%s)", t["number"], child.name, t["overrides"])
    waiting = set(run_ids)
    while waiting:
        time.sleep(5)
        info = _flow_run_times([run_ids[n] for n in waiting])
        for n in list(waiting):
            if info[run_ids[n]]["state"] in FINAL_STATES:
                waiting.discard(n)
                _record(root, trials[n], run_ids[n], search, remote)
    return trials


def trial_job_variables(remote: RemoteTrials, sweep_id: str, number: int) -> dict[str, Any]:
    """The job variables of a trial on another machine: where to clone from (never with credentials in the URL)."""
    return {"env": {**remote.env, "UQA_TRIAL_REPOSITORY": strip_url_credentials(remote.url),
                    "UQA_TRIAL_COMMIT": remote.commit, TRIAL_CLONE_ENV: f"uqa-trial-{sweep_id[:8]}-{number}"}}


def _pins_source(overrides: dict[str, Any]) -> bool:
    """Trials train on the data the sweep resolved (unless a trial varies the data source itself)."""
    return not any(key == "data" or key.startswith("data.") for key in overrides)


def _record(root: Path, trial: dict[str, Any], run_id: str, search: RandomSearch | None,
            remote: RemoteTrials | None = None) -> None:
    """Fill in a finished trial from its flow run (state, duration) and its DVC experiment (metrics)."""
    info = _flow_run_times([run_id])[run_id]
    trial.update(state=info["state"], duration_s=info["duration_s"], flow_run=info["name"], flow_run_id=run_id)
    if remote is not None and info["state"] == "COMPLETED":
        try:  # its commit (params, metrics); the winner's models come later
            pull_experiments(root, remote.git_remote, [experiment_name(info["name"])], outputs=False)
        except UserError as exc:
            info["message"] = f"its experiment could not be fetched from {remote.git_remote}: {exc}"
    results = experiment_results(root).get(experiment_name(info["name"])) if info["state"] == "COMPLETED" else None
    if results:
        trial.update(experiment=info["name"], f1=results["metrics"].get("f1"),
                     exact_match=results["metrics"].get("exact_match"), rev=results["rev"])
    else:
        trial["message"] = info["message"]
        get_run_logger().warning("trial %d %s: %s", trial["number"], info["state"].lower(), info["message"])
    if search is not None:
        search.tell(trial["number"], trial.get("f1"))


def _register_winner(root: Path, base: Any, winner: dict[str, Any], remote: RemoteTrials | None = None) -> dict[str, Any]:
    from tasks.register import register

    params = params_from_dict(deep_merge(base.to_dict(), overrides_to_nested(winner["overrides"])))
    if remote is not None:  # the winner's outputs (model, metrics) from the DVC remote into the cache
        pull_experiments(root, remote.git_remote, [winner["experiment"]], outputs=True)
    with locked_workspace(root, command="uqa-sweep (register)", flow_run=flow_run.get_name()), \
            restored_experiment(root, winner["experiment"], winner["rev"]) as run_dir:
        experiment = {"name": winner["experiment"], "rev": winner.get("rev"), "flow_run_id": winner.get("flow_run_id"),
                      "flow_run_name": winner.get("flow_run")}
        return register(params, root=root, run_dir=run_dir, experiment=experiment)
