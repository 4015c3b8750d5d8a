"""Reading the push log: what was pushed to a user's devices, and what became of it."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from server.domain.accounts.audit import check_admin
from server.domain.accounts.services import Principal
from server.domain.push.schemas import PushOut, PushPage
from server.domain.tables.accounts import User
from server.foundation.errors import NotFound
from server.foundation.pagination import keyset_page

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def _json(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value


def push_out(row: dict[str, Any]) -> PushOut:
    return PushOut(
        id=row["id"],
        device_id=row["device"],
        platform=row["platform"],
        token_hint=row["token_hint"],
        kind=row["kind"],
        notification_id=row["notification"],
        collapse_id=row["collapse_id"],
        status=row["status"],
        reason=row["reason"],
        status_code=row["status_code"],
        attempt=row["attempt"],
        private=row["private"],
        data=_json(row["data"]) or {},
        created_at=row["created_at"],
    )


async def list_pushes(user_id: uuid.UUID, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None) -> PushPage:
    """The push attempts to ``user_id``'s devices, newest first."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    page, next_cursor = await keyset_page(
        "SELECT id, device, platform, token_hint, kind, notification, collapse_id, status, reason, status_code,"
        ' attempt, private, data, created_at FROM push_log WHERE "user" = {}',
        [user_id],
        moment="created_at",
        row_id="id",
        cursor=cursor,
        limit=limit,
    )
    return PushPage(items=[push_out(row) for row in page], next_cursor=next_cursor)


async def admin_list_pushes(
    admin: Principal, user_id: uuid.UUID, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> PushPage:
    """An administrator's view of :func:`list_pushes` (404 ``user_not_found`` for no such user)."""
    check_admin(admin)
    if not await User.exists().where(User.id == user_id):
        raise NotFound("no such user", code="user_not_found")
    return await list_pushes(user_id, limit=limit, cursor=cursor)
