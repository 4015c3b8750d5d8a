"""Scheduled job: open every time capsule that is due, then notify each owner.

Runs every minute (arq ``cron``, ``unique``: one run per minute across all
workers). Each run selects everything due (``unlock_at <= now()``), so capsules
that came due while no worker ran are opened by the first run after; runs that
overlap open disjoint capsules (see ``server/domain/capsules/services.py``). Transient
failures (database, Redis) are retried with exponential backoff; the next
minute's run would pick the work up anyway.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from arq import Retry
from redis.exceptions import RedisError

from server.domain.capsules.services import redeliver_unlock_notifications, unlock_due_capsules
from server.foundation.state import AppState

log = logging.getLogger("lounges.capsules")

TRANSIENT = (asyncpg.PostgresConnectionError, asyncpg.DeadlockDetectedError, RedisError, OSError, TimeoutError)


def backoff(ctx: dict[str, Any]) -> Retry:
    """Retry in 5 s, 10 s, 20 s ... (at most 5 minutes)."""
    tries = ctx.get("job_try", 1)
    return Retry(defer=min(300, 5 * 2 ** (tries - 1)))


async def unlock_capsules(ctx: dict[str, Any]) -> str:
    state: AppState = ctx["state"]
    try:
        opened = await unlock_due_capsules(state)
        redelivered = await redeliver_unlock_notifications(state)
    except TRANSIENT as exc:
        log.warning("capsule unlock run will retry: %s", exc, extra={"job_try": ctx.get("job_try", 1)})
        raise backoff(ctx) from exc
    if opened or redelivered:
        log.info("capsules unlocked", extra={"opened": opened, "redelivered": redelivered})
    return f"opened {opened}, redelivered {redelivered}"
