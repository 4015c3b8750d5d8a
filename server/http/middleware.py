"""ASGI middleware: the request id in and out (``server.foundation.logging.request_id_var``),
one access-log line per request, and the request series (``server.http.metrics``).

It also answers the liveness probe ``GET /health`` itself, before Litestar's router, DI
and response pipeline: a load balancer polls it often, and what it says ("this process's
event loop runs") needs none of them. The route stays declared in
:mod:`server.http.health` for the OpenAPI document and for what this shortcut leaves to it
(other methods, which it refuses with 405; CORS requests).
"""

from __future__ import annotations

import logging
import time
import uuid

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from server.foundation import metrics
from server.foundation.logging import SAFE_REQUEST_ID, request_id_var
from server.http.metrics import METRICS_PATH, observe_request

access_log = logging.getLogger("lounges.access")


HEALTH_PATH = "/health"
HEALTH_BODY = b'{"status":"ok","checks":{}}'  # what the declared route answers
_HEALTH_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(HEALTH_BODY)).encode())]


class RequestContextMiddleware:
    """ASGI middleware: request id in and out, one access-log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if _is_plain_health_check(scope):
                scope["path_template"] = HEALTH_PATH
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _HEALTH_HEADERS,
                }
                body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": HEALTH_BODY, "more_body": False}
                await send_with_id(start)
                await send_with_id(body)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == ScopeType.HTTP and scope["path"] != METRICS_PATH:  # scrapes are no news
                elapsed = time.perf_counter() - started
                if metrics.collecting:
                    observe_request(scope, status, elapsed)
                access_log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            request_id_var.reset(token)


def _is_plain_health_check(scope: Scope) -> bool:
    """``GET /health`` without an ``Origin`` (a browser's cross-origin request gets
    the CORS handling of the declared route)."""
    return (
        scope["type"] == ScopeType.HTTP
        and scope["path"] == HEALTH_PATH
        and scope["method"] == "GET"
        and _header(scope, b"origin") is None
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None
