"""Stage `register`: version the trained model in the registry, promote it to prod if it earns it.

inputs:  models/final, metrics/eval.json, reports/download.json, reports/train.json; params register
outputs: registry/ (persist: every registered version, see uqa/registry.py), reports/register.json

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
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.atomic import atomic_dir, atomic_write_json
from uqa.errors import DataError, TransientError, UserError
from uqa.inference_settings import INFERENCE_FILE, registry_settings, weights_sha256
from uqa.jsonfile import read_json
from uqa.params import Params
from uqa.registry import PROD, Registry, RegistryInconsistent, next_version

log = logging.getLogger(__name__)

MODEL_DIR = layout.MODEL_DIR
METRICS_FILE = layout.METRICS_FILE
DOWNLOAD_REPORT = layout.report("download")
TRAIN_REPORT = layout.report("train")
REPORT = layout.report("register")
MODEL_FILES_SKIP = {"training_args.bin"}  # pickled Python objects do not belong in a shipped model


CARD_TAGS = ["extractive-qa", "urdu", "uqa", "squad_v2"]


def _hub_id(name: Any) -> bool:
    """A Hub repo id (not a local path): what the card's base_model / datasets fields may name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from uqa.hub import looks_local

    if not isinstance(name, str) or looks_local(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _score(metrics: dict[str, Any], key: str) -> float | None:
    """A metric as a float, or None when metrics/eval.json does not have it (never a made-up 0)."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def card_metadata(name: str, params: Params, metrics: dict[str, Any], download: dict[str, Any]) -> Any:
    """The card's YAML front matter as huggingface_hub's ModelCardData, model-index included.

    Every value goes through huggingface_hub's YAML dump, so a data.source such as
    `{train: "a: b.parquet"}` or a path with `#` in it is quoted, not pasted into the YAML."""
    from huggingface_hub import EvalResult, ModelCardData

    source = params.data.source
    source_text = source if isinstance(source, str) else json.dumps(source, ensure_ascii=False)
    on_hub = download.get("kind") == "hub" if download.get("kind") else _hub_id(source)
    revision = (download.get("resolved_revision") or params.data.revision) if on_hub else None
    results = [
        EvalResult(task_type="question-answering", task_name="Extractive Question Answering",
                   dataset_type=source_text, dataset_name="UQA", dataset_split="validation",
                   dataset_revision=revision, metric_type=metric, metric_value=value, metric_name=label)
        for metric, label in (("exact_match", "SQuAD v2 EM"), ("f1", "SQuAD v2 F1"))
        if (value := _score(metrics, metric)) is not None
    ]
    base = params.model.name if params.model.init == "pretrained" and _hub_id(params.model.name) else None
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="question-answering",
        language=["ur"],
        license="cc-by-sa-4.0",
        tags=list(CARD_TAGS),
        base_model=base,
        datasets=[source] if on_hub else None,
        model_name=name if results else None,
        eval_results=results or None,
    )


def model_card(name: str, version: str, params: Params, metrics: dict[str, Any], download: dict[str, Any],
               train: dict[str, Any], promoted: bool, reason: str) -> str:
    """README.md of a registered version: Hub metadata (ModelCardData, model-index) and the human part."""
    from huggingface_hub import ModelCard

    if params.model.init == "pretrained":
        base = params.model.name
    else:
        base = f"from scratch ({json.dumps(params.model.config, ensure_ascii=False)})"
    lines = [
        f"# {name} {version}",
        "",
        f"Extractive question answering for Urdu, fine-tuned on UQA with uqa-pipeline. Base model: {base}.",
        "",
        f"Registry: {'promoted to prod' if promoted else 'registered, not promoted'} ({reason}).",
        "",
        *_card_evaluation(metrics),
        "",
        *_card_data(params, download),
        "",
        *_card_training(params, train),
        "",
        *CARD_USE,
    ]
    data = card_metadata(name, params, metrics, download)
    # parsed back by ModelCard on the way out: front matter that does not load fails here, not on the Hub
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _card_evaluation(m: dict[str, Any]) -> list[str]:
    lines = [
        "## Evaluation (validation, one score per question id against all its reference answers)",
        "",
        "| metric | official SQuAD v2 normalization | Urdu normalization |",
        "|---|---:|---:|",
        f"| exact match | {_cell(_score(m, 'exact_match'))} | {_cell(_score(m, 'urdu_exact_match'))} |",
        f"| F1 | {_cell(_score(m, 'f1'))} | {_cell(_score(m, 'urdu_f1'))} |",
        "",
        f"{m.get('n_questions', '?')} questions, mode {m.get('mode', '?')}.",
    ]
    if m.get("no_answer_threshold") is not None:
        lines.append(f"No-answer threshold (null - best span margin): {m['no_answer_threshold']}.")
    return lines


def _card_data(params: Params, download: dict[str, Any]) -> list[str]:
    lines = [
        "## Data",
        "",
        "source (`data.source`):",
        "",
        "```json",
        json.dumps(params.data.source, ensure_ascii=False),
        "```",
        "",
        f"- revision: {params.data.revision if params.data.revision is not None else 'newest'}",
    ]
    if download.get("resolved_revision"):
        lines.append(f"- resolved Hub commit: `{download['resolved_revision']}`")
    lines += [
        f"- keep_unanswerable: {params.data.keep_unanswerable}",
        f"- rows: {json.dumps(download.get('rows'), ensure_ascii=False)}",
    ]
    for split, files in (download.get("files") or {}).items():
        for f in files if isinstance(files, list) else []:
            size = f" ({f['size']} bytes)" if isinstance(f.get("size"), int) else ""
            lines.append(f"- {split}: `{Path(str(f.get('path'))).name}`{size} sha256 `{f.get('sha256')}`")
    return lines


def _card_training(params: Params, train: dict[str, Any]) -> list[str]:
    return [
        "## Training",
        "",
        "```json",
        json.dumps({"model": params.section("model"), "tokenize": params.section("tokenize"),
                    "train": params.section("train")}, indent=2, ensure_ascii=False),
        "```",
        "",
        f"Precision {train.get('precision')}, {train.get('world_size')} process(es), "
        f"{train.get('global_step')} optimizer steps, best checkpoint by {train.get('metric_for_best_model')} "
        f"= {train.get('best_metric')}.",
    ]


CARD_USE = [
    "## Use",
    "",
    "```bash",
    'uqa predict --model PATH_TO_THIS_DIRECTORY --question "ہم کیا کرنے والے ہیں؟" \\',
    '    --context "ہم اپنے فائن ٹیونڈ سوال و جواب ماڈل پر جلد ہی انفریئنس چلانے والے ہیں!"',
    "```",
    "",
    "(sliding windows over long contexts, the same span search as the evaluation). In Python:",
    "`uqa.predict.Predictor(PATH)(questions, contexts)`, or the transformers Auto classes:",
    "`AutoModelForQuestionAnswering.from_pretrained(PATH)`, `AutoTokenizer.from_pretrained(PATH)`.",
    "transformers 5 removed `pipeline(\"question-answering\")`; with transformers 4.x it loads this directory too.",
    "",
]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def push_to_hub(directory: Path, repo_id: str | None) -> str:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        try:
            from prefect.blocks.system import Secret

            token = Secret.load("hf-token").get()
        except Exception:
            token = None
    if not token:
        raise UserError("register.push_to_hub is true but no token: set HF_TOKEN (or a Prefect Secret block 'hf-token')")
    if not repo_id:
        raise UserError("register.push_to_hub is true but register.hub_repo_id is not set")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory))
    except Exception as exc:  # the message must never carry the token
        text = f"{type(exc).__name__}: {exc}".replace(token, "***")
        raise TransientError(f"push to the Hub ({repo_id}) failed: {text.splitlines()[0][:300]}") from None
    return str(getattr(commit, "commit_url", repo_id))


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


def _hub_done(entry: dict[str, Any], repo_id: str | None) -> bool:
    hub = entry.get("hub") or {}
    return bool(hub.get("pushed")) and hub.get("repo_id") == repo_id


def _push_and_record(registry: Registry, index: dict[str, Any], entry: dict[str, Any], repo_id: str | None) -> str:
    """Push the version to the Hub and record the outcome in its index entry (one atomic index write).

    A failure is recorded as pending (with the token-free error) and re-raised: the stage fails, the
    registration stays consistent, and the next run with the same weights retries the push."""
    entry["hub"] = {"repo_id": repo_id, "pushed": False, "url": None, "error": None}
    try:
        url = push_to_hub(registry.version_dir(entry["version"]), repo_id)
    except UserError as exc:
        entry["hub"]["error"] = str(exc)  # push_to_hub's messages never carry the token
        atomic_write_json(registry.index_path, index)
        raise
    entry["hub"].update(pushed=True, url=url)
    atomic_write_json(registry.index_path, index)
    return url


def _tag(registry: Registry, entry: dict[str, Any]) -> None:
    """Give an index record its GTO version tag (and prod assignment); idempotent."""
    version = entry["version"]
    vdir = registry.version_dir(version)
    if version not in registry.gto_versions():
        files = {f"{registry.name}/{version}/{n}": vdir / n for n in ("README.md", "registration.json")}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise RegistryInconsistent(
                f"{registry.index_path} records {version} with GTO tags pending, but {', '.join(missing)} "
                f"is missing: restore the registry (`dvc pull registry`) and run again")
        registry.git_register(version, files, message=json.dumps(entry["metrics"] | {
            "weights_sha256": entry["weights_sha256"]}))
    if PROD in entry.get("stages", []) and registry.stage_version(PROD) != version:
        registry.git_promote(version, entry.get("reason", ""))
    entry["gto"] = "tagged"


def finish_pending_tags(registry: Registry, index: dict[str, Any]) -> None:
    pending = [e for e in index["versions"] if e.get("gto") == "pending"]
    if not pending or not registry.uses_git:
        return
    for entry in pending:
        log.warning("register: %s %s was recorded but a run stopped before tagging it; tagging it now",
                    registry.name, entry["version"])
        _tag(registry, entry)
    atomic_write_json(registry.index_path, index)


def register(params: Params, root: Path = Path("."), model_dir: Path = MODEL_DIR,
             metrics_file: Path = METRICS_FILE, run_dir: Path | None = None) -> dict[str, Any]:
    """Register models/final of `run_dir` (default: `root`, the project whose registry this is; a
    sweep registers its winning experiment's outputs from that experiment's workspace)."""
    root = Path(root)
    run_dir = Path(run_dir) if run_dir is not None else root
    model_dir, metrics_file = run_dir / model_dir, run_dir / metrics_file
    for dep in (model_dir, metrics_file):
        if not dep.exists():
            raise UserError(f"{dep} is missing: run the train and evaluate stages first")
    cfg = params.register
    metrics, f1 = read_metrics(metrics_file)
    digest = weights_sha256(model_dir)
    scored = (metrics.get("inference") or {}).get("weights_sha256")
    if scored not in (None, digest):  # metrics of other weights must never vouch for these
        raise DataError(f"{metrics_file} scored other weights than {model_dir}: rerun the evaluate stage "
                        "(dvc repro evaluate)")
    registry = Registry(root, cfg.name)
    index = registry.index()
    finish_pending_tags(registry, index)  # a run killed between its index record and its GTO tags
    prod, prod_record = registry.verified_stage(PROD)  # RegistryInconsistent: stop, promote nothing

    latest = index["versions"][-1] if index["versions"] else None
    if latest and latest.get("weights_sha256") == digest:
        report = _already_registered(registry, index, latest, cfg, prod)
    else:
        promote, reason = promotion_decision(f1, cfg.min_f1, prod, prod_record)
        # a version number GTO already has (e.g. from a run killed after tagging) must not be reused
        version = next_version([v["version"] for v in index["versions"]] + registry.gto_versions())
        record = _version_record(version, digest, params, metrics, promote, reason)
        card = model_card(cfg.name, version, params, metrics, read_json(run_dir / DOWNLOAD_REPORT),
                          read_json(run_dir / TRAIN_REPORT), promote, reason)
        _write_version(registry, version, model_dir, metrics, digest, card, record)
        hub_url = _index_tag_and_push(registry, index, record, cfg)
        report = {"name": cfg.name, "version": version, "registered": True, "promoted": promote, "reason": reason,
                  "prod_version": version if promote else prod, "path": str(registry.version_dir(version)),
                  "model_card": str(registry.version_dir(version) / "README.md"), "gto": registry.uses_git,
                  "hub_url": hub_url, "f1": f1}
        log.info("register: %s %s %s (%s)", cfg.name, version, "promoted to prod" if promote else "not promoted",
                 reason)
    atomic_write_json(root / REPORT, report)
    return report


def _already_registered(registry: Registry, index: dict[str, Any], latest: dict[str, Any], cfg,
                        prod: str | None) -> dict[str, Any]:
    """These weights are the latest version already: nothing new; a Hub push it still owes is retried."""
    version = latest["version"]
    hub_url = (latest.get("hub") or {}).get("url")
    # a push that failed (or never ran) after this version reached prod: finish it now
    if cfg.push_to_hub and prod == version and not _hub_done(latest, cfg.hub_repo_id):
        log.info("register: %s %s is registered; retrying its Hub push", cfg.name, version)
        hub_url = _push_and_record(registry, index, latest, cfg.hub_repo_id)
    reason = f"these weights are already registered as {version}"
    log.info("register: %s", reason)
    return {"name": cfg.name, "version": version, "registered": False, "promoted": prod == version,
            "reason": reason, "prod_version": prod, "path": str(registry.version_dir(version)), "hub_url": hub_url}


def promotion_decision(f1: float, min_f1: float, prod: str | None,
                       prod_record: dict[str, Any] | None) -> tuple[bool, str]:
    """The gate: at least register.min_f1, and no worse than the model in prod."""
    prod_f1 = float(prod_record["metrics"]["f1"]) if prod_record else None
    if f1 < min_f1:
        return False, f"F1 {f1:.2f} < register.min_f1 {min_f1:.2f}"
    if prod_f1 is not None and f1 < prod_f1:
        return False, f"F1 {f1:.2f} < prod {prod} F1 {prod_f1:.2f}"
    return True, f"F1 {f1:.2f} >= min_f1 {min_f1:.2f}" + (
        f" and >= prod {prod} F1 {prod_f1:.2f}" if prod_f1 is not None else " (first prod model)")


RECORD_METRICS = ("exact_match", "f1", "urdu_exact_match", "urdu_f1", "n_questions", "mode", "no_answer_threshold")


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
    }


def _write_version(registry: Registry, version: str, model_dir: Path, metrics: dict[str, Any], digest: str,
                   card: str, record: dict[str, Any]) -> None:
    """registry/<name>/<version>/: the model files, its inference settings, card and record, atomically."""
    with atomic_dir(registry.version_dir(version)) as tmp:
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and f.name not in MODEL_FILES_SKIP:
                _link_or_copy(f, tmp / f.name)
        # train's windowing + what evaluate applied (n_best, max_answer_length, no-answer threshold):
        # a new file, renamed into place, so the hard-linked models/final/uqa_inference.json is untouched
        atomic_write_json(tmp / INFERENCE_FILE, registry_settings(model_dir, metrics, digest))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        atomic_write_json(tmp / "registration.json", record)


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
    return _push_and_record(registry, index, entry, cfg.hub_repo_id) if push else None


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return register(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("register", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
