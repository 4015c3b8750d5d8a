"""The admin check and the audit log row every administrative action writes (users,
mentors, categories, CMS pages), shared by every area that has admin actions.

Each action checks the caller itself and commits its audit row in the same
transaction as the change.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.domain.accounts.services import ClientInfo, Principal
from server.domain.tables.accounts import Role
from server.domain.tables.admin import AdminAuditLog
from server.foundation.errors import Forbidden


def check_admin(principal: Principal) -> None:
    """Raise 403 ``role_required`` unless the caller is an administrator."""
    if principal.role != Role.admin:
        raise Forbidden("administrators only", code="role_required")


async def record_admin_action(
    actor: Principal | uuid.UUID,
    action: str,
    *,
    target_type: str,
    target_id: uuid.UUID | str,
    client: ClientInfo,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit row (inside the caller's transaction, so it commits with the action)."""
    actor_id = actor.user_id if isinstance(actor, Principal) else actor
    await AdminAuditLog.insert(
        AdminAuditLog(
            actor=actor_id,
            action=action[:100],
            target_type=target_type[:50],
            target_id=str(target_id)[:64],
            detail=detail or {},
            ip=client.ip[:64],
        )
    )
