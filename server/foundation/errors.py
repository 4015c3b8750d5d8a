"""The domain's failures: :class:`AppError` and its subclasses, free of any framework.

Each fixes an HTTP-like ``status``, a stable ``code`` and a ``title``; the transport
maps them to its own answer (REST: RFC 9457 problem details in
``server.http.problems``; the socket: protocol errors in the gateway).
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A failure the client can act on. Subclasses fix status, code and title."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra


class BadRequest(AppError):
    """The request is well-formed but cannot be processed as asked."""


class ValidationFailed(AppError):
    """The request body, query or path did not pass validation."""

    status, code, title = 422, "validation_failed", "Validation failed"


class Unauthorized(AppError):
    """No valid credentials were presented."""

    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="lounges"'})
        super().__init__(detail, **kwargs)


class Forbidden(AppError):
    """The caller is known but may not do this."""

    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    """The resource does not exist, or the caller may not know it does."""

    status, code, title = 404, "not_found", "Not found"


class Conflict(AppError):
    """The request conflicts with the current state of the resource."""

    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    """The request body is over a configured limit."""

    status, code, title = 413, "payload_too_large", "Payload too large"


class RateLimited(AppError):
    """Too many requests; ``retry_after`` seconds until the next may pass."""

    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None, **kwargs: Any) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, retry_after=retry_after, **kwargs)


class Unavailable(AppError):
    """A dependency is down or the feature is not configured."""

    status, code, title = 503, "unavailable", "Service unavailable"
