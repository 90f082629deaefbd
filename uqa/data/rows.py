"""The UQA row schema, and the check that names the file/split and column when data does not match it."""

from __future__ import annotations

import pyarrow as pa

from uqa.errors import DataError

# column -> (what it is, accepted Arrow types)
UQA_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "id": ("string", ("string", "large_string")),
    "title": ("string", ("string", "large_string", "null")),
    "context": ("string", ("string", "large_string", "null")),
    "question": ("string", ("string", "large_string", "null")),
    "is_impossible": ("bool", ("bool", "null")),
    "answer": ("string", ("string", "large_string", "null")),
    "answer_start": ("int64", ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "null")),
}
# an all-null column reads as type null; the filter stage then drops its rows with a reason


def check_schema(schema: pa.Schema, where: str) -> None:
    """Raise DataError naming `where` and the column when a column is missing or has the wrong type."""
    names = set(schema.names)
    missing = [c for c in UQA_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; "
            f"UQA rows need {', '.join(UQA_COLUMNS)} (found: {', '.join(schema.names)})"
        )
    for column, (expected, accepted) in UQA_COLUMNS.items():
        actual = str(schema.field(column).type)
        if actual not in accepted:
            shown = {"large_string": "string", "double": "float"}.get(actual, actual)
            raise DataError(
                f"{where}: column '{column}' has type {shown}, expected {expected}"
                + (" (true/false)" if expected == "bool" else "")
            )


def conform(table: pa.Table) -> pa.Table:
    """Cast the UQA columns to their canonical types (after check_schema), keep only those columns."""
    target = pa.schema(
        [
            ("id", pa.string()),
            ("title", pa.string()),
            ("context", pa.string()),
            ("question", pa.string()),
            ("is_impossible", pa.bool_()),
            ("answer", pa.string()),
            ("answer_start", pa.int64()),
        ]
    )
    return table.select(target.names).cast(target)
