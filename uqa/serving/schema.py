"""What /v1/answer accepts and returns: pydantic models, so the rules are in one place and in /docs.

Every rule names the field it checks; `validation_error` turns pydantic's errors into one JSON error
that says which field of which item is wrong (`body[2].question`), never a traceback."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

MAX_ITEMS = 64  # questions in one request (a bigger job is `uqa predict --input`)
MAX_QUESTION_CHARS = 2_000
MAX_CONTEXT_CHARS = 100_000
MAX_ID_CHARS = 200


class Question(BaseModel):
    """One question about one context; `id` (optional) is echoed back in the answer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
    context: Annotated[str, Field(min_length=1, max_length=MAX_CONTEXT_CHARS)]
    id: Annotated[str, Field(max_length=MAX_ID_CHARS)] | int | None = None

    @field_validator("question", "context")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        return value


Body = Question | Annotated[list[Question], Field(min_length=1, max_length=MAX_ITEMS)]
BODY = TypeAdapter(Body)


class AnswerOut(BaseModel):
    id: str | int | None
    answer: str = Field(description='the answer text sliced from the context; "" = no answer (SQuAD2 models)')
    score: float
    start: int = Field(description="character offset in the context (-1 for no answer)")
    end: int
    no_answer: bool
    model_version: str = Field(description="the registry version that gave this answer")


class ErrorOut(BaseModel):
    error: str
    field: str | None = None


class RequestError(Exception):
    """A request the server refuses: HTTP status, message, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


_TYPE_NAMES = {"Question", "int", "str", "float", "bool", "none", "list"}


def _field_path(loc: tuple) -> str:
    """pydantic's location -> `body.question` / `body[2].context` (union branches and types dropped)."""
    path = "body"
    for p in loc:
        if isinstance(p, int):
            path += f"[{p}]"
        elif isinstance(p, str) and p.isidentifier() and p not in _TYPE_NAMES:
            path += f".{p}"
    return path


def validation_error(exc: ValidationError, raw: Any) -> RequestError:
    """The first error of the branch the body was meant for (an object: Question; a list: list[Question])."""
    is_list = isinstance(raw, list)
    errors = exc.errors(include_url=False)
    branch = "list[Question]" if is_list else "Question"
    mine = [e for e in errors if not e["loc"] or e["loc"][0] == branch] or errors
    if not isinstance(raw, (dict, list)):
        return RequestError(422, "the body must be a JSON object {question, context[, id]} or a list of them",
                            "body")
    first = mine[0]
    field = _field_path(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field (allowed: question, context, id)"
    elif first["type"] == "missing":
        msg = "field required"
    elif field.endswith(".id"):
        msg = f"must be a string (at most {MAX_ID_CHARS} characters) or an integer"
    return RequestError(422, f"{field}: {msg}", field)


def parse_body(raw_bytes: bytes) -> tuple[list[Question], bool]:
    """The questions in a request body, and whether it was a list. Raises RequestError (4xx)."""
    if not raw_bytes.strip():
        raise RequestError(400, "empty body: send a JSON object {question, context[, id]} or a list of them", "body")
    try:
        raw = json.loads(raw_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the body is not JSON ({exc})", "body") from None
    try:
        parsed = BODY.validate_python(raw)
    except ValidationError as exc:
        raise validation_error(exc, raw) from None
    if isinstance(parsed, list):
        return parsed, True
    return [parsed], False


def request_schema() -> dict[str, Any]:
    """The body's JSON schema, for the OpenAPI document (/docs)."""
    return BODY.json_schema(ref_template="#/components/schemas/{model}")
