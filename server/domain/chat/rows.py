"""Messages as the store reads them: typed rows and the one query that reads a whole message.

Rows travel as frozen structs, not dicts, so a field the code reads is one the query
selected (a typo fails at load, not deep in a handler), and mypy knows each type.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from server.domain.chat.schemas import MessageOut, SenderOut
from server.domain.tables.chat import SenderType
from server.foundation.database import fetch
from server.foundation.errors import NotFound

_MESSAGE_SELECT = """
SELECT m.id, m.channel, m."offset", m.sender, m.sender_type, m.client_id, m.text, m.reply_to, m.status,
       m.meta, m.edited_at, m.deleted_at, m.created_at,
       coalesce(u.full_name, '') AS sender_name,
       ARRAY(SELECT a.file FROM message_attachments a WHERE a.message = m.id ORDER BY a.created_at) AS attachments,
       coalesce((SELECT jsonb_object_agg(r.emoji, r.n) FROM (
           SELECT emoji, count(*) AS n FROM message_reactions WHERE message = m.id GROUP BY emoji) r), jsonb_build_object())
         AS reactions
FROM messages m LEFT JOIN users u ON u.id = m.sender
"""


class MessageRow(msgspec.Struct, frozen=True):
    """A whole message: its row, its sender's name, its attachments and reaction counts."""

    id: uuid.UUID
    channel: str
    offset: int
    sender: uuid.UUID | None
    sender_type: str
    client_id: uuid.UUID | None
    text: str
    reply_to: int | None
    status: str
    meta: dict[str, Any]
    edited_at: datetime | None
    deleted_at: datetime | None
    created_at: datetime
    sender_name: str
    attachments: list[uuid.UUID]
    reactions: dict[str, int]


class LockedMessage(msgspec.Struct, frozen=True):
    """What a change to one message checks, read with the row locked (``FOR UPDATE``)."""

    id: uuid.UUID
    sender: uuid.UUID | None
    sender_type: str
    deleted_at: datetime | None


class MessageRef(msgspec.Struct, frozen=True):
    """A message to delete: where it is, and whether it was deleted already."""

    id: uuid.UUID
    channel: str
    offset: int
    deleted_at: datetime | None


class MentioningMessage(msgspec.Struct, frozen=True):
    """A message whose text mentions someone (rewritten when that account is erased)."""

    id: uuid.UUID
    channel: str
    offset: int
    text: str


def _json(value: Any) -> Any:
    """A ``jsonb`` value as asyncpg hands it over (its text) decoded."""
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value


def _message_row(row: dict[str, Any]) -> MessageRow:
    row["meta"] = _json(row["meta"]) or {}
    row["reactions"] = _json(row["reactions"]) or {}
    return msgspec.convert(row, MessageRow)


async def select_messages(condition: str, *args: Any) -> list[MessageRow]:
    """The whole messages matching ``condition`` (SQL after ``FROM messages m``: a ``WHERE``,
    an order, a limit; ``{}`` placeholders for ``args``)."""
    return [_message_row(row) for row in await fetch(_MESSAGE_SELECT + condition, *args)]


async def select_channel_page(channel: str, condition: str, *args: Any) -> tuple[int, list[MessageRow]]:
    """The channel's last offset and its whole messages matching ``condition`` (SQL after
    ``WHERE m.channel = <channel>``: more conditions, an order, a limit; ``{}`` placeholders
    for ``args``), in one statement (the channel may be gone since its access was checked)."""
    rows = await fetch(
        "SELECT c.last_offset AS channel_last_offset, page.* FROM channels c LEFT JOIN LATERAL ("
        + _MESSAGE_SELECT
        + " WHERE m.channel = c.name"
        + condition
        + ") page ON true WHERE c.name = {}",
        *args,
        channel,
    )
    if not rows:
        raise NotFound("no such channel", code="channel_not_found")
    last_offset: int = rows[0]["channel_last_offset"]
    return last_offset, [_message_row(row) for row in rows if row["id"] is not None]


def message_out(row: MessageRow) -> MessageOut:
    deleted = row.deleted_at is not None
    return MessageOut(
        id=row.id,
        channel=row.channel,
        offset=row.offset,
        sender=SenderOut(
            id=row.sender,
            full_name="Coach" if row.sender_type == SenderType.ai else row.sender_name,
            type=row.sender_type,
        ),
        client_id=row.client_id,
        text="" if deleted else row.text,
        reply_to=row.reply_to,
        attachments=[] if deleted else list(row.attachments),
        reactions=row.reactions,
        status=row.status,
        meta={} if deleted else row.meta,
        edited_at=row.edited_at,
        deleted=deleted,
        created_at=row.created_at,
    )
