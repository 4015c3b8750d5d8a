"""Keyset pagination (the cursor codec and :func:`keyset_page`) and safe substring search,
shared by every list endpoint."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from piccolo.table import Table

from server.foundation.errors import ValidationFailed


def encode_cursor(moment: datetime, row_id: uuid.UUID) -> str:
    """An opaque cursor for the row sorted at ``(moment, row_id)``."""
    return base64.urlsafe_b64encode(f"{moment.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor from :func:`encode_cursor` names; 422 ``invalid_cursor`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, row_id = raw.partition("|")
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("the cursor is not one this API handed out", code="invalid_cursor") from None


def like_pattern(text: str) -> str:
    """A case-insensitive substring pattern with LIKE's wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def keyset_page(
    table: type[Table],
    sql: str,
    args: Sequence[Any],
    *,
    moment: str,
    row_id: str,
    cursor: str | None,
    limit: int,
    descending: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``sql`` (a ``SELECT`` that ends in its ``WHERE`` clause) in the order of
    ``(moment, row_id)`` (SQL expressions such as ``m.created_at``, ``m.id``; the rows carry
    them under their last name), starting after ``cursor``: the page and the next page's
    cursor (None on the last page). One row more than ``limit`` is read to tell."""
    args = list(args)
    if cursor:
        at, last_id = decode_cursor(cursor)
        sql += f" AND ({moment}, {row_id}) {'<' if descending else '>'} ({{}}::timestamptz, {{}}::uuid)"
        args += [at, last_id]
    order = " DESC" if descending else ""
    sql += f" ORDER BY {moment}{order}, {row_id}{order} LIMIT {{}}"
    args.append(limit + 1)
    rows = await table.raw(sql, *args)
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor(last[moment.rpartition(".")[2]], last[row_id.rpartition(".")[2]])
