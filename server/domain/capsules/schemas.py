"""Request and response bodies of the time-capsule endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from server.foundation.types import Text

CAPSULE_MAX_CHARS = 20_000
MAX_ATTACHMENTS = 10

Title = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
Content = Annotated[Text, msgspec.Meta(max_length=CAPSULE_MAX_CHARS)]
UnlockAt = Annotated[datetime, msgspec.Meta(tz=True)]
Attachments = Annotated[list[uuid.UUID], msgspec.Meta(max_length=MAX_ATTACHMENTS)]


class CapsuleCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A message to your future self: ``unlock_at`` (with a time zone) must be in the future and at
    most ``CAPSULE_MAX_DAYS_AHEAD`` days away; it needs content or attachments (ids of your own
    uploaded files, not used elsewhere)."""

    title: Title
    unlock_at: UnlockAt
    content: Content = ""
    attachments: Attachments = msgspec.field(default_factory=list)


class CapsuleSummary(msgspec.Struct):
    """A capsule as listed: never its content. ``due``: ``unlock_at`` has passed (a sealed capsule that
    is due is opened by the next run of the unlock job, or at once by ``POST /capsules/{id}/unlock``)."""

    id: uuid.UUID
    title: str
    status: str
    sealed: bool
    due: bool
    unlock_at: datetime
    unlocked_at: datetime | None
    created_at: datetime
    attachment_count: int


class CapsuleOut(CapsuleSummary):
    """One capsule. ``content`` and ``attachments`` are null while it is sealed."""

    content: str | None
    attachments: list[uuid.UUID] | None


class CapsulePage(msgspec.Struct):
    """Capsules by ``unlock_at`` (soonest first); ``next_cursor`` is the next page's ``cursor`` (null at the end)."""

    items: list[CapsuleSummary]
    next_cursor: str | None
