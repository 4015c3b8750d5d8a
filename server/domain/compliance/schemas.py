"""Response bodies of the data-export endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


class ExportOut(msgspec.Struct):
    """A data export request. ``status``: pending → processing → completed (or failed,
    with ``error``). Once completed, ``download_url`` is a presigned link to the JSON
    archive, valid until ``download_expires_at`` (ask again for a fresh one); the
    archive itself is kept until ``available_until``, then ``expired`` turns true."""

    id: uuid.UUID
    status: str
    requested_at: datetime
    completed_at: datetime | None = None
    error: str | None = None
    size: int | None = None
    sha256: str | None = None
    available_until: datetime | None = None
    expired: bool = False
    download_url: str | None = None
    download_expires_at: datetime | None = None


class ExportList(msgspec.Struct):
    """Your export requests, newest first; pass ``next_cursor`` as ``cursor`` for the next page (null at the end)."""

    items: list[ExportOut]
    next_cursor: str | None
