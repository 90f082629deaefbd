"""The evaluation set a version was scored on: prod re-scored on the challenger's (like with like), and
the sample of it each version records (eval_questions.jsonl: what `uqa serve --backend onnx` checks).

Prod is scored on this run's evaluation the way evaluate scored the challenger.

The promotion gate (uqa/registry/gate.py) compares like with like: when prod's recorded F1 was measured on
another validation set, mode or tune_fraction, prod is scored again here on the challenger's
validation questions (data/filtered/validation: the very set its metrics/eval.json fingerprints as
`eval_set`, checked here; any other set stops the gate), with the challenger's evaluate settings (n_best,
max_answer_length, no-answer threshold and its tune/report split) and prod's own windowing and
tokenizer (its uqa_inference.json), and the gate compares with that F1.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from uqa import layout
from uqa.errors import DataError, first_line
from uqa.evaluation.scoring import references_by_id, score_predictions
from uqa.params.schema import Params
from uqa.registry.store import Registry

log = logging.getLogger(__name__)


def validation_examples(*dirs: Path, eval_set: dict | None = None) -> tuple[Path, pd.DataFrame]:
    """The challenger's validation questions: the first of `dirs`/data/filtered/validation (the run's, then
    the project's) whose rows are the set the challenger was scored on (`eval_set`, its fingerprint in
    metrics/eval.json). Prod is never scored on another set: a comparison that is not like with like stops."""
    import datasets

    from uqa.registry.gate import eval_set_fingerprint

    wanted = (eval_set or {}).get("sha256")
    seen = []
    # the run's set, then the project's (often the same directory)
    for path in dict.fromkeys((Path(d) / layout.VALIDATION_EXAMPLES).resolve() for d in dirs):
        if not path.is_dir():
            continue
        examples = datasets.load_from_disk(str(path)).to_pandas()
        found = eval_set_fingerprint(examples)
        if wanted is not None and found["sha256"] == wanted:
            return path, examples
        seen.append(f"{path} ({found['rows']} rows, eval_set {found['sha256'][:12]})")
    if not seen:
        raise DataError(f"{Path(dirs[0]) / layout.VALIDATION_EXAMPLES} is missing, and prod must be re-scored on this "
                        "run's validation "
                        "set to compare like with like: rerun the filter stage (dvc repro filter), then register")
    recorded = f"{wanted[:12]} ({(eval_set or {}).get('rows')} rows)" if wanted else "not recorded"
    raise DataError(f"prod must be re-scored on the set the challenger was scored on (eval_set {recorded}), and "
                    f"none of {', '.join(seen)} is that set: the gate never compares F1s measured on two sets; "
                    "rerun the filter and evaluate stages (dvc repro evaluate), then register")


def model_f1_on(model_dir: Path, examples_dir: Path, params: Params, squad2: bool,
                examples: pd.DataFrame | None = None) -> float:
    """F1 (official SQuAD v2, 0-100) of the model in `model_dir` on the questions of `examples_dir`."""
    import datasets

    from uqa.model.predict import Predictor

    if examples is None:
        examples = datasets.load_from_disk(str(examples_dir)).to_pandas()
    references = references_by_id(examples)
    first = examples.drop_duplicates("id")
    predictor = Predictor(model_dir, n_best=params.evaluate.n_best,
                          max_answer_length=params.evaluate.max_answer_length, no_answer_threshold=None,
                          batch_size=params.train.eval_batch_size)
    answers = predictor(first["question"].tolist(), first["context"].tolist(), ids=first["id"].tolist(),
                        where=str(examples_dir))
    frame = pd.DataFrame({"id": first["id"].tolist(), "span_text": [a.answer for a in answers]})
    margins = {q: a.margin for q, a in zip(frame["id"], answers, strict=True)} if squad2 else None
    _, metrics = score_predictions(frame, references, margins, params.evaluate.no_answer_threshold,
                                   params.evaluate.tune_fraction)
    log.info("register: %s re-scored on %s: F1 %.2f (%d questions)", model_dir, examples_dir, metrics["f1"],
             metrics["n_questions"])
    return float(metrics["f1"])


def prod_rescorer(registry: Registry, prod: str | None, params: Params, metrics: dict, run_dir: Path, root: Path):
    """prod's F1 on this run's evaluation, as a callable the gate calls only when prod's record was
    scored otherwise (another validation set, mode or tune_fraction); None when nothing is in prod."""
    if prod is None:
        return None

    def rescore() -> float:
        examples_dir, examples = validation_examples(run_dir, root, eval_set=metrics.get("eval_set"))
        return model_f1_on(registry.version_dir(prod), examples_dir, params, squad2=metrics.get("mode") == "squad2",
                           examples=examples)
    return rescore


EVAL_QUESTIONS = 200  # recorded per version: enough to see a backend change answers, small beside the weights


def _by_id_hash(examples_dir: Path, purpose: str) -> pd.DataFrame | None:
    """The evaluation's questions, one row per id, in the order of a hash of the id (a fixed spread over
    the set, whatever its row order); None when the set is not here (a registration never fails for it)."""
    import datasets

    try:
        frame = datasets.load_from_disk(str(examples_dir)).to_pandas().drop_duplicates("id")
    except (OSError, ValueError) as exc:  # absent or not a dataset
        log.warning("register: %s cannot be read (%s): the version records no %s", examples_dir,
                    first_line(exc, 200), purpose)
        return None
    frame = frame.assign(_key=frame["id"].map(lambda i: hashlib.sha256(str(i).encode()).hexdigest()))
    return frame.sort_values("_key")


def write_eval_questions(examples_dir: Path, dest: Path, n: int = EVAL_QUESTIONS) -> int:
    """Up to `n` of the evaluation's questions (one row per id, spread by a hash of the id) as jsonl; 0 when
    the evaluation set is not here."""
    frame = _by_id_hash(examples_dir, "evaluation questions")
    if frame is None:
        return 0
    rows = frame.head(n)
    with open(dest, "w", encoding="utf-8") as f:
        for r in rows.itertuples():
            f.write(json.dumps({"id": str(r.id), "question": r.question, "context": r.context}, ensure_ascii=False) + "\n")
    return len(rows)


WIDGET_CONTEXT_CHARS = 1500  # the Hub's inference box: a paragraph, not a page


def widget_example(examples_dir: Path) -> dict[str, str] | None:
    """The model card's `widget:` example (what the Hub's question-answering box opens with): a real,
    answerable validation question with a paragraph-sized context, the first in the id-hash order."""
    frame = _by_id_hash(examples_dir, "widget example")
    if frame is None:
        return None
    fits = frame[~frame["is_impossible"].astype(bool) & (frame["context"].str.len() <= WIDGET_CONTEXT_CHARS)
                 & (frame["question"].str.strip().str.len() > 0)]
    if fits.empty:
        return None
    row = fits.iloc[0]
    return {"text": str(row["question"]).strip(), "context": str(row["context"]),
            "example_title": f"UQA validation {row['id']}"}
