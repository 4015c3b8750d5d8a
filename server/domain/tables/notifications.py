"""Notification tables: a user's in-app notifications."""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    ForeignKey,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.table import Table

from server.domain.tables.accounts import User


class Notification(Table, tablename="notifications"):
    """An in-app notification, optionally also sent by email."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade)
    kind = Varchar(length=64)
    title = Varchar(length=200)
    body = Text()
    data = JSONB(default={})
    read_at = Timestamptz(null=True, default=None)
    emailed_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
