"""Request and response bodies of threads and messages (REST; the socket gateway reuses them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from server.foundation.types import NonNegativeInt64, PositiveInt64, Text

Emoji = Annotated[Text, msgspec.Meta(min_length=1, max_length=32)]
ThreadTitle = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    """A post into a lounge or thread; ``client_id`` makes retries idempotent."""

    client_id: uuid.UUID
    text: Text = ""
    attachments: Annotated[list[uuid.UUID], msgspec.Meta(max_length=10)] = msgspec.field(default_factory=list)
    reply_to: PositiveInt64 | None = None


class MessageEdit(msgspec.Struct, forbid_unknown_fields=True):
    text: Text


class ReactionIn(msgspec.Struct, forbid_unknown_fields=True):
    emoji: Emoji


class ReadIn(msgspec.Struct, forbid_unknown_fields=True):
    offset: NonNegativeInt64


class SenderOut(msgspec.Struct):
    id: uuid.UUID | None
    full_name: str
    type: str


class MessageOut(msgspec.Struct):
    id: uuid.UUID
    channel: str
    offset: int
    sender: SenderOut
    client_id: uuid.UUID | None
    text: str
    reply_to: int | None
    attachments: list[uuid.UUID]
    reactions: dict[str, int]
    status: str
    meta: dict[str, Any]
    edited_at: datetime | None
    deleted: bool
    created_at: datetime


class MessagePage(msgspec.Struct):
    """Messages in offset order. ``next_cursor``: pass it as ``cursor`` for the next page in the
    direction asked (older, or newer after ``after``); null when there is none. ``last_offset``:
    the channel's newest offset."""

    items: list[MessageOut]
    next_cursor: str | None
    last_offset: int


class ReadOut(msgspec.Struct):
    channel: str
    last_read_offset: int
    unread: int


class ThreadCreate(msgspec.Struct, forbid_unknown_fields=True):
    title: ThreadTitle | None = None
    lounge_id: uuid.UUID | None = None


class ThreadUpdate(msgspec.Struct, forbid_unknown_fields=True):
    title: ThreadTitle | msgspec.UnsetType = msgspec.UNSET
    archived: bool | msgspec.UnsetType = msgspec.UNSET


class ThreadOut(msgspec.Struct):
    id: uuid.UUID
    channel: str
    title: str
    lounge_id: uuid.UUID | None
    archived: bool
    last_read_offset: int
    last_offset: int
    created_at: datetime
    updated_at: datetime


class ThreadPage(msgspec.Struct):
    """One page of threads, most recently updated first; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[ThreadOut]
    next_cursor: str | None
