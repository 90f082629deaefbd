"""The HTTP API: POST /v1/answer, GET /healthz, /readyz, /v1/model; OpenAPI at /docs.

Everything that arrives is a stranger's: the body is read with a byte limit (413), parsed and
validated here (400/422 naming the field), queued with a bound (503 + Retry-After), and any
unexpected failure is answered with a JSON 500 that carries no traceback (it goes to the log)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from uqa.serving.answering import BatchAnswerer
from uqa.serving.batcher import BatchSettings, DynamicBatcher, Overloaded
from uqa.serving.models import ModelHolder, registration_of
from uqa.serving.schema import AnswerOut, ErrorOut, RequestError, parse_body, request_schema

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    batch: BatchSettings
    max_body_bytes: int = 1 << 20  # 1 MiB: 64 questions with long contexts fit


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
        from uqa.registry import Registry

        return Registry(source.root, resolved.name).record(resolved.version) or {}
    except Exception:  # an unreadable index must not break /v1/model: the version's own files still answer
        log.warning("could not read the registry record of %s %s", resolved.name, resolved.version)
        return {}


def create_app(holder: ModelHolder, settings: ServeSettings) -> FastAPI:
    batcher = DynamicBatcher(BatchAnswerer(holder), settings.batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        holder.start_watching()
        try:
            yield
        finally:
            holder.stop()
            await batcher.stop()

    app = FastAPI(title="uqa-pipeline QA server", version="1",
                  description="Extractive question answering with the registered model (Urdu, UQA).",
                  lifespan=lifespan)
    app.state.batcher, app.state.holder = batcher, holder

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return _error(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return _error(503, str(exc), None, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        return _error(422, f"{field}: {first.get('msg', 'invalid')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.get("/healthz", summary="alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="a model is loaded", responses={503: {"model": ErrorOut}})
    async def readyz():
        served = holder.current
        if served is None:
            return _error(503, "no model is loaded yet", None, {"Retry-After": "5"})
        return {"ready": True, "model_version": served.version}

    @app.get("/v1/model", summary="the model being served: version, stage, inference settings, lineage")
    async def model_info():
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
            "batching": {**asdict(settings.batch), "waiting": batcher.waiting, **asdict(batcher.stats)},
        }

    @app.post("/v1/answer", summary="answer one question or a list of them",
              response_model=AnswerOut | list[AnswerOut],
              responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
                         503: {"model": ErrorOut}},
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": request_schema()}}}})
    async def answer(request: Request):
        started = time.monotonic()
        body = await read_limited(request, settings.max_body_bytes)
        items, is_list = parse_body(body)
        result = await batcher.submit((items, is_list), size=len(items))
        log.debug("answered %d question(s) in %.1f ms", len(items), (time.monotonic() - started) * 1000)
        return JSONResponse(result if is_list else result[0])

    def openapi() -> dict[str, Any]:  # the request body's Question schema among the components
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            defs = request_schema().get("$defs", {})
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
