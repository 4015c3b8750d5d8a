"""One error shape for REST: RFC 9457 problem details with a stable ``code``.

Domain services raise :class:`~server.foundation.errors.AppError` subclasses; the
handlers here turn those, Litestar's own HTTP exceptions and anything unexpected
into ``application/problem+json`` bodies. A stack trace never reaches a client.

Litestar's own ``ProblemDetailsPlugin`` (2.x) is not used: it would change this contract.
Its conversion hooks see the exception but not the request, so no body could carry
``instance`` (the path) or ``request_id``; converted ``HTTPException`` bodies are
``{status, title, detail}`` with neither ``type`` nor ``code``; a validation error stays
``400`` with its field list under ``extra`` (not ``422 validation_failed`` with ``errors``
and the first field named in ``detail``); and ``AppError`` and unexpected exceptions
(500, logged here) would still need these handlers.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from server.foundation.errors import AppError
from server.foundation.logging import request_id_var
from server.foundation.types import NO_NUL_PATTERN

log = logging.getLogger("lounges.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://lounges.dev/problems/"


class FieldError(msgspec.Struct):
    """One refused input of a ``422 validation_failed``: where (``source``: body, query, path,
    header) and which (``key``)."""

    message: str
    key: str | None = None
    source: str | None = None


class ProblemDetails(msgspec.Struct):
    """RFC 9457 body of every REST error (documented in the OpenAPI schema). ``errors`` comes
    with ``422 validation_failed``; a route's docs name any further member (e.g. ``retry_after``)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    request_id: str | None = None
    errors: list[FieldError] | None = None


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses=`` entries for the problems a route may answer."""
    return {
        status: ResponseSpec(
            data_container=ProblemDetails,
            description=_HTTP_CODES.get(status, ("", "Error"))[1],
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }


_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_failed", "Validation failed"),
    429: ("rate_limited", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}


def problem(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    """Build a problem-details response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def handle_app_error(request: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, Any]]:
    return problem(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra,
    )


def handle_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """422 whose ``detail`` names the first refused field; ``errors`` lists each (``key``, ``source``, ``message``)."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    for error in errors:
        if isinstance(error, dict) and repr(NO_NUL_PATTERN) in str(error.get("message", "")):
            error["message"] = "Expected text without the NUL character (U+0000)"
    first = next((error for error in errors if isinstance(error, dict) and error.get("key")), None)
    source = first and getattr(first.get("source"), "value", first.get("source"))
    detail = f"{first['message']} (at {source} `{first['key']}`)" if first else str(exc.detail)
    return problem(
        request,
        status=422,
        code="validation_failed",
        title="Validation failed",
        detail=detail,
        extra={"errors": errors},
    )


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        return handle_unexpected(request, exc)
    code, title = _HTTP_CODES.get(status, ("http_error", "HTTP error"))
    return problem(request, status=status, code=code, title=title, detail=str(exc.detail), headers=exc.headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        request,
        status=HTTP_500_INTERNAL_SERVER_ERROR,
        code="internal_error",
        title="Internal server error",
        detail="An unexpected error occurred; it has been logged.",
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: handle_app_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
