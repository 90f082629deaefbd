"""The model card (README.md) of a registered version: Hub metadata and what a reader needs to trust it.

Front matter: huggingface_hub's ModelCardData (model-index with the evaluation results), dumped by its
YAML writer so hostile sources are quoted. Body: evaluation, data, training, lineage (code commit,
data and model hashes, the run that made it, why it was or wasn't promoted) and how to use it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from uqa.params.schema import Params

CARD_TAGS = ["extractive-qa", "urdu", "uqa", "squad_v2"]


def _hub_id(name: Any) -> bool:
    """A Hub repo id (not a local path): what the card's base_model / datasets fields may name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from uqa.ops.hub import looks_local

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


def card_metadata(name: str, params: Params, metrics: dict[str, Any], download: dict[str, Any],
                  widget: dict[str, str] | None = None) -> Any:
    """The card's YAML front matter as huggingface_hub's ModelCardData, model-index included, and the
    Hub's `widget:` example (a real question and context: the Hub's question-answering box opens with it).

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
        widget=[widget] if widget else None,
    )


def model_card(name: str, version: str, params: Params, metrics: dict[str, Any], download: dict[str, Any],
               train: dict[str, Any], promoted: bool, reason: str, lineage: dict[str, Any] | None = None,
               widget: dict[str, str] | None = None) -> str:
    """README.md of a registered version: Hub metadata (ModelCardData, model-index, the widget example)
    and the human part."""
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
        *_card_lineage(lineage),
        *CARD_USE,
    ]
    data = card_metadata(name, params, metrics, download, widget)
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


def _card_lineage(lineage: dict[str, Any] | None) -> list[str]:
    """Where this version came from (uqa/registry/lineage.py); `uqa registry show NAME@VERSION` prints the same."""
    if not lineage:
        return []
    code, pkg, data = lineage.get("code") or {}, lineage.get("package") or {}, lineage.get("data") or {}
    run, promo = lineage.get("run") or {}, lineage.get("promotion") or {}
    dirty = (f" with uncommitted changes (diff sha256 `{code.get('diff_sha256')}`)" if code.get("dirty")
             else " (clean)" if code.get("commit") else "")
    lines = ["## Lineage", "",
             f"- code: workspace commit `{code.get('commit') or 'none (not a git repository)'}`{dirty}; "
             f"uqa-pipeline {pkg.get('version')}" + (f" at `{pkg['commit']}`" if pkg.get("commit") else ""),
             f"- data fingerprint (data/source.json) sha256 `{data.get('fingerprint_sha256')}`",
             f"- evaluation set sha256 `{data.get('eval_set_sha256')}`"]
    lines += [f"- DVC `{path}`: `{md5}`" for path, md5 in (data.get("dvc") or {}).items()]
    if run.get("flow_run_id"):
        link = f" — [open in the Prefect UI]({run['ui_url']})" if run.get("ui_url") else ""
        lines.append(f"- Prefect flow run `{run.get('flow_run_name')}` (`{run['flow_run_id']}`, flow "
                     f"{run.get('flow')}, deployment {run.get('deployment') or 'none'}){link}")
    if run.get("experiment"):
        exp = run["experiment"]
        lines.append(f"- DVC experiment `{exp.get('name')}` (rev `{exp.get('rev')}`)")
    if not run:
        lines.append("- run: outside Prefect (`dvc repro`)")
    if promo.get("prod_before"):
        lines.append(f"- compared with prod {promo['prod_before']} (F1 {promo.get('prod_f1')}, change "
                     f"{promo.get('f1_change')})")
    return [*lines, ""]


CARD_USE = [
    "## Use",
    "",
    "```bash",
    'uqa predict --model PATH_TO_THIS_DIRECTORY --question "ہم کیا کرنے والے ہیں؟" \\',
    '    --context "ہم اپنے فائن ٹیونڈ سوال و جواب ماڈل پر جلد ہی انفریئنس چلانے والے ہیں!"',
    "```",
    "",
    "(sliding windows over long contexts, the same span search as the evaluation). In Python:",
    "`uqa.model.predict.Predictor(PATH)(questions, contexts)`, or the transformers Auto classes:",
    "`AutoModelForQuestionAnswering.from_pretrained(PATH)`, `AutoTokenizer.from_pretrained(PATH)`.",
    "transformers 5 removed `pipeline(\"question-answering\")`; with transformers 4.x it loads this directory too.",
    "",
]
