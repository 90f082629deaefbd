"""What a run shows in the Prefect UI: each stage's report as an artifact, training progress, the
registration (a link to the version and its lineage) and its event, an experiment's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from uqa import layout
from uqa.model.progress import TerminalProgress, describe_progress
from uqa.ops.jsonfile import read_json


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


def _source_artifact(root: Path, ran_now: bool = True) -> None:
    from tasks.source import source_markdown

    report = read_json(root / layout.report("source"))
    create_markdown_artifact(source_markdown(report), key="uqa-source",
                             description="What data.source resolved to (or which data was kept)")


def _filter_artifact(root: Path, ran_now: bool = True) -> None:
    report = read_json(root / layout.report("filter"))
    lines = ["# Filter report", "", "| split | rows in | kept | dropped (by reason) | answers stripped |",
             "|---|---:|---:|---|---:|"]
    for split in layout.SPLITS:
        r = report.get(split, {})
        dropped = ", ".join(f"{k}: {v}" for k, v in r.get("dropped", {}).items()) or "none"
        lines.append(f"| {split} | {r.get('rows_in')} | {r.get('rows_kept')} | {dropped} | {r.get('answers_stripped')} |")
    create_markdown_artifact("\n".join(lines), key="uqa-filter-report", description="Rows dropped by reason")


def epochs_markdown(report: dict[str, Any]) -> str:
    """Each evaluation of the training (EM/F1 scored as the evaluate stage scores, and the loss), the
    kept checkpoint marked."""
    history = report.get("eval_history") or []
    best = report.get("best_checkpoint") or ""
    best_metric = report.get("best_metric")
    shown = f"{best_metric:.4g}" if isinstance(best_metric, (int, float)) else "none"
    lines = ["# Validation at every epoch", "",
             f"The checkpoint kept is the best by **{report.get('metric_for_best_model')}** ({shown}).", "",
             "| epoch | step | exact | F1 | loss | kept |", "|---:|---:|---:|---:|---:|:---:|"]

    def number(value: Any, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for h in history:
        kept = "✓" if best.rstrip("/").endswith(f"checkpoint-{h.get('step')}") else ""
        lines.append(f"| {h.get('epoch', 0):g} | {h.get('step')} | {number(h.get('eval_exact'), 2)} | "
                     f"{number(h.get('eval_f1'), 2)} | {number(h.get('eval_loss'), 4)} | {kept} |")
    if not history:
        lines.append("| | | | | | no evaluation ran |")
    return "\n".join(lines)


def _train_artifact(root: Path, ran_now: bool = True) -> None:
    report = read_json(root / layout.report("train"))
    create_markdown_artifact(epochs_markdown(report), key="uqa-train-epochs",
                             description="Validation EM/F1 at every epoch; the kept checkpoint")


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
    lineage = (read_json(version_dir / layout.REGISTRATION_FILE) if version_dir else {}).get("lineage") or {}
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


def experiment_markdown(name: str, overrides: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = [f"# Experiment `{name}`", "",
             f"Overrides: `{json.dumps(overrides, ensure_ascii=False)}` (params.yaml itself is unchanged).", "",
             f"F1 {metrics.get('f1', float('nan')):.2f}, EM {metrics.get('exact_match', float('nan')):.2f} "
             f"on {metrics.get('n_questions')} questions. Not registered: an experiment is compared, not shipped.", "",
             f"`dvc exp show` lists it; `dvc exp apply {name}` brings its params and outputs into the workspace, "
             "then `uqa run` registers it through the promotion gate."]
    return "\n".join(lines)
