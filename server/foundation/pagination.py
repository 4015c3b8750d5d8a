"""Keyset pagination cursors and safe substring search, shared by every list endpoint."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

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
