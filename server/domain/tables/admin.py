"""Admin tables: the audit log of administrative actions."""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    ForeignKey,
    OnDelete,
    Timestamptz,
    Varchar,
)
from piccolo.table import Table

from server.domain.tables.accounts import User


class AdminAuditLog(Table, tablename="admin_audit_log"):
    """One administrative action: who did what to which object."""

    id = UUID(primary_key=True)
    actor = ForeignKey(User, null=True, on_delete=OnDelete.set_null, index=True)
    action = Varchar(length=100)
    target_type = Varchar(length=50)
    target_id = Varchar(length=64)
    detail = JSONB(default={})
    ip = Varchar(length=64)
    created_at = Timestamptz(index=True)
