"""Litestar query and path parameters with the bounds of ``server.foundation.types``
(Litestar reads parameter constraints from ``Parameter(...)``, not from msgspec ``Meta``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar.params import PathParameter, QueryParameter

from server.foundation.pagination import MAX_CURSOR_LENGTH
from server.foundation.types import INT64_MAX, NO_NUL_PATTERN


def int_query(*, ge: int = 0, le: int = INT64_MAX, **kwargs: Any) -> QueryParameter:
    """A bounded integer query parameter.

    The bounds are repeated as ``schema_extra`` so that the OpenAPI document states them
    exactly (Litestar writes parameter bounds as floats, and ``float(2**63 - 1)`` is 2**63).
    """
    return QueryParameter(ge=ge, le=le, schema_extra={"minimum": ge, "maximum": le}, **kwargs)


def int_path(*, ge: int = 0, le: int = INT64_MAX) -> PathParameter:
    """A bounded integer path parameter (see :func:`int_query`)."""
    return PathParameter(ge=ge, le=le, schema_extra={"minimum": ge, "maximum": le})


def text_query(**kwargs: Any) -> QueryParameter:
    """A text query parameter that refuses NUL (plus any length limits given)."""
    return QueryParameter(pattern=NO_NUL_PATTERN, **kwargs)


def text_path(**kwargs: Any) -> PathParameter:
    """A text path parameter that refuses NUL (plus any length limits given)."""
    return PathParameter(pattern=NO_NUL_PATTERN, **kwargs)


Cursor = Annotated[
    str | None,
    text_query(
        max_length=MAX_CURSOR_LENGTH,
        description="the next_cursor of the previous page (opaque); send the same filters with it",
    ),
]
"""``?cursor=`` of every paginated list (answers are ``{"items": [...], "next_cursor": ...}``)."""
