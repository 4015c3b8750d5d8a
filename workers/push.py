"""Jobs: push notifications to phones whose user has no socket connected
(:mod:`server.domain.push.delivery`), their retries, and the daily clean-up.

A failure to reach PostgreSQL or Redis before anything was sent is retried with backoff
(arq ``Retry``); transient APNs/FCM failures are retried by the delivery itself, for just
the devices that failed (``push_retry``, up to ``PUSH_MAX_ATTEMPTS``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq.worker import func

from server.domain.push import delivery
from server.foundation.state import AppState
from workers.capsules import TRANSIENT, backoff

log = logging.getLogger("lounges.push")

MAX_TRIES = 5


async def push_notification(ctx: dict[str, Any], notification_id: str) -> str:
    try:
        return await delivery.push_notification(ctx["state"], uuid.UUID(notification_id))
    except TRANSIENT as exc:
        raise backoff(ctx) from exc


async def push_lounge_message(ctx: dict[str, Any], channel: str, offset: int) -> str:
    try:
        return await delivery.push_lounge_message(ctx["state"], channel, offset)
    except TRANSIENT as exc:
        raise backoff(ctx) from exc


async def push_coach_reply(ctx: dict[str, Any], channel: str, offset: int) -> str:
    try:
        return await delivery.push_coach_reply(ctx["state"], channel, offset)
    except TRANSIENT as exc:
        raise backoff(ctx) from exc


async def push_retry(ctx: dict[str, Any], items: list[dict[str, Any]], attempt: int) -> str:
    try:
        return await delivery.push_retry(ctx["state"], items, attempt)
    except TRANSIENT as exc:
        raise backoff(ctx) from exc


async def prune_push(ctx: dict[str, Any]) -> str:
    """Cron (daily): the push log past ``PUSH_LOG_RETENTION_DAYS``, devices of ended sessions."""
    state: AppState = ctx["state"]
    try:
        logged, devices = await delivery.prune_push_data(state)
    except TRANSIENT as exc:
        raise backoff(ctx) from exc
    if logged or devices:
        log.info("push data pruned", extra={"log_rows": logged, "devices": devices})
    return f"deleted {logged} log rows, {devices} devices"


PUSH_FUNCTIONS = [
    func(push_notification, name=delivery.NOTIFICATION_JOB, max_tries=MAX_TRIES),
    func(push_lounge_message, name=delivery.LOUNGE_MESSAGE_JOB, max_tries=MAX_TRIES),
    func(push_coach_reply, name=delivery.COACH_REPLY_JOB, max_tries=MAX_TRIES),
    func(push_retry, name=delivery.RETRY_JOB, max_tries=MAX_TRIES),
]
