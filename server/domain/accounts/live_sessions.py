"""The standing of sessions that stay connected: a socket authenticates once, then acts
for hours, so the gateway asks again whether its user's role or its session changed
(a control event announces both; these answers catch one that was missed)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from server.domain.tables.accounts import User, UserSession


@dataclass(frozen=True, slots=True)
class SessionChange:
    """A session revoked (or its user disabled), or whose user's role is no longer the one it acts with."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    role: str  # the user's role now
    revoked: bool


async def current_role(user_id: uuid.UUID) -> str | None:
    """The user's role now; ``None`` when there is no such user."""
    row = await User.select(User.role).where(User.id == user_id).first()
    return None if row is None else str(row["role"])


async def session_changes(sessions: Sequence[tuple[uuid.UUID, str]]) -> list[SessionChange]:
    """Of these (session id, role it acts with) pairs, the sessions revoked or whose user is
    disabled, and those whose user's role is now another: one query for all of them."""
    if not sessions:
        return []
    rows = await UserSession.raw(
        """SELECT s.id, s."user", u.role, s.revoked_at IS NOT NULL OR NOT u.is_active AS revoked
           FROM unnest({}::uuid[], {}::text[]) AS c(session, role)
           JOIN user_sessions s ON s.id = c.session JOIN users u ON u.id = s."user"
           WHERE s.revoked_at IS NOT NULL OR NOT u.is_active OR u.role <> c.role""",
        [session_id for session_id, _ in sessions],
        [role for _, role in sessions],
    )
    return [
        SessionChange(session_id=row["id"], user_id=row["user"], role=row["role"], revoked=row["revoked"])
        for row in rows
    ]
