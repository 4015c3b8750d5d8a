"""Keyset pagination (the cursor codec and :func:`keyset_page`) and safe substring search,
shared by every list endpoint.

Every list the API answers is ``{"items": [...], "next_cursor": str | null}``: pass
``next_cursor`` back as ``?cursor=`` for the next page; null means there is none. A
cursor is opaque to clients: here it is the sort key of the page's last row, as URL-safe
base64 of a JSON array, and it is read back only against the key it was made for.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from server.foundation.database import fetch
from server.foundation.errors import ValidationFailed

MAX_CURSOR_LENGTH = 1024
"""The longest cursor any list hands out (a FAQ's category and a page's slug are the longest keys)."""
_INT_BOUNDS = {"integer": 2**31, "bigint": 2**63}


def _is_int(kind: str, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT_BOUNDS[kind] <= value < _INT_BOUNDS[kind]


# Per SQL type a key may have: does a cursor's JSON value fit it, and the Python value it stands for.
_TYPES: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any]]] = {
    "timestamptz": (lambda value: isinstance(value, str), datetime.fromisoformat),
    "uuid": (lambda value: isinstance(value, str), uuid.UUID),
    "text": (lambda value: isinstance(value, str) and "\x00" not in value, str),
    "boolean": (lambda value: isinstance(value, bool), bool),
    "integer": (lambda value: _is_int("integer", value), int),
    "bigint": (lambda value: _is_int("bigint", value), int),
}


def _parse(kind: str, value: Any) -> Any:
    """A cursor's JSON value as the Python value of SQL type ``kind``; ValueError if it is not one."""
    fits, parse = _TYPES[kind]
    if not fits(value):
        raise ValueError(f"not a {kind}")
    parsed = parse(value)
    if isinstance(parsed, datetime) and parsed.tzinfo is None:
        raise ValueError("naive timestamp")
    return parsed


def _invalid() -> ValidationFailed:
    return ValidationFailed("the cursor is not one this API handed out", code="invalid_cursor")


def encode_cursor(values: Sequence[Any]) -> str:
    """An opaque cursor for a position given by its sort key's values (timestamps, UUIDs,
    text, booleans, integers)."""
    raw = msgspec.json.encode([value.isoformat() if isinstance(value, datetime) else value for value in values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, types: Sequence[str]) -> list[Any]:
    """The values of a cursor from :func:`encode_cursor` whose key has these SQL ``types``
    (``timestamptz``, ``uuid``, ``text``, ``boolean``, ``integer``, ``bigint``);
    422 ``invalid_cursor`` for anything else, a cursor of another list's key included."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise _invalid()
    try:
        values = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("wrong shape")
        return [_parse(kind, value) for kind, value in zip(types, values, strict=True)]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, msgspec.DecodeError):
        raise _invalid() from None


@dataclass(frozen=True, slots=True)
class SortKey:
    """A leading part of a keyset order: the SQL ``expression`` sorted by, its SQL ``type``,
    and the ``column`` the rows carry it under (by default the expression's last name)."""

    expression: str
    type: str
    column: str | None = None

    @property
    def name(self) -> str:
        return self.column or self.expression.rpartition(".")[2]


def like_pattern(text: str) -> str:
    """A case-insensitive substring pattern with LIKE's wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def keyset_page(
    sql: str,
    args: Sequence[Any],
    *,
    moment: str,
    row_id: str,
    cursor: str | None,
    limit: int,
    descending: bool = True,
    leading: Sequence[SortKey] = (),
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``sql`` (a ``SELECT`` that ends in its ``WHERE`` clause) in the order of
    ``(*leading, moment, row_id)`` (SQL expressions such as ``m.created_at``, ``m.id``; the
    rows carry them under their last name), starting after ``cursor``: the page and the next
    page's cursor (None on the last page). One row more than ``limit`` is read to tell.

    ``row_id`` is unique, so the order is total and a page boundary never skips or repeats a
    row. Every key sorts the same way (``descending`` or not); ``leading`` keys come first,
    e.g. pinned notes before the others."""
    keys = [*leading, SortKey(moment, "timestamptz"), SortKey(row_id, "uuid")]
    args = list(args)
    if cursor:
        values = decode_cursor(cursor, [key.type for key in keys])
        columns = ", ".join(key.expression for key in keys)
        placeholders = ", ".join(f"{{}}::{key.type}" for key in keys)
        sql += f" AND ({columns}) {'<' if descending else '>'} ({placeholders})"
        args += values
    order = " DESC" if descending else ""
    sql += " ORDER BY " + ", ".join(f"{key.expression}{order}" for key in keys) + " LIMIT {}"
    args.append(limit + 1)
    rows = await fetch(sql, *args)
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor([last[key.name] for key in keys])
