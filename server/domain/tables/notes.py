"""Note tables: a user's personal notes."""

from __future__ import annotations

from piccolo.columns import (
    UUID,
    Array,
    Boolean,
    ForeignKey,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

from server.domain.tables.accounts import User


class Note(Table, tablename="notes"):
    """A personal, taggable note; also a source of knowledge chunks."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade)
    title = Varchar(length=200)
    content = Text()
    tags = Array(Varchar(length=50))
    pinned = Boolean(default=False)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)
