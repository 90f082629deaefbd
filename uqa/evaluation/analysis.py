"""Error analysis of per-question predictions: buckets and a markdown report."""

from __future__ import annotations

import pandas as pd

# question words, in the order they are looked for; the value is the bucket name
QUESTION_WORDS = {
    "کیا": "کیا",
    "کون": "کون",
    "کونسا": "کون",
    "کونسی": "کون",
    "کونسے": "کون",
    "کب": "کب",
    "کہاں": "کہاں",
    "کتنا": "کتنا/کتنے",
    "کتنے": "کتنا/کتنے",
    "کتنی": "کتنا/کتنے",
    "کیوں": "کیوں",
    "کیسے": "کیسے",
    "کیسا": "کیسے",
    "کیسی": "کیسے",
}
_STRIP = "؟?۔،,.!:;\"'()«»"


def question_word(question: str) -> str:
    """The first Urdu question word in the question (several may occur: 'کیا' also marks yes/no)."""
    tokens = [t.strip(_STRIP) for t in question.split()]
    for token in tokens:
        if token in QUESTION_WORDS:
            return QUESTION_WORDS[token]
    return "other"


def answer_length_bucket(n_words: int) -> str:
    if n_words == 0:
        return "no answer"
    if n_words == 1:
        return "1 word"
    if n_words <= 3:
        return "2-3 words"
    if n_words <= 7:
        return "4-7 words"
    return "8+ words"


def context_length_bucket(n_chars: int) -> str:
    for limit, name in ((500, "< 500 chars"), (1000, "500-999 chars"), (2000, "1000-1999 chars")):
        if n_chars < limit:
            return name
    return "2000+ chars"


def add_buckets(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["question_word"] = frame["question"].map(question_word)
    first_ref = frame["references"].map(lambda refs: refs[0] if len(refs) else "")
    frame["answer_length_bucket"] = first_ref.map(lambda a: answer_length_bucket(len(a.split())))
    frame["context_length_bucket"] = frame["context_length"].map(context_length_bucket)
    frame["answerable"] = frame["references"].map(lambda refs: "answerable" if len(refs) else "unanswerable")
    return frame


def _table(frame: pd.DataFrame, by: str, order: list[str] | None = None) -> str:
    grouped = frame.groupby(by, sort=False).agg(
        n=("id", "size"),
        exact_match=("exact_match", "mean"),
        f1=("f1", "mean"),
        urdu_exact_match=("urdu_exact_match", "mean"),
        urdu_f1=("urdu_f1", "mean"),
    )
    if order:
        grouped = grouped.reindex([o for o in order if o in grouped.index])
    else:
        grouped = grouped.sort_values("n", ascending=False)
    lines = [f"| {by} | n | EM | F1 | Urdu EM | Urdu F1 |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in grouped.iterrows():
        lines.append(
            f"| {name} | {int(row.n)} | {row.exact_match:.2f} | {row.f1:.2f} | "
            f"{row.urdu_exact_match:.2f} | {row.urdu_f1:.2f} |"
        )
    return "\n".join(lines)


def _cell(text: str, limit: int = 80) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def errors_markdown(frame: pd.DataFrame, metrics: dict, worst: int = 20) -> str:
    frame = add_buckets(frame) if "question_word" not in frame else frame
    parts = [
        "# Error analysis",
        "",
        f"{len(frame)} questions. Official SQuAD v2 scores: EM {metrics.get('exact_match', 0):.2f}, "
        f"F1 {metrics.get('f1', 0):.2f}; Urdu-normalized: EM {metrics.get('urdu_exact_match', 0):.2f}, "
        f"F1 {metrics.get('urdu_f1', 0):.2f}.",
        "",
        "## By answerability",
        _table(frame, "answerable", ["answerable", "unanswerable"]),
        "",
        "## By answer length (words of the first reference)",
        _table(frame, "answer_length_bucket", ["1 word", "2-3 words", "4-7 words", "8+ words", "no answer"]),
        "",
        "## By context length",
        _table(frame, "context_length_bucket", ["< 500 chars", "500-999 chars", "1000-1999 chars", "2000+ chars"]),
        "",
        "## By question word",
        _table(frame, "question_word"),
        "",
        f"## The {worst} worst predictions (lowest Urdu F1, most confident first)",
        "| id | question | prediction | references | Urdu F1 | probability |",
        "|---|---|---|---|---:|---:|",
    ]
    worst_rows = frame.sort_values(["urdu_f1", "probability"], ascending=[True, False]).head(worst)
    for _, row in worst_rows.iterrows():
        refs = " / ".join(row.references) if len(row.references) else "(no answer)"
        parts.append(
            f"| {row.id} | {_cell(row.question)} | {_cell(row.prediction) or '(no answer)'} | {_cell(refs)} | "
            f"{row.urdu_f1:.1f} | {row.probability:.3f} |"
        )
    return "\n".join(parts) + "\n"
