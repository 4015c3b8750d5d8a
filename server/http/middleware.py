"""ASGI middleware: the request id in and out (``server.foundation.logging.request_id_var``),
one access-log line per request, and the request series (``server.http.metrics``).

It also answers the liveness probe ``GET /health`` itself, before Litestar's router, DI
and response pipeline: a load balancer polls it often, and what it says ("this process's
event loop runs") needs none of them. The route stays declared in
:mod:`server.http.health` for the OpenAPI document and for what this shortcut leaves to it
(other methods, which it refuses with 405; CORS requests).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time

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
        incoming, origin = _request_id_and_origin(scope)
        request_id = incoming if incoming and SAFE_REQUEST_ID.match(incoming) else new_request_id()
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
            if _is_plain_health_check(scope, origin):
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
                if access_log.isEnabledFor(logging.INFO):
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


def _is_plain_health_check(scope: Scope, origin: str | None) -> bool:
    """``GET /health`` without an ``Origin`` (a browser's cross-origin request gets
    the CORS handling of the declared route)."""
    return (
        origin is None and scope["type"] == ScopeType.HTTP and scope["path"] == HEALTH_PATH and scope["method"] == "GET"
    )


def _request_id_and_origin(scope: Scope) -> tuple[str | None, str | None]:
    """The ``X-Request-ID`` and ``Origin`` headers (one pass over the headers)."""
    request_id = origin = None
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            request_id = value.decode("latin-1")
        elif key == b"origin":
            origin = value.decode("latin-1")
    return request_id, origin


_PROCESS_PREFIX = secrets.token_hex(8)
_SEQUENCE = itertools.count(1)


def _new_process_prefix() -> None:
    global _PROCESS_PREFIX, _SEQUENCE
    _PROCESS_PREFIX, _SEQUENCE = secrets.token_hex(8), itertools.count(1)


os.register_at_fork(after_in_child=_new_process_prefix)  # `serve --workers N` forks after import


def new_request_id() -> str:
    """A request id unique across processes and restarts: a random prefix per process, then a
    counter (ids need to be unique, not unguessable; several times cheaper than
    ``uuid4().hex``). 32 hex digits, as before."""
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE):016x}"
