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

import pyarrow as pa

from uqa import layout
from uqa.atomic import atomic_dir, atomic_write_json
from uqa.params import DataParams, Params

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


def filter_split(table: pa.Table, keep_unanswerable: bool, split: str) -> tuple[pa.Table, dict[str, Any]]:
    rows = table.to_pylist()
    kept: list[dict[str, Any]] = []
    source_row: list[int] = []
    dropped: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    stripped = 0
    for i, row in enumerate(rows):
        reason, out = check_row(row, keep_unanswerable)
        if reason is None:
            if out["answer"] != row["answer"]:
                stripped += 1
            kept.append(out)
            source_row.append(i)
            continue
        dropped[reason] += 1
        if reason != "unanswerable" and len(examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            examples[reason].append({"row": i, "id": row["id"]})
    out_table = pa.Table.from_pylist(kept, schema=table.schema) if kept else table.schema.empty_table()
    out_table = out_table.append_column("source_row", pa.array(source_row, type=pa.int64()))
    report = {
        "rows_in": len(rows),
        "rows_kept": len(kept),
        "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
        "answers_stripped": stripped,
        "answerable_kept": sum(1 for r in kept if not r["is_impossible"]),
        "unanswerable_kept": sum(1 for r in kept if r["is_impossible"]),
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
            datasets.Dataset(table).save_to_disk(str(tmp))
        log.info(
            "filter [%s]: %d in, %d kept, dropped %s, %d answers stripped",
            split, report[split]["rows_in"], report[split]["rows_kept"], report[split]["dropped"],
            report[split]["answers_stripped"],
        )
    atomic_write_json(report_path, report)
    return report


def run(params: Params, params_file: str = "params.yaml") -> Any:
    """The stage as `dvc repro` and the Prefect flow both run it."""
    return filter_rows(params.data)


def main(argv: list[str] | None = None) -> int:
    from uqa.stage_cli import stage_main

    return stage_main("filter", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
