"""Job: erase a deleted account's personal data (``server/domain/compliance/erasure.py``)."""

from __future__ import annotations

from typing import Any

from server.domain.compliance.erasure import erase_account


async def erase_user(ctx: dict[str, Any], user_id: str, request_id: str) -> str:
    """Erase the account ``user_id`` for its compliance request ``request_id`` (idempotent)."""
    return await erase_account(ctx["state"], user_id, request_id)
