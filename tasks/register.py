"""Stage `register`: version the trained model in the registry, promote it to prod if it earns it.

inputs:  models/final, metrics/eval.json, reports/download.json, reports/train.json; params register
outputs: registry/ (persist: every registered version, see uqa/registry/store.py), reports/register.json

Promotion gate: F1 >= register.min_f1 and >= the F1 of the model now in prod. A model that fails the
gate is still registered (its version, card and metrics are kept), but prod stays where it was.
The gate fails closed: when the registry is inconsistent (Registry.verified_stage) or metrics/eval.json
has no F1, the stage stops with a UserError rather than promote on a guess.

Hub push: a promoted version's index entry records `hub: {repo_id, pushed, url, error}`. A rerun with the
same weights retries a push that is not recorded as done (the registration itself is already complete).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.errors import DataError, UserError
from uqa.model.settings import EVAL_QUESTIONS_FILE, INFERENCE_FILE, registry_settings, weights_sha256
from uqa.ops.atomic import atomic_dir, atomic_write_json
from uqa.ops.jsonfile import read_json
from uqa.params.schema import PARAMS_FILE, Params
from uqa.registry import lineage, retention
from uqa.registry.evalset import prod_rescorer, widget_example, write_eval_questions
from uqa.registry.gate import decide, regate_pending, require_metrics_of, verify_pending_version
from uqa.registry.history import utc_text
from uqa.registry.hub_push import hub_done, push_and_record
from uqa.registry.model_card import model_card
from uqa.registry.store import PROD, Registry, RegistryInconsistent, next_version

log = logging.getLogger(__name__)

MODEL_DIR = layout.MODEL_DIR
METRICS_FILE = layout.METRICS_FILE
DOWNLOAD_REPORT = layout.report("download")
TRAIN_REPORT = layout.report("train")
REPORT = layout.report("register")
EXAMPLES = layout.VALIDATION_EXAMPLES  # the evaluation set, which the version records a sample of
MODEL_FILES_SKIP = {"training_args.bin"}  # pickled Python objects do not belong in a shipped model


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_metrics(metrics_file: Path) -> tuple[dict[str, Any], float]:
    """metrics/eval.json and its F1: without a real F1 the gate cannot be applied, so stop (never default 0)."""
    rerun = "rerun the evaluate stage (`dvc repro evaluate`)"
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{metrics_file} is unreadable ({exc}): {rerun}") from None
    f1 = metrics.get("f1") if isinstance(metrics, dict) else None
    if not isinstance(f1, (int, float)) or isinstance(f1, bool) or not math.isfinite(f1):
        raise DataError(f"{metrics_file} has no numeric 'f1' (got {f1!r}), which the promotion gate needs: {rerun}")
    return metrics, float(f1)


def _tag(registry: Registry, entry: dict[str, Any]) -> None:
    """Give an index record its GTO version tag (and prod assignment); idempotent."""
    version = entry["version"]
    vdir = registry.version_dir(version)
    if version not in registry.gto_versions():
        files = {f"{registry.name}/{version}/{n}": vdir / n for n in ("README.md", layout.REGISTRATION_FILE)}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise RegistryInconsistent(
                f"{registry.index_path} records {version} with GTO tags pending, but {', '.join(missing)} "
                f"is missing: restore the registry (`dvc pull registry`) and run again")
        registry.git_register(version, files, message=json.dumps(lineage.annotation(entry), ensure_ascii=False))
    if PROD in entry.get("stages", []) and registry.stage_version(PROD) != version:
        registry.git_promote(version, entry.get("reason", ""))
    entry["gto"] = "tagged"


def finish_pending_tags(registry: Registry, index: dict[str, Any], min_f1: float = 0.0) -> None:
    """Tag the versions a killed run recorded but did not tag: each one verified first (its directory
    holds the weights its record names) and its promotion gated again against what GTO says is in
    prod now; a promotion that no longer passes is withdrawn, never assigned."""
    pending = [e for e in index["versions"] if e.get("gto") == "pending"]
    if not pending or not registry.uses_git:
        return
    for entry in pending:
        log.warning("register: %s %s was recorded but a run stopped before tagging it; verifying and tagging it now",
                    registry.name, entry["version"])
        verify_pending_version(registry, entry)
        if PROD in entry.get("stages", []):
            regate_pending(registry, index, entry, min_f1)
        _tag(registry, entry)
    atomic_write_json(registry.index_path, index)


def register(params: Params, root: Path = Path("."), model_dir: Path = MODEL_DIR,
             metrics_file: Path = METRICS_FILE, run_dir: Path | None = None,
             experiment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register models/final of `run_dir` (default: `root`, the project whose registry this is; a
    sweep registers its winning experiment's outputs from that experiment's workspace, and names that
    experiment in `experiment` ({name, rev, flow_run_id, flow_run_name}) for the version's lineage)."""
    root = Path(root)
    run_dir = Path(run_dir) if run_dir is not None else root
    model_dir, metrics_file = run_dir / model_dir, run_dir / metrics_file
    for dep in (model_dir, metrics_file):
        if not dep.exists():
            raise UserError(f"{dep} is missing: run the train and evaluate stages first")
    cfg = params.register
    metrics, f1 = read_metrics(metrics_file)
    digest = weights_sha256(model_dir)
    require_metrics_of(metrics, digest, metrics_file, model_dir)  # never metrics of other weights
    registry = Registry(root, cfg.name)
    index = registry.index()
    finish_pending_tags(registry, index, cfg.min_f1)  # a run killed between its index record and its GTO tags
    prod, prod_record = registry.verified_stage(PROD)  # RegistryInconsistent: stop, promote nothing

    latest = index["versions"][-1] if index["versions"] else None
    if latest and latest.get("weights_sha256") == digest:
        report = _already_registered(registry, index, latest, cfg, prod)
    else:
        promote, reason = decide(f1, cfg.min_f1, prod, prod_record, metrics,  # the gate: uqa/registry/gate.py
                                 prod_rescorer(registry, prod, params, metrics, run_dir, root))
        # never a number in use: not one in the index, in GTO's tags, or a directory in the store
        version = next_version([v["version"] for v in index["versions"]] + registry.gto_versions()
                               + registry.version_dirs())
        record = _version_record(version, digest, params, metrics, promote, reason)
        record["gate"] = {"prod": prod, "min_f1": cfg.min_f1}  # what the decision was made against
        prod_f1 = prod_record["metrics"].get("f1") if prod_record else None
        record["lineage"] = lineage.collect(root, run_dir, params, record["metrics"], experiment=experiment, promotion={
            "promoted": promote, "reason": reason, "prod_before": prod, "prod_f1": prod_f1,
            "f1_change": round(f1 - prod_f1, 4) if prod_f1 is not None else None})
        card = model_card(cfg.name, version, params, metrics, read_json(run_dir / DOWNLOAD_REPORT),
                          read_json(run_dir / TRAIN_REPORT), promote, reason, lineage=record["lineage"],
                          widget=widget_example(run_dir / EXAMPLES))
        _write_version(registry, version, model_dir, metrics, digest, card, record, run_dir / EXAMPLES)
        hub_url = _index_tag_and_push(registry, index, record, cfg)
        report = {"name": cfg.name, "version": version, "registered": True, "promoted": promote, "reason": reason,
                  "prod_version": version if promote else prod, "path": str(registry.version_dir(version)),
                  "model_card": str(registry.version_dir(version) / "README.md"), "gto": registry.uses_git,
                  "hub_url": hub_url, "f1": f1, "prod_before": prod,
                  "prod_f1": record["lineage"]["promotion"]["prod_f1"],
                  "f1_change": record["lineage"]["promotion"]["f1_change"]}
        log.info("register: %s %s %s (%s)", cfg.name, version, "promoted to prod" if promote else "not promoted",
                 reason)
    # retention: the registered run's checkpoints, and versions beyond register.keep_last (uqa/registry/retention.py)
    report["checkpoint_bytes_removed"] = retention.remove_checkpoints(run_dir)
    report["pruned"] = retention.prune_versions(registry, cfg.keep_last)
    atomic_write_json(root / REPORT, report)
    return report


def _already_registered(registry: Registry, index: dict[str, Any], latest: dict[str, Any], cfg,
                        prod: str | None) -> dict[str, Any]:
    """These weights are the latest version already: nothing new; a Hub push it still owes is retried."""
    version = latest["version"]
    hub_url = (latest.get("hub") or {}).get("url")
    # a push that failed (or never ran) after this version reached prod: finish it now
    if cfg.push_to_hub and prod == version and not hub_done(latest, cfg.hub_repo_id):
        log.info("register: %s %s is registered; retrying its Hub push", cfg.name, version)
        hub_url = push_and_record(registry, index, latest, cfg.hub_repo_id, cfg.hub_private)
    reason = f"these weights are already registered as {version}"
    log.info("register: %s", reason)
    return {"name": cfg.name, "version": version, "registered": False, "promoted": prod == version,
            "reason": reason, "prod_version": prod, "path": str(registry.version_dir(version)), "hub_url": hub_url}


RECORD_METRICS = ("exact_match", "f1", "urdu_exact_match", "urdu_f1", "n_questions", "mode", "no_answer_threshold",
                  "eval_set", "tuning")  # eval_set, mode and tuning.tune_fraction: what the F1 is comparable with


def _version_record(version: str, digest: str, params: Params, metrics: dict[str, Any], promote: bool,
                    reason: str) -> dict[str, Any]:
    return {
        "version": version,
        "weights_sha256": digest,
        "metrics": {k: metrics[k] for k in RECORD_METRICS if k in metrics},
        "base_model": params.model.name if params.model.init == "pretrained" else "scratch",
        "data_source": params.data.source,
        "promoted": promote,
        "reason": reason,
        "registered_at": utc_text(datetime.now(timezone.utc)),  # the history's date outside git (GTO's tags in git)
    }


def _write_version(registry: Registry, version: str, model_dir: Path, metrics: dict[str, Any], digest: str,
                   card: str, record: dict[str, Any], examples_dir: Path | None = None) -> None:
    """registry/<name>/<version>/: the model files, its inference settings, card and record, and a sample
    of the questions it was evaluated on (what `uqa serve --backend onnx` checks its answers on), atomically."""
    with atomic_dir(registry.version_dir(version)) as tmp:
        if examples_dir is not None:
            write_eval_questions(examples_dir, tmp / EVAL_QUESTIONS_FILE)
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and f.name not in MODEL_FILES_SKIP:
                _link_or_copy(f, tmp / f.name)
        # train's windowing + what evaluate applied (n_best, max_answer_length, no-answer threshold):
        # a new file, renamed into place, so the hard-linked models/final/uqa_inference.json is untouched
        atomic_write_json(tmp / INFERENCE_FILE, registry_settings(model_dir, metrics, digest))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        atomic_write_json(tmp / layout.REGISTRATION_FILE, record)


def _index_tag_and_push(registry: Registry, index: dict[str, Any], record: dict[str, Any], cfg) -> str | None:
    """The index record first, saying what is still to do; then the GTO tags; then the Hub push.
    A run killed in between leaves a record marked pending, which the next run completes
    (finish_pending_tags, _already_registered) instead of finding tags that no record vouches for."""
    promote = record["promoted"]
    entry = dict(record, stages=[PROD] if promote else [])
    if registry.uses_git:
        entry["gto"] = "pending"
    push = cfg.push_to_hub and promote
    if push:  # pending until the push succeeds: a run killed mid-push is retried too
        entry["hub"] = {"repo_id": cfg.hub_repo_id, "pushed": False, "url": None, "error": None}
    if promote:
        for other in index["versions"]:
            other["stages"] = [s for s in other.get("stages", []) if s != PROD]
    index["versions"].append(entry)
    atomic_write_json(registry.index_path, index)
    if registry.uses_git:
        _tag(registry, entry)
        atomic_write_json(registry.index_path, index)
    return push_and_record(registry, index, entry, cfg.hub_repo_id, cfg.hub_private) if push else None


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return register(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("register", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
