"""Stage `register`: version the trained model in the registry, promote it to prod if it earns it.

inputs:  models/final, metrics/eval.json, reports/download.json, reports/train.json; params register
outputs: registry/ (persist: every registered version, see uqa/registry.py), reports/register.json

Promotion gate: F1 >= register.min_f1 and >= the F1 of the model now in prod. A model that fails the
gate is still registered (its version, card and metrics are kept), but prod stays where it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from uqa.atomic import atomic_dir, atomic_write_json, read_json
from uqa.errors import UserError
from uqa.params import Params
from uqa.registry import PROD, Registry, next_version

log = logging.getLogger(__name__)

MODEL_DIR = Path("models/final")
METRICS_FILE = Path("metrics/eval.json")
DOWNLOAD_REPORT = Path("reports/download.json")
TRAIN_REPORT = Path("reports/train.json")
REPORT = Path("reports/register.json")
PARAMS = ["register"]
DEPS = [str(MODEL_DIR), str(METRICS_FILE)]
OUTS = ["registry"]
METRICS = [str(REPORT)]
MODEL_FILES_SKIP = {"training_args.bin"}  # pickled Python objects do not belong in a shipped model


def weights_sha256(model_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def model_card(name: str, version: str, params: Params, metrics: dict[str, Any], download: dict[str, Any],
               train: dict[str, Any], promoted: bool, reason: str) -> str:
    base = params.model.name if params.model.init == "pretrained" else f"from scratch ({params.model.config})"
    m = metrics
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: question-answering",
        "language: [ur]",
        "license: cc-by-sa-4.0",
        "tags: [extractive-qa, urdu, uqa, squad_v2]",
        "model-index:",
        f"- name: {name}",
        "  results:",
        "  - task: {type: question-answering}",
        f"    dataset: {{name: UQA, type: {params.data.source if isinstance(params.data.source, str) else 'files'}}}",
        "    metrics:",
        f"    - {{type: exact_match, value: {m.get('exact_match', 0):.2f}, name: SQuAD v2 EM}}",
        f"    - {{type: f1, value: {m.get('f1', 0):.2f}, name: SQuAD v2 F1}}",
        "---",
        "",
        f"# {name} {version}",
        "",
        f"Extractive question answering for Urdu, fine-tuned on UQA with uqa-pipeline. Base model: {base}.",
        "",
        f"Registry: {'promoted to prod' if promoted else 'registered, not promoted'} ({reason}).",
        "",
        "## Evaluation (validation, one score per question id against all its reference answers)",
        "",
        "| metric | official SQuAD v2 normalization | Urdu normalization |",
        "|---|---:|---:|",
        f"| exact match | {m.get('exact_match', 0):.2f} | {m.get('urdu_exact_match', 0):.2f} |",
        f"| F1 | {m.get('f1', 0):.2f} | {m.get('urdu_f1', 0):.2f} |",
        "",
        f"{m.get('n_questions', 0)} questions, mode {m.get('mode', '?')}.",
    ]
    if "best_f1_thresh" in m:
        lines.append(f"No-answer threshold (null - best span margin): {m.get('no_answer_threshold')}.")
    lines += [
        "",
        "## Data",
        "",
        f"- source: `{json.dumps(params.data.source)}` (revision {params.data.revision})",
        f"- keep_unanswerable: {params.data.keep_unanswerable}",
        f"- rows: {download.get('rows')}",
    ]
    for split, files in (download.get("files") or {}).items():
        for f in files if isinstance(files, list) else []:
            lines.append(f"- {split}: `{Path(f['path']).name}` sha256 `{f['sha256']}`")
    lines += [
        "",
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
        "",
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
    return "\n".join(lines)


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

    from uqa.errors import TransientError

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory))
    except Exception as exc:  # the message must never carry the token
        text = f"{type(exc).__name__}: {exc}".replace(token, "***")
        raise TransientError(f"push to the Hub ({repo_id}) failed: {text.splitlines()[0][:300]}") from None
    return str(getattr(commit, "commit_url", repo_id))


def register(params: Params, root: Path = Path("."), model_dir: Path = MODEL_DIR,
             metrics_file: Path = METRICS_FILE) -> dict[str, Any]:
    root = Path(root)
    model_dir, metrics_file = root / model_dir, root / metrics_file
    for dep in (model_dir, metrics_file):
        if not dep.exists():
            raise UserError(f"{dep} is missing: run the train and evaluate stages first")
    cfg = params.register
    metrics = read_json(metrics_file)
    registry = Registry(root, cfg.name)
    digest = weights_sha256(model_dir)
    index = registry.index()
    prod = registry.stage_version(PROD)
    prod_record = registry.record(prod) if prod else None

    latest = index["versions"][-1] if index["versions"] else None
    if latest and latest["weights_sha256"] == digest:
        report = {"name": cfg.name, "version": latest["version"], "registered": False, "promoted": PROD in latest.get("stages", []) or prod == latest["version"],
                  "reason": f"these weights are already registered as {latest['version']}", "prod_version": prod,
                  "path": str(registry.version_dir(latest["version"]))}
        atomic_write_json(root / REPORT, report)
        log.info("register: %s", report["reason"])
        return report

    f1 = float(metrics.get("f1", 0.0))
    prod_f1 = float(prod_record["metrics"]["f1"]) if prod_record else None
    if f1 < cfg.min_f1:
        promote, reason = False, f"F1 {f1:.2f} < register.min_f1 {cfg.min_f1:.2f}"
    elif prod_f1 is not None and f1 < prod_f1:
        promote, reason = False, f"F1 {f1:.2f} < prod {prod} F1 {prod_f1:.2f}"
    else:
        promote = True
        reason = f"F1 {f1:.2f} >= min_f1 {cfg.min_f1:.2f}" + (
            f" and >= prod {prod} F1 {prod_f1:.2f}" if prod_f1 is not None else " (first prod model)")

    known = [v["version"] for v in index["versions"]]
    if registry.uses_git:
        import gto.api

        try:
            known += [v["version"] for v in gto.api.show(str(root), cfg.name)]
        except Exception:
            pass
    version = next_version(known)
    download = read_json(root / DOWNLOAD_REPORT)
    train = read_json(root / TRAIN_REPORT)
    card = model_card(cfg.name, version, params, metrics, download, train, promote, reason)
    record = {
        "version": version,
        "weights_sha256": digest,
        "metrics": {k: metrics[k] for k in ("exact_match", "f1", "urdu_exact_match", "urdu_f1", "n_questions", "mode", "no_answer_threshold")
                    if k in metrics},
        "base_model": params.model.name if params.model.init == "pretrained" else "scratch",
        "data_source": params.data.source,
        "promoted": promote,
        "reason": reason,
    }
    with atomic_dir(registry.version_dir(version)) as tmp:
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and f.name not in MODEL_FILES_SKIP:
                _link_or_copy(f, tmp / f.name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        atomic_write_json(tmp / "registration.json", record)
    if registry.uses_git:
        vdir = registry.version_dir(version)
        registry.git_register(
            version,
            {f"{cfg.name}/{version}/README.md": vdir / "README.md",
             f"{cfg.name}/{version}/registration.json": vdir / "registration.json"},
            message=json.dumps(record["metrics"] | {"weights_sha256": digest}),
        )
        if promote:
            registry.git_promote(version, reason)
    entry = dict(record, stages=[PROD] if promote else [])
    if promote:
        for other in index["versions"]:
            other["stages"] = [s for s in other.get("stages", []) if s != PROD]
    index["versions"].append(entry)
    atomic_write_json(registry.index_path, index)

    hub_url = None
    if cfg.push_to_hub and promote:
        hub_url = push_to_hub(registry.version_dir(version), cfg.hub_repo_id)
    new_prod = version if promote else prod
    report = {"name": cfg.name, "version": version, "registered": True, "promoted": promote, "reason": reason,
              "prod_version": new_prod, "path": str(registry.version_dir(version)),
              "model_card": str(registry.version_dir(version) / "README.md"), "gto": registry.uses_git,
              "hub_url": hub_url, "f1": f1}
    atomic_write_json(root / REPORT, report)
    log.info("register: %s %s %s (%s)", cfg.name, version, "promoted to prod" if promote else "not promoted", reason)
    return report


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return register(params)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage import stage_main

    return stage_main("register", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
