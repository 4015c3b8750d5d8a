"""Request and response bodies of the admin endpoints: stats, user management and the audit log."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import msgspec

from server.domain.tables.accounts import Role

# -- stats -------------------------------------------------------------------------------------


class UserStats(msgspec.Struct):
    total: int
    verified: int
    """Accounts whose email is confirmed."""
    active: int
    """Accounts not disabled (deleted accounts are disabled at once, then erased)."""
    new_last_7_days: int
    by_role: dict[str, int]
    """Every role, zero included."""


class SocketStats(msgspec.Struct):
    """WebSocket connections summed over the web nodes alive in the last ~15 seconds."""

    active: int
    nodes: int


class DayStats(msgspec.Struct):
    """One UTC day."""

    day: date
    messages: int
    """Messages stored in lounges and threads (people's and the AI's)."""
    ai_replies: int
    """Model calls in the usage ledger, failed and cancelled ones included."""
    ai_input_tokens: int
    ai_output_tokens: int
    ai_tokens: int


class CurrencyRevenue(msgspec.Struct):
    """Paid payments in one currency, in its smallest unit (cents)."""

    currency: str
    last_30_days_cents: int
    total_cents: int
    payments_last_30_days: int
    payments_total: int


class StatsOut(msgspec.Struct):
    generated_at: datetime
    users: UserStats
    sockets: SocketStats
    days: int
    daily: list[DayStats]
    """The last ``days`` UTC days, oldest first, today last; days without activity are zeros."""
    revenue: list[CurrencyRevenue]


# -- users -------------------------------------------------------------------------------------


class AdminUserOut(msgspec.Struct):
    """A user as administrators see it."""

    id: uuid.UUID
    email: str
    full_name: str
    role: str
    email_verified: bool
    is_active: bool
    disabled_at: datetime | None
    last_login_at: datetime | None
    mentor_status: str | None
    """Status of the user's mentor application or profile; null if they never applied."""
    created_at: datetime


class AdminUserPage(msgspec.Struct):
    """One page of users, newest first; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[AdminUserOut]
    next_cursor: str | None


class RoleChange(msgspec.Struct, forbid_unknown_fields=True):
    role: Role


# -- audit log ---------------------------------------------------------------------------------


class AuditEntryOut(msgspec.Struct):
    id: uuid.UUID
    actor_id: uuid.UUID | None
    actor_email: str | None
    action: str
    target_type: str
    target_id: str
    detail: dict[str, Any]
    ip: str
    created_at: datetime


class AuditPage(msgspec.Struct):
    """One page of the audit log, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[AuditEntryOut]
    next_cursor: str | None
