"""Response bodies of the notifications endpoints (and of the ``notification`` push)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec


class NotificationOut(msgspec.Struct):
    """One notification; ``kind`` says what happened, ``data`` carries its ids (see ``NotificationKind``)."""

    id: uuid.UUID
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    read: bool
    read_at: datetime | None
    created_at: datetime


class NotificationPage(msgspec.Struct):
    """Newest first. ``next_cursor`` (null on the last page) is the ``cursor`` of the next page;
    ``unread_count`` counts all your unread notifications, not only this page's."""

    items: list[NotificationOut]
    next_cursor: str | None
    unread_count: int


class ReadResult(msgspec.Struct):
    """``marked``: notifications this call marked read (0 when they already were);
    ``unread_count``: your unread notifications after it."""

    marked: int
    unread_count: int
