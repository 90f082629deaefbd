"""What the answer routes accept and return: pydantic models, so the rules are in one place and in /docs.

Two request bodies, on `POST /` and `POST /v1/answer` alike:
- ours: one `{question, context[, id]}` or a list of up to 64;
- the Hugging Face question-answering task payload that `huggingface_hub.InferenceClient` sends:
  `{"inputs": {question, context} | [...], "parameters": {top_k, handle_impossible_answer, ...}}`,
  answered in Hugging Face's shape (`answer`, `score`, `start`, `end`; a list for `top_k` > 1).

Every rule names the field it checks; `validation_error` turns pydantic's errors into one JSON error
that says which field of which item is wrong (`body[2].question`), never a traceback. What no JSON
schema can say, the server answers with 422 too, as documented in the OpenAPI: a request whose
contexts need more windows of the model than the per-request cap."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

MAX_ITEMS = 64  # questions in one request (a bigger job is `uqa predict --input`)
MAX_QUESTION_CHARS = 2_000  # longer than the model's window allows: cut to fit, and the answer says so
MAX_CONTEXT_CHARS = 100_000
MAX_ID_CHARS = 200
MAX_TOP_K = 20
MAX_TOKENS = 4096  # bound on the token-count parameters (max_answer_len, max_question_len, ...)
INT64 = 2**63 - 1


# "not only whitespace", as one regular expression for the schema and the server alike: the characters
# Python strips (what `uqa predict` refuses as empty) spelled out, so that JSON Schema's \s (ECMAScript's,
# which differs) plays no part
_SPACES = "".join(f"\\u{c:04x}" for c in range(0x110000) if chr(c).isspace())
NOT_BLANK = f"[^{_SPACES}]"


def _whole(value: Any) -> Any:
    """JSON Schema's integers include 396.0 (a number without a fraction): read it as 396."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= INT64:
        return int(value)
    return value


def whole(**constraints: Any) -> Any:
    """An integer field (strict otherwise: "396" and true are not integers) with its bounds."""
    return Annotated[int, Field(**constraints), BeforeValidator(_whole)]  # in this order: the bounds in the schema


Int64 = whole(ge=-INT64, le=INT64)
TopK = whole(ge=1, le=MAX_TOP_K, description="the k best answers, best first")
AnswerTokens = whole(ge=1, le=MAX_TOKENS, description="the longest answer, in tokens")
QuestionTokens = whole(ge=1, le=MAX_TOKENS, description="questions are cut to this many tokens")
Tokens0 = whole(ge=0, le=MAX_TOKENS)
Tokens1 = whole(ge=1, le=MAX_TOKENS)


class Question(BaseModel):
    """One question about one context; `id` (optional) is echoed back in the answer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS, pattern=NOT_BLANK)]
    context: Annotated[str, Field(min_length=1, max_length=MAX_CONTEXT_CHARS, pattern=NOT_BLANK)]
    id: Annotated[str, Field(max_length=MAX_ID_CHARS)] | Int64 | None = None



Questions = Annotated[list[Question], Field(min_length=1, max_length=MAX_ITEMS)]


class QAParameters(BaseModel):
    """The Hugging Face question-answering parameters. `doc_stride` and `max_seq_len` are the served
    version's own (a request may repeat them, not change them: answers stay those evaluate scored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: TopK | None = None
    handle_impossible_answer: bool | None = Field(
        None, description="true: answer \"\" when the model says the context has none (the version's no-answer "
                          "threshold, else null > best span); false: always a span; absent: as the version was "
                          "evaluated")
    max_answer_len: AnswerTokens | None = None
    max_question_len: QuestionTokens | None = None
    doc_stride: Tokens0 | None = None
    max_seq_len: Tokens1 | None = None
    align_to_words: bool | None = Field(None, description="accepted; answers are always whole tokens sliced "
                                                          "from the context")


class HFRequest(BaseModel):
    """The Hugging Face question-answering task payload."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Question | Questions
    parameters: QAParameters | None = None


Body = HFRequest | Question | Questions
BODY = TypeAdapter(Body)


class AnswerOut(BaseModel):
    id: str | int | None
    answer: str = Field(description='the answer text sliced from the context; "" = no answer (SQuAD2 models)')
    score: float
    start: int = Field(description="character offset in the context (-1 for no answer)")
    end: int
    no_answer: bool
    model_version: str = Field(description="the registry version that gave this answer")
    question_truncated: bool = Field(False, description="the question was cut to fit the model's window")


class HFAnswer(BaseModel):
    """Hugging Face's answer element, with our fields added."""

    answer: str
    score: float
    start: int = Field(description="character offset in the context (0 for no answer, as Hugging Face)")
    end: int
    id: str | int | None = None
    model_version: str
    no_answer: bool = False
    question_truncated: bool = False


ANSWER_RESPONSE = AnswerOut | list[AnswerOut] | HFAnswer | list[HFAnswer] | list[list[HFAnswer]]


class PeriodOut(BaseModel):
    """A time a version was in prod (UTC, ISO 8601; until null: prod now)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(alias="from")
    until: str | None


class VersionOut(BaseModel):
    version: str
    registered_at: str | None = Field(description="UTC, ISO 8601 (GTO's registration tag in git, else the index)")
    f1: float | None
    exact_match: float | None
    n_questions: int | None
    mode: str | None = Field(description="answerable-only or squad2")
    eval_set: str | None = Field(description="which questions the F1 was measured on (a hash): F1s of different "
                                             "sets are not comparable")
    promoted: bool
    reason: str | None
    prod: bool = Field(description="in prod now")
    prod_periods: list[PeriodOut]
    pruned: str | None = Field(description="when its files were pruned (register.keep_last); its record stays")


class ProdPeriodOut(PeriodOut):
    version: str


class HistoryOut(BaseModel):
    """The registry's history (uqa/registry/history.py); name null: the server answers with a model
    directory, not a registry version."""

    name: str | None
    served: str | None = Field(description="the version this server answers with now")
    prod: str | None = None
    dates_from: str | None = None
    versions: list[VersionOut] = Field(description="oldest first")
    truncated: bool = False
    prod_history: list[ProdPeriodOut] = Field(description="oldest first")
    note: str | None = None


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


@dataclass
class Ask:
    """A parsed request: its questions, the protocol it came in, and (HF) its parameters."""

    items: list[Question]
    is_list: bool
    hf: bool = False
    parameters: QAParameters | None = None

    @property
    def top_k(self) -> int:
        return (self.parameters.top_k if self.parameters else None) or 1


_TYPE_NAMES = {"Question", "HFRequest", "QAParameters", "int", "str", "float", "bool", "none", "list",
               "constrained-int", "constrained-str"}


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
    """The first error of the branch the body was meant for (HF: an object with `inputs`; ours: an object
    or a list of objects)."""
    if not isinstance(raw, (dict, list)):
        return RequestError(422, "the body must be a JSON object {question, context[, id]}, a list of them, or "
                                 '{"inputs": ..., "parameters": ...}', "body")
    errors = exc.errors(include_url=False)
    branch = "HFRequest" if isinstance(raw, dict) and "inputs" in raw else (
        "list[Question]" if isinstance(raw, list) else "Question")
    mine = [e for e in errors if e["loc"] and e["loc"][0] == branch] or errors
    first = mine[0]
    field = _field_path(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = {"HFRequest": "inputs, parameters"}.get(branch, "question, context, id")
        msg = f"unknown field (allowed: {allowed})" if ".parameters." not in field else \
            f"unknown parameter (allowed: {', '.join(QAParameters.model_fields)})"
    elif first["type"] == "missing":
        msg = "field required"
    elif first["type"] == "string_pattern_mismatch":
        msg = "must not be empty or only whitespace"
    elif field.endswith(".id"):
        msg = f"must be a string (at most {MAX_ID_CHARS} characters) or a 64-bit integer"
    return RequestError(422, f"{field}: {msg}", field)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw_bytes: bytes) -> Ask:
    """The questions in a request body. Raises RequestError (4xx) for whatever a stranger may send:
    not UTF-8, not JSON, NaN/Infinity, nesting too deep for the parser, integers too long to read."""
    if not raw_bytes.strip():
        raise RequestError(400, "empty body: send a JSON object {question, context[, id]} or a list of them", "body")
    try:
        raw = json.loads(raw_bytes, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not UTF-8 text", "body") from None
    except RecursionError:
        raise RequestError(400, "the body is not JSON this server reads (nested too deeply)", "body") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"the body is not JSON ({exc})", "body") from None
    except ValueError as exc:  # an integer over Python's digit limit (4300), NaN / Infinity
        what = "a number in it is too long to read" if "digits" in str(exc) else str(exc)
        raise RequestError(400, f"the body is not JSON this server reads: {what}", "body") from None
    try:
        parsed = BODY.validate_python(raw)
    except ValidationError as exc:
        raise validation_error(exc, raw) from None
    except RecursionError:
        raise RequestError(400, "the body is nested too deeply", "body") from None
    if isinstance(parsed, HFRequest):
        inputs = parsed.inputs
        return Ask(inputs if isinstance(inputs, list) else [inputs], isinstance(inputs, list), hf=True,
                   parameters=parsed.parameters)
    if isinstance(parsed, list):
        return Ask(parsed, True)
    return Ask([parsed], False)


def request_schema() -> dict[str, Any]:
    """The body's JSON schema, for the OpenAPI document (/docs)."""
    return BODY.json_schema(ref_template="#/components/schemas/{model}")
