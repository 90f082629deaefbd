"""Every request meets this first (a plain ASGI middleware, before FastAPI's routing):

- an `X-Request-ID`: the client's when it is a sane token, else a new one; echoed on every response;
- on a server bound to loopback, a `Host` other than the bound name or localhost gets 400: a web page
  the user opens cannot drive the server through a DNS name that resolves to 127.0.0.1 (DNS rebinding);
- with an API key, every route but /healthz, /readyz and the page (GET / and /ui/*: static files that
  hold nothing secret; the page asks for the key and sends it) needs `Authorization: Bearer KEY` (401):
  the docs, /openapi.json, /metrics, /v1/model and /v1/versions included;
- a POST must say `Content-Type: application/json` (415): a cross-site form or `text/plain` POST,
  which a browser sends without asking, never reaches the model;
- the page's responses carry a Content-Security-Policy: its own script and style only, requests to this
  server only, no frames, no plugins;
- then one access-log line (id, route, status, ms, windows, version) and the request metrics.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse

access_log = logging.getLogger("uqa.access")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # a load balancer's health checks carry no key
POST_PATHS = frozenset({"/", "/v1/answer"})
PAGE_PREFIX = "/ui/"
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def is_page(method: str, path: str) -> bool:
    """The page and its files: GET (or HEAD) / and /ui/*."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(PAGE_PREFIX))
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Security:
    api_key: str | None = None
    allowed_hosts: frozenset[str] | None = None  # None: any Host (a server bound beyond loopback)
    routes: frozenset[str] = field(default_factory=frozenset)  # metric labels: these paths, else "other"

    @classmethod
    def for_binding(cls, host: str, api_key: str | None, routes: frozenset[str]) -> Security:
        allowed = frozenset(LOOPBACK_NAMES | {host.lower()}) if is_loopback(host) else None
        return cls(api_key, allowed, routes)


def _host_name(value: str) -> str:
    """`Host` without its port: `127.0.0.1:8000` -> 127.0.0.1, `[::1]:8000` -> ::1."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    def __init__(self, app, security: Security, metrics):
        self.app, self.security, self.metrics = app, security, metrics

    def refusal(self, scope) -> tuple[int, str, str | None, dict[str, str]] | None:
        headers = Headers(scope=scope)
        path = scope.get("path", "")
        allowed = self.security.allowed_hosts
        if allowed is not None and _host_name(headers.get("host", "")) not in allowed:
            return (400, f"Host {headers.get('host', '')[:100]!r} is not this server's: a server on loopback answers "
                         "only to localhost, 127.0.0.1, [::1] and the name it was bound to (DNS rebinding protection)",
                    "Host", {})
        key = self.security.api_key
        if key is not None and path not in OPEN_PATHS and not is_page(scope.get("method", ""), path):
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                why = "no API key" if not given else "the API key is wrong"
                return (401, f"{why}: send Authorization: Bearer KEY (uqa serve --api-key-file)", "Authorization",
                        {"WWW-Authenticate": 'Bearer realm="uqa"'})
        if scope.get("method") == "POST" and path in POST_PATHS:  # elsewhere: the router's 405 or 404
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                return (415, f"Content-Type {media or '(none)'!r}: send application/json", "Content-Type", {})
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        note = {"request_id": request_id, "windows": None, "version": None}
        scope.setdefault("state", {})["uqa"] = note
        status = {"code": 500}

        path = scope.get("path", "")
        page = is_page(scope.get("method", ""), path)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", request_id)
                headers.append("X-Content-Type-Options", "nosniff")
                if page:
                    headers.append("Content-Security-Policy", PAGE_POLICY)
                    headers.append("Referrer-Policy", "no-referrer")
            await send(message)

        route = f"{scope.get('method', '')} {path if path in self.security.routes else 'other'}"
        try:
            refused = self.refusal(scope)
            if refused is not None:
                code, message, fld, headers = refused
                await JSONResponse({"error": message, "field": fld}, status_code=code,
                                   headers=headers)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.monotonic() - started
            code = note.get("status") or status["code"]
            self.metrics.observe(route, code, seconds)
            access_log.info("request id=%s route=%s status=%s ms=%.1f windows=%s version=%s", request_id, route, code,
                            seconds * 1000, note["windows"] if note["windows"] is not None else "-",
                            note["version"] or "-")
