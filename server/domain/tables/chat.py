"""Chat tables: private AI threads and the messages of every channel."""

from __future__ import annotations

import enum

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.files import File
from server.domain.tables.lounges import Lounge
from server.foundation.db_columns import in_choices


class SenderType(enum.StrEnum):
    """Who sent a message."""

    user = "user"
    mentor = "mentor"
    ai = "ai"
    system = "system"


class MessageStatus(enum.StrEnum):
    """Delivery state of a message; AI replies start as ``streaming``."""

    streaming = "streaming"
    complete = "complete"
    cancelled = "cancelled"
    failed = "failed"


class ChatThread(Table, tablename="chat_threads"):
    """A user's private conversation with the AI, optionally in a lounge's context."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade)
    title = Varchar(length=200)
    channel = Varchar(length=100, unique=True)
    lounge = ForeignKey(Lounge, null=True, on_delete=OnDelete.set_null, index=True)
    last_read_offset = BigInt(default=0)
    archived_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)


class Message(Table, tablename="messages"):
    """A message at a fixed offset in a channel (a lounge or a chat thread)."""

    id = UUID(primary_key=True)
    channel = Varchar(length=100)
    offset = BigInt(default=None)
    sender_type = Varchar(length=16, default=None, choices=SenderType)
    sender = ForeignKey(User, null=True, on_delete=OnDelete.set_null, index=True)
    client_id = UUID(null=True, default=None)
    text = Text()
    reply_to = BigInt(null=True, default=None)
    status = Varchar(length=16, default=MessageStatus.complete, choices=MessageStatus)
    provider = Varchar(length=50, null=True, default=None)
    model = Varchar(length=100, null=True, default=None)
    input_tokens = Integer(null=True, default=None)
    output_tokens = Integer(null=True, default=None)
    meta = JSONB(default={})
    edited_at = Timestamptz(null=True, default=None)
    deleted_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()

    messages_sender_type_check = Check(in_choices("sender_type", SenderType))
    messages_status_check = Check(in_choices("status", MessageStatus))
    messages_channel_offset_key = Unique([channel, offset])


class MessageReaction(Table, tablename="message_reactions"):
    """An emoji reaction by a user to a message."""

    id = UUID(primary_key=True)
    message = ForeignKey(Message, null=False, on_delete=OnDelete.cascade)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade, index=True)
    emoji = Varchar(length=32)
    created_at = Timestamptz()

    message_reactions_message_user_emoji_key = Unique([message, user, emoji])


class MessageAttachment(Table, tablename="message_attachments"):
    """Links a file to the message it was attached to."""

    id = UUID(primary_key=True)
    message = ForeignKey(Message, null=False, on_delete=OnDelete.cascade)
    file = ForeignKey(File, null=False, on_delete=OnDelete.cascade, index=True)
    created_at = Timestamptz()

    message_attachments_message_file_key = Unique([message, file])
