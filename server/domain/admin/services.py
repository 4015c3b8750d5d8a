"""Administrative actions: platform stats, user search and role changes, and reading the
audit log (the admin check and the audit row every area shares are
:mod:`server.domain.accounts.audit`).

Every ``do_*`` action checks the caller itself and commits its audit row in the
same transaction as the change.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta
from functools import partial
from typing import Any

import msgspec

from server.domain.accounts.audit import check_admin, record_admin_action
from server.domain.accounts.services import ClientInfo, Principal
from server.domain.accounts.session_cache import announce
from server.domain.admin.schemas import (
    AdminUserOut,
    AdminUserPage,
    AuditEntryOut,
    AuditPage,
    CurrencyRevenue,
    DayStats,
    SocketStats,
    StatsOut,
    UserStats,
)
from server.domain.notifications.services import notify_on_commit
from server.domain.tables.accounts import Role, User
from server.domain.tables.billing import Payment, PaymentStatus
from server.domain.tables.chat import Message
from server.domain.tables.mentors import Mentor, MentorStatus
from server.foundation.control import ControlEvent
from server.foundation.errors import Conflict, Forbidden, NotFound
from server.foundation.pagination import keyset_page, like_pattern
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
DEFAULT_STAT_DAYS = 14
MAX_STAT_DAYS = 90


# -- stats -------------------------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    """``text`` taken literally in a Redis MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


async def socket_counts(state: AppState) -> SocketStats:
    """Sum the connection counts that every live web node keeps in ``{prefix}:node:{node_id}``.

    Each node rewrites its key every few seconds with a 15 s TTL
    (``Node._tick_forever``), so a dead node drops out by itself. SCAN, not KEYS:
    it never blocks Redis, however many keys the deployment holds.
    """
    head = f"{state.settings.redis_prefix}:node:"
    keys = [
        key
        async for key in state.redis.scan_iter(match=_glob_escape(head) + "*", count=1000)
        if ":" not in (key.decode() if isinstance(key, bytes) else key)[len(head) :]
    ]
    values = await state.redis.mget(keys) if keys else []
    counts = [int(value) for value in values if value is not None]  # expired between SCAN and MGET: gone
    return SocketStats(active=sum(counts), nodes=len(counts))


async def _user_stats() -> UserStats:
    [totals] = await User.raw(
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE email_verified_at IS NOT NULL) AS verified,
               count(*) FILTER (WHERE is_active) AS active,
               count(*) FILTER (WHERE created_at >= now() - interval '7 days') AS new_last_7_days
        FROM users
        """
    )
    by_role = {role.value: 0 for role in Role}
    for row in await User.raw("SELECT role, count(*) AS n FROM users GROUP BY role"):
        by_role[row["role"]] = row["n"]
    return UserStats(
        total=totals["total"],
        verified=totals["verified"],
        active=totals["active"],
        new_last_7_days=totals["new_last_7_days"],
        by_role=by_role,
    )


async def _daily_stats(days: int) -> list[DayStats]:
    """Messages and AI usage per UTC day for the last ``days`` days, gaps filled with zeros."""
    today = datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(), UTC)
    rows = await Message.raw(
        """
        WITH days AS (
            SELECT generate_series({}::date, {}::date, interval '1 day')::date AS day
        ), messages_per_day AS (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages
            FROM messages WHERE created_at >= {}
            GROUP BY 1
        ), usage_per_day AS (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS replies,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
            FROM ai_usage WHERE created_at >= {}
            GROUP BY 1
        )
        SELECT d.day, coalesce(m.messages, 0) AS messages, coalesce(u.replies, 0) AS replies,
               coalesce(u.input_tokens, 0) AS input_tokens, coalesce(u.output_tokens, 0) AS output_tokens
        FROM days d
        LEFT JOIN messages_per_day m USING (day)
        LEFT JOIN usage_per_day u USING (day)
        ORDER BY d.day
        """,
        first,
        today,
        since,
        since,
    )
    return [
        DayStats(
            day=row["day"],
            messages=row["messages"],
            ai_replies=row["replies"],
            ai_input_tokens=int(row["input_tokens"]),
            ai_output_tokens=int(row["output_tokens"]),
            ai_tokens=int(row["input_tokens"]) + int(row["output_tokens"]),
        )
        for row in rows
    ]


async def _revenue() -> list[CurrencyRevenue]:
    rows = await Payment.raw(
        """
        SELECT lower(currency) AS currency,
               sum(amount_cents) AS total_cents,
               count(*) AS payments_total,
               coalesce(sum(amount_cents) FILTER (WHERE created_at >= now() - interval '30 days'), 0) AS last_30_cents,
               count(*) FILTER (WHERE created_at >= now() - interval '30 days') AS payments_last_30
        FROM payments WHERE status = {}
        GROUP BY 1 ORDER BY 1
        """,
        PaymentStatus.paid.value,
    )
    return [
        CurrencyRevenue(
            currency=row["currency"],
            last_30_days_cents=int(row["last_30_cents"]),
            total_cents=int(row["total_cents"]),
            payments_last_30_days=row["payments_last_30"],
            payments_total=row["payments_total"],
        )
        for row in rows
    ]


async def get_stats(state: AppState, admin: Principal, *, days: int = DEFAULT_STAT_DAYS) -> StatsOut:
    """Users, live sockets across nodes, daily messages and AI tokens, and revenue."""
    check_admin(admin)
    days = max(1, min(days, MAX_STAT_DAYS))
    users, sockets, daily, revenue = await asyncio.gather(
        _user_stats(), socket_counts(state), _daily_stats(days), _revenue()
    )
    return StatsOut(
        generated_at=datetime.now(UTC),
        users=users,
        sockets=sockets,
        days=days,
        daily=daily,
        revenue=revenue,
    )


# -- users -------------------------------------------------------------------------------------


_USER_SELECT = """
    SELECT u.id, u.email, u.full_name, u.role, u.email_verified_at, u.is_active, u.disabled_at,
           u.last_login_at, u.created_at, m.status AS mentor_status
    FROM users u LEFT JOIN mentors m ON m."user" = u.id
"""


def _user_out(row: dict[str, Any]) -> AdminUserOut:
    return AdminUserOut(
        id=row["id"],
        email=row["email"],
        full_name=row["full_name"],
        role=row["role"],
        email_verified=row["email_verified_at"] is not None,
        is_active=row["is_active"],
        disabled_at=row["disabled_at"],
        last_login_at=row["last_login_at"],
        mentor_status=row["mentor_status"],
        created_at=row["created_at"],
    )


async def _user(user_id: uuid.UUID) -> AdminUserOut:
    rows = await User.raw(_USER_SELECT + " WHERE u.id = {}", user_id)
    if not rows:
        raise NotFound("no such user", code="user_not_found")
    return _user_out(rows[0])


async def search_users(
    admin: Principal,
    *,
    q: str | None = None,
    role: Role | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> AdminUserPage:
    """Users whose email or full name contains ``q`` (case-insensitive), newest first."""
    check_admin(admin)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = _USER_SELECT + " WHERE TRUE"
    args: list[Any] = []
    if q and q.strip():
        sql += " AND (u.email ILIKE {} OR u.full_name ILIKE {})"
        pattern = like_pattern(q.strip())
        args += [pattern, pattern]
    if role is not None:
        sql += " AND u.role = {}"
        args.append(role.value)
    page, next_cursor = await keyset_page(sql, args, moment="u.created_at", row_id="u.id", cursor=cursor, limit=limit)
    return AdminUserPage(
        items=[_user_out(row) for row in page],
        next_cursor=next_cursor,
    )


async def get_user(admin: Principal, user_id: uuid.UUID) -> AdminUserOut:
    check_admin(admin)
    return await _user(user_id)


REVOKED_MENTOR_REASON = "The mentor role was removed by an administrator."


async def do_change_role(
    state: AppState, admin: Principal, user_id: uuid.UUID, role: Role, client: ClientInfo
) -> AdminUserOut:
    """Give a user another role; the user is notified and the change is audited.

    The mentor role and an approved mentor profile go together (lounges are run
    by approved profiles): making someone a mentor approves their pending or
    rejected application (409 ``mentor_profile_required`` if they never applied);
    taking the role away (to ``user``) withdraws the approval, so they leave the
    mentor directory and open no more lounges. An admin keeps a profile either way.
    An administrator cannot change their own role, so one always remains.
    """
    check_admin(admin)
    if user_id == admin.user_id:
        raise Forbidden("administrators cannot change their own role", code="cannot_demote_self")
    async with unit_of_work(state.engine):
        rows = await User.raw("SELECT id, role FROM users WHERE id = {} FOR UPDATE", user_id)
        if not rows:
            raise NotFound("no such user", code="user_not_found")
        previous = rows[0]["role"]
        if previous == role:
            return await _user(user_id)
        mentor = await Mentor.raw('SELECT id, status FROM mentors WHERE "user" = {} FOR UPDATE', user_id)
        mentor_before = mentor[0]["status"] if mentor else None
        mentor_after = mentor_before
        if role == Role.mentor and mentor_before != MentorStatus.approved:
            if not mentor:
                raise Conflict(
                    "this user has no mentor profile: they apply first (POST /api/v1/mentors/apply)",
                    code="mentor_profile_required",
                )
            mentor_after = MentorStatus.approved
            await Mentor.raw(
                """
                UPDATE mentors SET status = 'approved', rejection_reason = NULL, reviewed_by = {},
                                   reviewed_at = now(), updated_at = now()
                WHERE id = {}
                """,
                admin.user_id,
                mentor[0]["id"],
            )
        elif role == Role.user and mentor_before == MentorStatus.approved:
            mentor_after = MentorStatus.rejected
            await Mentor.raw(
                """
                UPDATE mentors SET status = 'rejected', rejection_reason = {}, reviewed_by = {},
                                   reviewed_at = now(), updated_at = now()
                WHERE id = {}
                """,
                REVOKED_MENTOR_REASON,
                admin.user_id,
                mentor[0]["id"],
            )
        await User.update({User.role: role.value}).where(User.id == user_id)
        # Once committed, the user's open sockets and cached sessions act with the new role at
        # once (every node), before the notification telling them so is pushed (and mailed if wanted).
        changed = ControlEvent(kind="user.role_changed", user_id=user_id)
        await on_commit(partial(announce, state, changed))
        await notify_on_commit(
            state,
            user_id,
            kind="role.changed",
            title=f"Your role is now {role.value}",
            body=f"An administrator changed your role from {previous} to {role.value}.",
            data={"from": previous, "to": role.value},
        )
        detail: dict[str, Any] = {"from": previous, "to": role.value}
        if mentor_after != mentor_before:
            detail["mentor_status"] = {"from": mentor_before, "to": mentor_after}
        await record_admin_action(
            admin, "user.role_change", target_type="user", target_id=user_id, client=client, detail=detail
        )
    return await _user(user_id)


# -- audit log ---------------------------------------------------------------------------------


async def list_audit_log(
    admin: Principal,
    *,
    actor: uuid.UUID | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> AuditPage:
    """Administrative actions, newest first, optionally filtered."""
    check_admin(admin)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = """
        SELECT a.id, a.actor, u.email AS actor_email, a.action, a.target_type, a.target_id, a.detail, a.ip,
               a.created_at
        FROM admin_audit_log a LEFT JOIN users u ON u.id = a.actor
        WHERE TRUE
    """
    args: list[Any] = []
    for column, value in (("actor", actor), ("action", action), ("target_type", target_type), ("target_id", target_id)):
        if value is not None:
            sql += f" AND a.{column} = {{}}"
            args.append(value)
    page, next_cursor = await keyset_page(sql, args, moment="a.created_at", row_id="a.id", cursor=cursor, limit=limit)
    return AuditPage(
        items=[
            AuditEntryOut(
                id=row["id"],
                actor_id=row["actor"],
                actor_email=row["actor_email"],
                action=row["action"],
                target_type=row["target_type"],
                target_id=row["target_id"],
                detail=_json(row["detail"]),
                ip=row["ip"],
                created_at=row["created_at"],
            )
            for row in page
        ],
        next_cursor=next_cursor,
    )


def _json(value: Any) -> dict[str, Any]:
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else (value or {})
