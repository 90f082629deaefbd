"""The HTTP API: POST / and /v1/answer (ours and the Hugging Face QA protocol), GET /healthz, /readyz,
/v1/model, /v1/versions (the registry's history), /metrics; OpenAPI at /openapi.json, docs at /docs; and
the page at GET / (uqa/serving/static: ask the model, see the answer in its context and the history).

Everything that arrives is a stranger's: the guard (uqa/serving/guard.py) checks Host, API key and
Content-Type first; the body is read with a byte limit (413), parsed and validated here (400/422
naming the field), tokenized and counted in windows (422 over the per-request cap, 503 with
Retry-After when the queue is full), answered in turn with other requests (uqa/serving/scheduler.py)
within a deadline (504), and dropped when its client goes away. Any unexpected failure is a JSON 500
that carries no traceback (it goes to the log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from uqa.errors import UserError, first_line
from uqa.serving.answering import answer
from uqa.serving.guard import Guard, Security
from uqa.serving.metrics import ServerMetrics
from uqa.serving.models import ModelHolder, registration_of
from uqa.serving.scheduler import Overloaded, ScheduleSettings, TooMuchWork, WindowScheduler
from uqa.serving.schema import ANSWER_RESPONSE, ErrorOut, HistoryOut, RequestError, parse_body, request_schema

log = logging.getLogger(__name__)

ROUTES = frozenset({"/", "/v1/answer", "/healthz", "/readyz", "/v1/model", "/v1/versions", "/metrics", "/docs",
                    "/openapi.json", "/docs/oauth2-redirect", "/redoc", "/ui/app.js", "/ui/app.css"})
STATIC_DIR = Path(__file__).parent / "static"  # the page: shipped in the package (pyproject package-data)
CLIENT_GONE = 499  # nginx's name for it: the client closed the connection before the answer


@dataclass
class ServeSettings:
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    max_body_bytes: int = 1 << 20  # 1 MiB: 64 questions with long contexts fit
    security: Security = field(default_factory=Security)


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is over `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "Content-Length is not a number", "Content-Length")
        if int(declared) > limit:
            raise RequestError(413, f"the body is {int(declared)} bytes; the limit is {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _registry_record(source, resolved) -> dict[str, Any]:
    """The version's record in the registry index (metrics, promotion, lineage where the pipeline
    records it); {} for a model directory outside a registry."""
    if not resolved.name or getattr(source, "root", None) is None:
        return {}
    try:
        from uqa.registry.store import Registry

        return Registry(source.root, resolved.name).record(resolved.version) or {}
    except Exception:  # an unreadable index must not break /v1/model: the version's own files still answer
        log.warning("could not read the registry record of %s %s", resolved.name, resolved.version)
        return {}


async def _client_gone(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


def create_app(holder: ModelHolder, settings: ServeSettings) -> FastAPI:
    scheduler = WindowScheduler(settings.schedule)
    metrics = ServerMetrics(holder, scheduler)
    scheduler.on_pass = metrics.forward_windows.observe

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await scheduler.start()
        holder.start_watching()
        try:
            yield
        finally:
            holder.stop()
            await scheduler.stop()

    app = FastAPI(title="uqa-pipeline QA server", version="2",
                  description="Extractive question answering with the registered model (Urdu, UQA). POST / and "
                              "/v1/answer take {question, context[, id]} (or a list), or the Hugging Face "
                              "question-answering payload {inputs, parameters}.",
                  lifespan=lifespan)
    app.state.scheduler, app.state.holder, app.state.metrics = scheduler, holder, metrics
    _add_error_handlers(app, settings)
    _add_info_routes(app, holder, scheduler, metrics, settings)
    _add_answer_routes(app, holder, scheduler, metrics, settings)
    _add_page_routes(app, holder)
    _install_openapi(app, holder, settings)
    # outermost in Starlette's stack: the guard sees every request, refused or not
    app.add_middleware(Guard, security=settings.security, metrics=metrics)
    return app


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Every refusal a JSON error naming the field, never a traceback (a 500 goes to the log)."""
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _error(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return _error(503, str(exc), None, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooMuchWork)
    async def _too_much(request: Request, exc: TooMuchWork):
        return _error(422, str(exc), "body")

    @app.exception_handler(asyncio.TimeoutError)
    async def _late(request: Request, exc: asyncio.TimeoutError):
        return _error(504, f"no answer within the request deadline ({settings.schedule.timeout_s:g} s, "
                           "--request-timeout): its remaining work was dropped; send fewer or shorter contexts")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        return _error(422, f"{where}: {first.get('msg', 'invalid')}", where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _add_info_routes(app: FastAPI, holder: ModelHolder, scheduler: WindowScheduler, metrics: ServerMetrics,
                     settings: ServeSettings) -> None:
    """/healthz and /readyz (open to a load balancer), /v1/model, /metrics."""
    @app.get("/healthz", summary="alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="a model is loaded", responses={503: {"model": ErrorOut}})
    async def readyz():
        served = holder.current
        if served is None:
            return _error(503, "no model is loaded yet", None, {"Retry-After": "5"})
        return {"ready": True, "model_version": served.version}

    @app.get("/v1/model", summary="the model being served: version, stage, inference settings, lineage",
             responses={503: {"model": ErrorOut}})
    async def model_info() -> dict[str, Any]:
        served = holder.current
        if served is None:
            return _error(503, "no model is loaded yet", None, {"Retry-After": "5"})
        p, r = served.predictor, served.resolved
        return {
            "name": r.name, "version": r.version, "stage": r.stage, "model": holder.source.spec,
            "path": str(r.path), "backend": served.backend, "backend_notes": served.notes,
            "follows_stage": holder.source.follows, "last_follow_error": holder.last_error,
            "refused": {k: v for k, v in holder.refused.items() if k != "fingerprint"} if holder.refused else None,
            "swaps": holder.swaps, "loaded_at": served.loaded_at, "load_seconds": round(served.load_seconds, 3),
            "inference": {"max_seq_length": p.max_seq_length, "stride": p.stride, "n_best": p.n_best,
                          "max_answer_length": p.max_answer_length, "no_answer_threshold": p.no_answer_threshold,
                          "sources": p.sources, "windows_per_forward": p.batch_size},
            "lineage": {**registration_of(r.path), **_registry_record(holder.source, r)},
            "scheduling": {**asdict(settings.schedule), "waiting_windows": scheduler.waiting_windows,
                           "waiting_requests": scheduler.waiting_requests, **asdict(scheduler.stats)},
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}},
                                          "application/openmetrics-text": {"schema": {"type": "string"}}}}})
    async def prometheus(request: Request):
        body, media_type = metrics.text(request.headers.get("accept", ""))
        return Response(body, media_type=media_type)


def _add_answer_routes(app: FastAPI, holder: ModelHolder, scheduler: WindowScheduler, metrics: ServerMetrics,
                       settings: ServeSettings) -> None:
    """POST /v1/answer and POST /: ours and the Hugging Face protocol, answered in turn with the others."""
    answer_doc = {
        "summary": "answer one question or a list (ours), or the Hugging Face question-answering payload",
        "response_model": ANSWER_RESPONSE,
        "responses": {413: {"model": ErrorOut, "description": "the body is over --max-body-bytes"},
                      422: {"model": ErrorOut,
                            "description": "a field is wrong (named in `field`), or the request needs more windows of "
                                           "the model than --max-request-windows (the count and the cap are named), "
                                           "or a parameter changes the version's windows (doc_stride, max_seq_len)"},
                      503: {"model": ErrorOut, "description": "the queue is full (Retry-After) or no model is loaded"},
                      504: {"model": ErrorOut, "description": "no answer within --request-timeout"}},
        "openapi_extra": {"requestBody": {"required": True,
                                          "content": {"application/json": {"schema": request_schema()}}}},
    }

    async def answer_route(request: Request):
        note = request.state.uqa
        ask = parse_body(await read_limited(request, settings.max_body_bytes))

        def on_job(job) -> None:
            note.update(windows=job.windows, version=job.served.version)

        work = asyncio.ensure_future(answer(holder, scheduler, ask, on_job=on_job))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():  # the client went away: drop its work
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            note["status"] = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)
        result, job = work.result()  # its exceptions go to the handlers above
        metrics.request_windows.observe(job.windows)
        return JSONResponse(result)

    app.add_api_route("/v1/answer", answer_route, methods=["POST"], **answer_doc)
    app.add_api_route("/", answer_route, methods=["POST"], name="answer_root", **answer_doc)


def _add_page_routes(app: FastAPI, holder: ModelHolder) -> None:
    """GET / (the page), /ui/* (its script and style) and GET /v1/versions (the history it draws)."""
    from uqa.registry.history import HistoryCache

    cache, lock = HistoryCache(), threading.Lock()

    def read_history(root: Path, name: str) -> dict[str, Any]:
        with lock:  # one reader at a time: a page polling from many tabs parses the tags once
            return cache.get(root, name)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

    @app.get("/v1/versions", summary="the registry's history: every version with its date, F1 and promotion, and "
             "which version was prod when", response_model=HistoryOut, responses={503: {"model": ErrorOut}})
    async def versions():
        source, served = holder.source, holder.current
        name, root = getattr(source, "name", None), getattr(source, "root", None)
        now = served.version if served else None
        if not name or root is None:
            return {"name": None, "served": now, "versions": [], "prod_history": [],
                    "note": "this server answers with a model directory, not a registry version: no history"}
        try:
            history = await asyncio.to_thread(read_history, Path(root), name)
        except UserError as exc:  # an unreadable registry is said, never shown as an empty history
            return _error(503, f"the registry history of {name} cannot be read: {first_line(exc)}", None)
        return {**history, "served": now}


def _install_openapi(app: FastAPI, holder: ModelHolder, settings: ServeSettings) -> None:
    """/openapi.json as the served version's contract (redone after a swap)."""
    documented: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:  # the served version's windows are part of the contract: redone on a swap
        served = holder.current
        key = (served.version, served.predictor.stride, served.predictor.max_seq_length) if served else None
        if app.openapi_schema is None or documented.get("for") != key:
            app.openapi_schema = _openapi(app, settings.security.api_key is not None, served)
            documented["for"] = key
        return app.openapi_schema

    app.openapi = openapi


def _openapi(app: FastAPI, with_key: bool, served=None) -> dict[str, Any]:
    """FastAPI's document, plus the request body's schemas (doc_stride and max_seq_len: the served
    version's values, the only ones accepted), the errors every route can answer (Host, key,
    Content-Type, 500) and, with an API key, the bearer scheme on every route but the health checks."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(request_schema().get("$defs", {}))
    if served is not None:
        fields = components["schemas"]["QAParameters"]["properties"]
        for name, own in (("doc_stride", served.predictor.stride), ("max_seq_len", served.predictor.max_seq_length)):
            fields[name] = {"anyOf": [{"type": "integer", "const": own}, {"type": "null"}], "default": None,
                            "title": fields[name].get("title", name),
                            "description": f"this version's {name} ({own}); any other value is refused (422)"}
    components["schemas"].setdefault("ErrorOut", ErrorOut.model_json_schema())
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
    if with_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.setdefault("400", {"description": "a Host that is not this server's (loopback), or a body "
                                                        "that is not JSON", **error})
            responses.setdefault("500", {"description": "an internal error (no traceback; see the log)", **error})
            if method == "post":
                responses.setdefault("415", {"description": "Content-Type is not application/json", **error})
            if with_key and path not in ("/healthz", "/readyz"):
                operation["security"] = [{"bearer": []}]
                responses.setdefault("401", {"description": "no API key, or a wrong one", **error})
    return schema
