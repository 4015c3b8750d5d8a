"""Scheduled job: delete read notifications past ``NOTIFICATION_RETENTION_DAYS`` (daily).

Idempotent (it deletes what is old enough, whenever it runs); transient
failures are retried with exponential backoff.
"""

from __future__ import annotations

import logging
from typing import Any

from server.domain.notifications.services import prune_read_notifications
from server.foundation.state import AppState
from workers.capsules import TRANSIENT, backoff

log = logging.getLogger("lounges.notifications")


async def prune_notifications(ctx: dict[str, Any]) -> str:
    state: AppState = ctx["state"]
    try:
        deleted = await prune_read_notifications(state)
    except TRANSIENT as exc:
        log.warning("notification pruning will retry: %s", exc, extra={"job_try": ctx.get("job_try", 1)})
        raise backoff(ctx) from exc
    if deleted:
        log.info("read notifications pruned", extra={"deleted": deleted})
    return f"deleted {deleted}"
