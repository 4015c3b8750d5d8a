"""Realtime tables: one row per channel holding its message offset sequence."""

from __future__ import annotations

from piccolo.columns import UUID, BigInt, Timestamptz, Varchar
from piccolo.table import Table


class Channel(Table, tablename="channels"):
    """A realtime channel (``lounge:<uuid>``, ``thread:<uuid>``) and its last assigned offset."""

    id = UUID(primary_key=True)
    name = Varchar(length=100, unique=True)
    epoch = Varchar(length=32)
    last_offset = BigInt(default=0)
    created_at = Timestamptz()
