"""Stage `filter`: validate every row, strip answer whitespace, drop what cannot be trained on.

inputs:  data/raw/{train,validation}; params data.keep_unanswerable
outputs: data/filtered/{train,validation}, reports/filter.json (rows in/kept, drops per reason)

Every dropped row is counted under one reason, so rows_in == rows_kept + sum(dropped) per split.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from uqa import layout
from uqa.data.arrow_shards import save_table
from uqa.ops.atomic import atomic_dir, atomic_write_json
from uqa.params.schema import PARAMS_FILE, DataParams, Params

log = logging.getLogger(__name__)

SPLITS = layout.SPLITS
IN_DIR = layout.RAW_DIR
OUT_DIR = layout.FILTERED_DIR
REPORT = layout.report("filter")

# reasons, in the order they are checked (a row is counted under the first that applies)
REASONS = (
    "missing_id",
    "empty_context",
    "empty_question",
    "missing_is_impossible",
    "unanswerable",  # dropped by choice (data.keep_unanswerable: false), not invalid
    "empty_answer",
    "bad_answer_start",
    "misaligned_answer",
)
EXAMPLES_PER_REASON = 5


def _blank(text: str | None) -> bool:
    return text is None or not text.strip()


def check_row(row: dict[str, Any], keep_unanswerable: bool) -> tuple[str | None, dict[str, Any]]:
    """(drop reason or None, the row as kept: question stripped, answer stripped with its start shifted)."""
    if _blank(row["id"]):
        return "missing_id", row
    if _blank(row["context"]):
        return "empty_context", row
    if _blank(row["question"]):
        return "empty_question", row
    if row["is_impossible"] is None:
        return "missing_is_impossible", row
    kept = dict(row, question=row["question"].strip())
    if row["is_impossible"]:
        if not keep_unanswerable:
            return "unanswerable", row
        return None, dict(kept, answer="", answer_start=-1)
    answer, start, context = row["answer"], row["answer_start"], row["context"]
    if _blank(answer):
        return "empty_answer", row
    if start is None or start < 0 or start + len(answer) > len(context):
        return "bad_answer_start", row
    if context[start : start + len(answer)] != answer:
        return "misaligned_answer", row
    stripped = answer.strip()
    # edge whitespace would put the label on a space no token covers: tighten, keep the offset true
    start += len(answer) - len(answer.lstrip())
    return None, dict(kept, answer=stripped, answer_start=start)


CHECKED = ("id", "context", "question", "is_impossible", "answer", "answer_start")  # what check_row reads
REWRITTEN = ("question", "answer", "answer_start")  # what it may change in a kept row


def filter_split(table: pa.Table, keep_unanswerable: bool, split: str) -> tuple[pa.Table, dict[str, Any]]:
    """The kept rows (the input's columns, REWRITTEN as check_row left them, plus `source_row`) and
    the split's report. Column by column: only the checked columns become Python values, and the
    kept rows are taken from the Arrow table as they are (the contexts are never copied)."""
    values = zip(*(table.column(c).to_pylist() for c in CHECKED), strict=True)
    source_row: list[int] = []
    rewritten: dict[str, list[Any]] = {c: [] for c in REWRITTEN}
    dropped: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    stripped = answerable_kept = 0
    for i, row_values in enumerate(values):
        row = dict(zip(CHECKED, row_values, strict=True))
        reason, out = check_row(row, keep_unanswerable)
        if reason is None:
            stripped += out["answer"] != row["answer"]
            answerable_kept += not out["is_impossible"]
            source_row.append(i)
            for c in REWRITTEN:
                rewritten[c].append(out[c])
            continue
        dropped[reason] += 1
        if reason != "unanswerable" and len(examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            examples[reason].append({"row": i, "id": row["id"]})
    rows = pa.array(source_row, type=pa.int64())
    kept = np.zeros(table.num_rows, dtype=bool)
    kept[source_row] = True
    out_table = table.filter(pa.array(kept))  # the rows in order: a mask, chunk by chunk, no gather
    for c in REWRITTEN:
        out_table = out_table.set_column(out_table.schema.get_field_index(c), table.schema.field(c),
                                         pa.array(rewritten[c], type=table.schema.field(c).type))
    out_table = out_table.append_column("source_row", rows)
    report = {
        "rows_in": table.num_rows,
        "rows_kept": len(source_row),
        "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
        "answers_stripped": stripped,
        "answerable_kept": answerable_kept,
        "unanswerable_kept": len(source_row) - answerable_kept,
        "examples": examples,
    }
    assert report["rows_in"] == report["rows_kept"] + sum(report["dropped"].values())
    invalid = {r: n for r, n in report["dropped"].items() if r != "unanswerable"}
    if invalid:
        log.warning("filter [%s]: dropped invalid rows %s; first rows: %s", split, invalid, examples)
    return out_table, report


def filter_rows(
    params: DataParams, in_dir: Path = IN_DIR, out_dir: Path = OUT_DIR, report_path: Path = REPORT
) -> dict[str, Any]:
    import datasets

    report: dict[str, Any] = {"keep_unanswerable": params.keep_unanswerable}
    for split in SPLITS:
        raw = datasets.load_from_disk(str(Path(in_dir) / split))
        table, report[split] = filter_split(raw.data.table, params.keep_unanswerable, split)
        with atomic_dir(Path(out_dir) / split) as tmp:
            save_table(table, tmp)
        log.info(
            "filter [%s]: %d in, %d kept, dropped %s, %d answers stripped",
            split, report[split]["rows_in"], report[split]["rows_kept"], report[split]["dropped"],
            report[split]["answers_stripped"],
        )
    atomic_write_json(report_path, report)
    return report


def run(params: Params, params_file: str = PARAMS_FILE) -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return filter_rows(params.data)


def main(argv: list[str] | None = None) -> int:
    from uqa.workspace.stage_cli import stage_main

    return stage_main("filter", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
