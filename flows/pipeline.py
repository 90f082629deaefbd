"""The Prefect flow: download -> filter -> tokenize -> train -> evaluate -> register.

Each task is a thin shell over the stage function that `dvc repro` runs (tasks/<stage>.py). A stage
that DVC reports up to date is skipped and shown as `Cached` in the UI; one that ran is recorded in
dvc.lock with `dvc commit`. Flow parameters override params.yaml sections; they are written into
params.yaml first (as `dvc exp run -S` does), so that dvc.lock records what really ran.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Completed, Failed  # noqa: E402

from uqa.atomic import read_json  # noqa: E402
from uqa.errors import TransientError, UserError  # noqa: E402
from uqa.params import PARAMS_FILE, apply_overrides, load_params  # noqa: E402
from uqa.stages import BY_NAME, dvc_checkout, dvc_commit, dvc_push, dvc_status, working_dir  # noqa: E402

BRIDGED_LOGGERS = ("tasks", "uqa", "flows", "transformers", "datasets", "accelerate")


class _RunLogBridge(logging.Handler):
    """Forward our and the libraries' log records to the Prefect run log (the UI's Logs tab).

    Records from threads without a run context (the reader of the training process's output) go
    to the flow run's logger."""

    def __init__(self, flow_logger, level: int = logging.INFO):
        super().__init__(level)
        self.flow_logger = flow_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            try:
                logger = get_run_logger()
            except Exception:  # no run context in this thread
                logger = self.flow_logger
            logger.log(record.levelno, "%s: %s", record.name, record.getMessage())
        except Exception:
            self.handleError(record)


def _bridge_logs() -> tuple[logging.Handler, dict[str, tuple[int, bool]]]:
    """Attach the bridge; our loggers stop propagating meanwhile (the run logger prints them once)."""
    handler = _RunLogBridge(get_run_logger(), level=logging.INFO)
    saved = {}
    for name in BRIDGED_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = (lg.level, lg.propagate)
        lg.addHandler(handler)
        if name in ("tasks", "uqa", "flows"):
            lg.setLevel(logging.INFO)
            lg.propagate = False
        elif lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
    return handler, saved


def _unbridge_logs(handler: logging.Handler, saved: dict[str, tuple[int, bool]]) -> None:
    for name, (level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.removeHandler(handler)
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


def run_stage(name: str, root: str, params_file: str = PARAMS_FILE) -> Any:
    """Skip the stage when DVC says it is up to date, else run it and `dvc commit` it."""
    logger = get_run_logger()
    root_path = Path(root)
    status = dvc_status(root_path, name)
    if not status:
        logger.info("%s: up to date in dvc.lock, skipped", name)
        return Completed(name="Cached", message=f"{name}: up to date in dvc.lock", data={"skipped": True})
    if _only_missing_outputs(status) and dvc_checkout(root_path, name):
        logger.info("%s: outputs restored from the DVC cache", name)
        return Completed(name="Cached", message=f"{name}: restored from the DVC cache", data={"skipped": True})
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


@task(name="download", retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=_no_retry_on_bad_data,
      cache_policy=NO_CACHE)
def download_task(root: str) -> Any:
    return run_stage("download", root)


@task(name="filter", cache_policy=NO_CACHE)
def filter_task(root: str) -> Any:
    result = run_stage("filter", root)
    _filter_artifact(Path(root))
    return result


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize_task(root: str) -> Any:
    return run_stage("tokenize", root)


@task(name="train", cache_policy=NO_CACHE)
def train_task(root: str) -> Any:
    # no retries: a failed run resumes from its last checkpoint on the next flow run;
    # the timeout (train.timeout_minutes) is enforced on the training process itself
    return run_stage("train", root)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(root: str) -> Any:
    result = run_stage("evaluate", root)
    _metrics_artifact(Path(root))
    return result


@task(name="register", cache_policy=NO_CACHE)
def register_task(root: str) -> Any:
    result = run_stage("register", root)
    _register_artifact(Path(root))
    return result


def _filter_artifact(root: Path) -> None:
    report = read_json(root / "reports/filter.json")
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


def _metrics_artifact(root: Path) -> None:
    metrics = read_json(root / "metrics/eval.json")
    create_markdown_artifact(metrics_markdown(metrics), key="uqa-metrics", description="EM/F1 on validation")
    errors = root / "reports/errors.md"
    if errors.exists():
        create_markdown_artifact(errors.read_text(encoding="utf-8"), key="uqa-errors", description="Error analysis")


def _register_artifact(root: Path) -> None:
    r = read_json(root / "reports/register.json")
    card = Path(r.get("model_card") or "")
    lines = [
        "# Registered model", "",
        f"- model: **{r.get('name')} {r.get('version')}**",
        f"- promoted to prod: **{'yes' if r.get('promoted') else 'no'}** ({r.get('reason')})",
        f"- prod version now: {r.get('prod_version')}",
        f"- path: `{(root / r['path']).resolve() if r.get('path') else '?'}`",
        f"- model card: `{(root / card).resolve() if r.get('model_card') else '?'}`",
    ]
    create_markdown_artifact("\n".join(lines), key="uqa-registration", description="Registry result")


@flow(name="uqa-pipeline")
def uqa_pipeline(project_dir: str = ".", overrides: dict[str, Any] | None = None,
                 push: bool = False) -> dict[str, Any]:
    """Run the pipeline in `project_dir`. `overrides`: {"train.epochs": 1} or {"train": {"epochs": 1}}."""
    logger = get_run_logger()
    handler, saved = _bridge_logs()
    root = Path(project_dir).resolve()
    try:
        params, changed = apply_overrides(root / PARAMS_FILE, overrides)
        if changed:
            logger.info("params.yaml updated with the flow's overrides: %s", overrides)
        r = str(root)
        stages: dict[str, str] = {}
        for stage_task in (download_task, filter_task, tokenize_task, train_task, evaluate_task, register_task):
            state = stage_task(r, return_state=True)
            stages[stage_task.name] = state.name
            if state.is_failed():
                logger.error("stopped: %s", state.message)
                return Failed(message=state.message)
        if push:
            _push(root)
        metrics = read_json(root / "metrics/eval.json")
        registration = read_json(root / "reports/register.json")
        return {"metrics": metrics, "registration": registration, "stages": stages}
    finally:
        _unbridge_logs(handler, saved)


def _push(root: Path) -> None:
    pushed = dvc_push(root)
    if pushed is None:
        get_run_logger().warning("push requested but no default DVC remote is configured (dvc remote add -d)")
    else:
        get_run_logger().info("dvc push: %s files", pushed)


if __name__ == "__main__":
    uqa_pipeline()
