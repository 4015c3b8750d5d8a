"""Notification actions."""

from __future__ import annotations

import uuid
from typing import Any

from server.notifications.tables import Notification


async def create_notification(
    user_id: uuid.UUID, *, kind: str, title: str, body: str, data: dict[str, Any] | None = None
) -> uuid.UUID:
    """Store an in-app notification for ``user_id`` (inside the caller's transaction); returns its id."""
    [row] = await Notification.insert(
        Notification(user=user_id, kind=kind, title=title[:200], body=body, data=data or {})
    ).returning(Notification.id)
    return row["id"]
