"""One batch of requests -> their answers, with the model being served when the batch starts.

The answers are `uqa.predict.Predictor`'s (the same windows, span search and no-answer threshold
as `uqa predict`); a batch is one Predictor call over every question in it. When that call refuses
the batch (a question too long for the model's window), each request is answered on its own, so the
refusal reaches only the request at fault, with predict's own message."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from uqa.errors import UserError
from uqa.serving.models import ModelHolder
from uqa.serving.schema import Question, RequestError

_ROW = re.compile(r"row (\d+)")


def _records(answers, items: Sequence[Question], version: str, list_ids: bool) -> list[dict[str, Any]]:
    out = []
    for i, (item, ans) in enumerate(zip(items, answers, strict=True)):
        qid = item.id if item.id is not None else (i if list_ids else None)
        out.append({"id": qid, "answer": ans.answer, "score": round(ans.score, 6), "start": ans.start,
                    "end": ans.end, "no_answer": ans.no_answer, "model_version": version})
    return out


def _one_request(predictor, items: Sequence[Question], is_list: bool):
    questions, contexts = [q.question for q in items], [q.context for q in items]
    try:
        if is_list:
            ids = [q.id if q.id is not None else i for i, q in enumerate(items)]
            return predictor(questions, contexts, ids=ids, where="body")
        return predictor(questions, contexts)
    except UserError as exc:
        message = str(exc)
        m = _ROW.search(message) if is_list else None
        field = f"body[{m.group(1)}].question" if m else "body.question"
        return RequestError(422, message, field)


class BatchAnswerer:
    """`run(batch)` for the DynamicBatcher: each request is (items, is_list)."""

    def __init__(self, holder: ModelHolder):
        self.holder = holder

    def __call__(self, batch: list[Sequence[Any]]) -> list[Any]:
        served = self.holder.current  # taken once: the whole batch is answered by one version
        if served is None:
            return [RequestError(503, "no model is loaded yet", None, {"Retry-After": "5"})] * len(batch)
        predictor, version = served.predictor, served.version
        requests = [(req[0], req[1]) for req in batch]
        flat = [q for items, _ in requests for q in items]
        try:
            answers = predictor([q.question for q in flat], [q.context for q in flat])
        except UserError:
            answers = None
        results: list[Any] = []
        offset = 0
        for items, is_list in requests:
            if answers is not None:
                mine = answers[offset:offset + len(items)]
            else:
                mine = _one_request(predictor, items, is_list)
            offset += len(items)
            results.append(mine if isinstance(mine, Exception) else _records(mine, items, version, is_list))
        return results
