"""A request -> its answers with the model being served: tokenize, compute (the scheduler), answer.

The answers are `uqa.model.predict.Predictor`'s (the same windows, span search and no-answer threshold as
`uqa predict` and evaluate); `Predictor.prepare` runs when the request arrives, the forward passes
when the scheduler gives its windows a turn, `Predictor.finish` when the last one is done. A question
too long for the model's window is cut to fit (the answer says `question_truncated`), so every
request the OpenAPI schema allows is answered. Hugging Face's parameters map onto the same steps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uqa.errors import UserError
from uqa.serving.models import ModelHolder, ServedModel
from uqa.serving.scheduler import Job, WindowScheduler
from uqa.serving.schema import Ask, QAParameters, RequestError


def check_parameters(params: QAParameters | None, predictor) -> None:
    """doc_stride and max_seq_len may only repeat the version's own (answers stay those evaluate scored)."""
    if params is None:
        return
    for name, value, own in (("doc_stride", params.doc_stride, predictor.stride),
                             ("max_seq_len", params.max_seq_len, predictor.max_seq_length)):
        if value is not None and value != own:
            raise RequestError(422, f"body.parameters.{name}: {value} is not this version's {own}; the windows are "
                                    f"the ones the version was trained and evaluated with (leave it out or send {own})",
                               f"body.parameters.{name}")


def _threshold(params: QAParameters | None, predictor) -> Any:
    """The no-answer threshold for this request (... = the version's)."""
    choice = params.handle_impossible_answer if params else None
    if choice is None:
        return ...
    if choice is False:
        return None
    return predictor.no_answer_threshold if predictor.no_answer_threshold is not None else 0.0


def _ours(ranked, items, version: str, is_list: bool, truncated) -> list[dict[str, Any]]:
    out = []
    for i, (item, answers) in enumerate(zip(items, ranked, strict=True)):
        a = answers[0]
        qid = item.id if item.id is not None else (i if is_list else None)
        out.append({"id": qid, "answer": a.answer, "score": round(a.score, 6), "start": a.start, "end": a.end,
                    "no_answer": a.no_answer, "model_version": version, "question_truncated": bool(truncated[i])})
    return out


def _hf(ranked, items, version: str, is_list: bool, top_k: int, truncated) -> Any:
    out = []
    for i, (item, answers) in enumerate(zip(items, ranked, strict=True)):
        qid = item.id if item.id is not None else (i if is_list else None)
        elements = [{"answer": a.answer, "score": round(a.score, 6),
                     "start": 0 if a.no_answer else a.start, "end": 0 if a.no_answer else a.end,  # HF's "" at 0
                     "id": qid, "model_version": version, "no_answer": a.no_answer,
                     "question_truncated": bool(truncated[i])} for a in answers]
        out.append(elements[0] if top_k == 1 else elements)
    return out if is_list else out[0]


def prepare_job(served: ServedModel, ask: Ask, deadline: float, future: asyncio.Future) -> Job:
    """Tokenize the request with the served version (in a helper thread: the caller awaits it)."""
    predictor = served.predictor
    params = ask.parameters
    check_parameters(params, predictor)
    questions, contexts = [q.question for q in ask.items], [q.context for q in ask.items]
    try:
        prepared = predictor.prepare(questions, contexts, truncate_questions=True,
                                     max_question_tokens=params.max_question_len if params else None)
    except UserError as exc:
        raise RequestError(422, str(exc), "body") from None
    top_k = ask.top_k
    longest = params.max_answer_len if params else None
    threshold = _threshold(params, predictor)

    def finish(prepared, logits) -> Any:
        ranked = predictor.finish(prepared, logits, top_k=top_k, max_answer_length=longest,
                                  no_answer_threshold=threshold)
        if ask.hf:
            return _hf(ranked, ask.items, served.version, ask.is_list, top_k, prepared.truncated)
        result = _ours(ranked, ask.items, served.version, ask.is_list, prepared.truncated)
        return result if ask.is_list else result[0]

    return Job(served, prepared, finish, future, deadline)


async def answer(holder: ModelHolder, scheduler: WindowScheduler, ask: Ask, on_job=None) -> tuple[Any, Job]:
    """The request's answers, computed in turn with everyone else's. Raises RequestError (422 cap, 503 not
    ready), scheduler.Overloaded (503), asyncio.TimeoutError (the deadline; the job is dropped)."""
    served = holder.current  # taken once: the whole request is answered by one version
    if served is None:
        raise RequestError(503, "no model is loaded yet", None, {"Retry-After": "5"})
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + scheduler.settings.timeout_s
    future = loop.create_future()
    job = await asyncio.wait_for(loop.run_in_executor(scheduler.helper, prepare_job, served, ask, deadline, future),
                                 scheduler.settings.timeout_s)
    if on_job is not None:
        on_job(job)
    scheduler.admit(job)
    try:
        result = await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        job.cancel("deadline")
        future.cancel()
        raise
    except asyncio.CancelledError:  # the client went away: its remaining windows are dropped
        job.cancel("the client went away")
        future.cancel()
        raise
    return result, job
