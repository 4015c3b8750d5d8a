"""Realtime tables: each channel's offset sequence and its append-only publication log."""

from __future__ import annotations

from piccolo.columns import JSONB, UUID, BigInt, Timestamptz, Varchar
from piccolo.constraints import Unique
from piccolo.table import Table


class Channel(Table, tablename="channels"):
    """A realtime channel (``lounge:<uuid>``, ``thread:<uuid>``) and its last assigned offset."""

    id = UUID(primary_key=True)
    name = Varchar(length=100, unique=True)
    epoch = Varchar(length=32)
    last_offset = BigInt(default=0)
    # Stored publications rewritten so far (edits, deletions, erasure): caches of the log
    # compare it with their own count to notice a rewrite they missed.
    rewrites = BigInt(default=0)
    created_at = Timestamptz()


class ChannelPublication(Table, tablename="channel_publications"):
    """One stored publication (message, edit, deletion, reaction...) at its channel offset.

    ``data`` is exactly the JSON object subscribers receive, so history and
    recovery read it back without re-rendering anything.
    """

    id = UUID(primary_key=True)
    channel = Varchar(length=100)
    offset = BigInt(default=None)
    data = JSONB(default={})
    created_at = Timestamptz()

    channel_publications_channel_offset_key = Unique([channel, offset])
