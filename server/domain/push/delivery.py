"""Push delivery: who gets a push for what, when, and what became of it (docs/push.md).

Triggers queue an arq job after their commit (only when APNs or FCM is configured):

- a stored notification (``server.domain.notifications.services`` queues ``push_notification``
  for each): mentions, capsule unlocks, lounge invitations, join requests approved or
  declined (and any other kind a user opted into);
- a lounge message (``push_lounge_message``, queued by the message store): every active
  member but its author, except those it mentions (they get the mention);
- the coach's finished reply in a thread (``push_coach_reply``): the thread's owner.

The job decides at delivery time. A user gets nothing while any socket of theirs is
connected to any node (``server.streams.online``), nor for what their preferences refuse
(``notification_prefs``: ``"push": false``, ``"push:<kind>": false``, ``"mute:<lounge id>":
true`` for a lounge's messages; the defaults are ``PUSH_KINDS``). ``"private_previews":
true`` replaces titles and bodies by generic texts. Each device of a live session is pushed
at most ``PUSH_MAX_PER_DEVICE_PER_MINUTE`` times a minute (the rest is dropped; one
collapse id per channel keeps only the newest on the phone anyway), with the badge set to
the user's unread notifications.

Every attempt is a ``push_log`` row. A dead token (APNs 410 / 400 ``BadDeviceToken``, FCM
404 ``UNREGISTERED``) removes its device. Transient failures (network, 429, 5xx) are queued
again (``push_retry``) for just those devices, with backoff, up to ``PUSH_MAX_ATTEMPTS``.
A device whose service is not configured on the worker is skipped and logged once per job.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import msgspec

from server.domain.notifications.services import PUSH_JOB, mentioned_user_ids, render_mentions
from server.domain.push.devices import token_hint
from server.domain.push.outcome import Outcome, Target
from server.domain.push.payloads import Push, build
from server.domain.push.providers import providers_of
from server.domain.tables.push import PushDevice, PushLog, PushStatus
from server.foundation.errors import RateLimited
from server.foundation.redis import REDIS_ERRORS
from server.foundation.state import AppState
from server.foundation.unit_of_work import unit_of_work
from server.streams.online import online_users

log = logging.getLogger("lounges.push")

NOTIFICATION_JOB = PUSH_JOB  # queued by server.domain.notifications.services, below this package
LOUNGE_MESSAGE_JOB = "push_lounge_message"
COACH_REPLY_JOB = "push_coach_reply"
RETRY_JOB = "push_retry"
QUEUE_TIMEOUT = 1.0  # seconds a trigger waits for Redis to queue a push job; the push is lost past it
CONCURRENCY = 20  # requests in flight per job (HTTP/2 multiplexes them on one APNs connection)
BATCH = 500  # devices sent to, then logged, at a time


# -- preferences -------------------------------------------------------------------------------


def wants_push(settings_kinds: Sequence[str], prefs: dict[str, Any], kind: str, lounge_id: str | None = None) -> bool:
    """Whether a user with ``prefs`` gets a push of ``kind`` (of lounge ``lounge_id``)."""
    if prefs.get("push") is False:
        return False
    if kind == "lounge.message" and lounge_id is not None and prefs.get(f"mute:{lounge_id}") is True:
        return False
    chosen = prefs.get(f"push:{kind}")
    if isinstance(chosen, bool):
        return chosen
    return kind in settings_kinds


def private_previews(prefs: dict[str, Any]) -> bool:
    return prefs.get("private_previews") is True


def _json(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value


# -- queueing (the triggers call these after their commit; they never raise) -----------------


async def _queue(state: AppState, job: str, *args: Any, job_id: str) -> None:
    if not state.settings.push_configured:
        return
    try:
        async with asyncio.timeout(QUEUE_TIMEOUT):
            await state.redis.enqueue_job(job, *args, _job_id=job_id)
    except REDIS_ERRORS as exc:
        log.warning("push not queued", extra={"job": job, "error": repr(exc)})


async def queue_lounge_message_push(state: AppState, channel: str, offset: int) -> None:
    """A message was stored in a lounge: push it to the members who are away."""
    await _queue(state, LOUNGE_MESSAGE_JOB, channel, offset, job_id=f"push:message:{channel}:{offset}")


async def queue_coach_reply_push(state: AppState, channel: str, offset: int) -> None:
    """The coach finished a reply in a thread: push it to the thread's owner if away."""
    await _queue(state, COACH_REPLY_JOB, channel, offset, job_id=f"push:reply:{channel}:{offset}")


# -- the jobs ----------------------------------------------------------------------------------


async def push_notification(state: AppState, notification_id: uuid.UUID) -> str:
    """Push a stored notification to its user's devices (unless read, unwanted or online)."""
    rows = await PushDevice.raw(
        """
        SELECT n."user", n.kind, n.title, n.body, n.data, n.read_at, u.is_active, u.notification_prefs
        FROM notifications n JOIN users u ON u.id = n."user"
        WHERE n.id = {}
        """,
        notification_id,
    )
    if not rows or not rows[0]["is_active"] or rows[0]["read_at"] is not None:
        return "gone or read"
    row = rows[0]
    prefs, data = _json(row["notification_prefs"]) or {}, _json(row["data"]) or {}
    kind = row["kind"]
    if not wants_push(state.settings.push_kinds, prefs, kind, data.get("lounge_id")):
        return "not wanted"
    push = build(
        kind,
        title=row["title"],
        body=row["body"],
        data=data,
        collapse_id=_collapse_id(kind, data),
        private=private_previews(prefs),
        notification_id=str(notification_id),
    )
    return await deliver(state, {row["user"]: push})


def _collapse_id(kind: str, data: dict[str, Any]) -> str:
    """One per channel: a lounge's or a thread's pushes replace each other on the phone."""
    if data.get("channel"):
        return str(data["channel"])
    if data.get("lounge_id"):
        return f"lounge:{data['lounge_id']}"
    if data.get("capsule_id"):
        return f"capsule:{data['capsule_id']}"
    return kind


async def push_lounge_message(state: AppState, channel: str, offset: int) -> str:
    """Push a lounge message to every active member who is away and wants it: not its author,
    not those it mentions (they get the mention), not who muted the lounge."""
    rows = await PushDevice.raw(
        """
        SELECT m.id, m.sender, m.sender_type, m.text, m.deleted_at, l.id AS lounge_id, l.title,
               coalesce(u.full_name, '') AS sender_name,
               EXISTS (SELECT 1 FROM message_attachments a WHERE a.message = m.id) AS has_attachments
        FROM messages m JOIN lounges l ON l.channel = m.channel LEFT JOIN users u ON u.id = m.sender
        WHERE m.channel = {} AND m."offset" = {}
        """,
        channel,
        offset,
    )
    if not rows or rows[0]["deleted_at"] is not None:
        return "gone"
    message = rows[0]
    skip = mentioned_user_ids(message["text"])
    if message["sender"] is not None:
        skip.append(message["sender"])
    members = await PushDevice.raw(
        """
        SELECT lm."user", u.notification_prefs
        FROM lounge_memberships lm JOIN users u ON u.id = lm."user"
        WHERE lm.lounge = {} AND lm.status = 'active' AND u.is_active AND NOT (lm."user" = ANY({}::uuid[]))
          AND EXISTS (SELECT 1 FROM push_devices d WHERE d."user" = lm."user")
        """,
        message["lounge_id"],
        skip,
    )
    lounge_id = str(message["lounge_id"])
    sender = "Coach" if message["sender_type"] == "ai" else message["sender_name"] or "Someone"
    text = render_mentions(message["text"]) or ("Sent an attachment" if message["has_attachments"] else "")
    data = {"lounge_id": lounge_id, "channel": channel, "offset": offset, "message_id": str(message["id"])}
    pushes: dict[uuid.UUID, Push] = {}
    for member in members:
        prefs = _json(member["notification_prefs"]) or {}
        if not wants_push(state.settings.push_kinds, prefs, "lounge.message", lounge_id):
            continue
        pushes[member["user"]] = build(
            "lounge.message",
            title=f"{sender} in {message['title']}",
            body=text,
            data=data,
            collapse_id=channel,
            private=private_previews(prefs),
        )
    return await deliver(state, pushes) if pushes else "nobody to push"


async def push_coach_reply(state: AppState, channel: str, offset: int) -> str:
    """Push the coach's finished reply in a thread to the thread's owner."""
    rows = await PushDevice.raw(
        """
        SELECT t."user", t.id AS thread_id, m.id AS message_id, m.text, m.status, m.deleted_at,
               u.is_active, u.notification_prefs
        FROM chat_threads t JOIN users u ON u.id = t."user"
        JOIN messages m ON m.channel = t.channel AND m."offset" = {}
        WHERE t.channel = {}
        """,
        offset,
        channel,
    )
    if not rows or rows[0]["status"] != "complete" or rows[0]["deleted_at"] is not None or not rows[0]["is_active"]:
        return "gone"
    row = rows[0]
    prefs = _json(row["notification_prefs"]) or {}
    if not wants_push(state.settings.push_kinds, prefs, "thread.coach_reply"):
        return "not wanted"
    push = build(
        "thread.coach_reply",
        title="Your coach replied",
        body=row["text"],
        data={
            "thread_id": str(row["thread_id"]),
            "channel": channel,
            "offset": offset,
            "message_id": str(row["message_id"]),
        },
        collapse_id=channel,
        private=private_previews(prefs),
    )
    return await deliver(state, {row["user"]: push})


async def push_retry(state: AppState, items: list[dict[str, Any]], attempt: int) -> str:
    """Try again the devices a transient failure left: ``items`` are ``{"device", "user", "push"}``."""
    pushes: dict[uuid.UUID, Push] = {}
    devices: list[uuid.UUID] = []
    for item in items:
        pushes[uuid.UUID(item["user"])] = msgspec.convert(item["push"], Push)
        devices.append(uuid.UUID(item["device"]))
    return await deliver(state, pushes, attempt=attempt, only_devices=devices)


# -- delivering --------------------------------------------------------------------------------


_TARGETS_SQL = """
    SELECT d.id, d."user", d.platform, d.token, d.app_id, d.environment
    FROM push_devices d JOIN user_sessions s ON s.id = d.session
    WHERE d."user" = ANY({}::uuid[]) AND s.revoked_at IS NULL AND s.expires_at > now()
"""


async def deliver(
    state: AppState, pushes: dict[uuid.UUID, Push], *, attempt: int = 1, only_devices: Sequence[uuid.UUID] | None = None
) -> str:
    """Push to the devices of every user in ``pushes`` who has no socket connected now."""
    online = await online_users(state.realtime_redis, state.settings.redis_prefix, list(pushes))
    away = [user_id for user_id in pushes if user_id not in online]
    if not away:
        return "online"
    sql, args = _TARGETS_SQL, [away]
    if only_devices is not None:
        sql, args = sql + " AND d.id = ANY({}::uuid[])", [away, list(only_devices)]
    rows = await PushDevice.raw(sql, *args)
    if not rows:
        return "no devices"
    badges = await _unread_counts([row["user"] for row in rows])
    sends = [
        (
            Target(
                device_id=row["id"],
                user_id=row["user"],
                platform=row["platform"],
                token=row["token"],
                app_id=row["app_id"],
                environment=row["environment"],
            ),
            msgspec.structs.replace(pushes[row["user"]], badge=badges.get(row["user"], 0)),
        )
        for row in rows
    ]
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(target: Target, push: Push) -> Outcome:
        async with gate:
            return await _send(state, target, push, attempt)

    counts: Counter[str] = Counter()
    for start in range(0, len(sends), BATCH):  # a big lounge's pushes are logged as they go
        batch = sends[start : start + BATCH]
        outcomes = await asyncio.gather(*(one(target, push) for target, push in batch))
        counts += await _settle(state, list(zip(batch, outcomes, strict=True)), attempt)
    if counts[PushStatus.skipped]:  # once per job, however many devices
        unconfigured = sorted(
            {target.platform for target, _ in sends if providers_of(state).of(target.platform) is None}
        )
        log.warning(
            "push skipped: service not configured",
            extra={"platforms": unconfigured, "devices": counts[PushStatus.skipped]},
        )
    return ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))


async def _unread_counts(user_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await PushDevice.raw(
        """
        SELECT "user", count(*) AS n FROM notifications
        WHERE "user" = ANY({}::uuid[]) AND read_at IS NULL GROUP BY "user"
        """,
        list(set(user_ids)),
    )
    return {row["user"]: int(row["n"]) for row in rows}


async def _send(state: AppState, target: Target, push: Push, attempt: int) -> Outcome:
    client = providers_of(state).of(target.platform)
    if client is None:
        return Outcome(PushStatus.skipped, reason=f"{target.platform}_not_configured")
    if attempt == 1:  # a retry was charged when it was first tried
        try:
            await state.limiter.hit(f"push:{target.device_id}", state.settings.push_max_per_device_per_minute, 60)
        except RateLimited:
            return Outcome(PushStatus.rate_limited, reason="push_max_per_device_per_minute")
    try:
        return await client.send(target, push)
    except Exception as exc:  # a bug or a library surprise must not lose the others' log rows
        log.exception("push failed", extra={"device_id": str(target.device_id)})
        return Outcome(PushStatus.failed, reason=f"{type(exc).__name__}"[:200])


async def _settle(state: AppState, results: list[tuple[tuple[Target, Push], Outcome]], attempt: int) -> Counter[str]:
    """Log every attempt, prune dead tokens, stamp the sent, queue the retries; the count per status."""
    settings = state.settings
    final = attempt >= settings.push_max_attempts
    retries: list[dict[str, Any]] = []
    delay = 5.0 * 2 ** (attempt - 1)
    rows: list[PushLog] = []
    counts: Counter[str] = Counter()
    for (target, push), outcome in results:
        status = outcome.status
        if status == PushStatus.retrying:
            if final:
                status = PushStatus.failed
            else:
                retries.append(
                    {"device": str(target.device_id), "user": str(target.user_id), "push": msgspec.to_builtins(push)}
                )
                delay = max(delay, outcome.retry_after or 0.0)
        counts[status] += 1
        rows.append(
            PushLog(
                id=uuid.uuid4(),
                user=target.user_id,
                device=target.device_id,
                platform=target.platform,
                token_hint=token_hint(target.token),
                kind=push.kind,
                notification=uuid.UUID(push.notification_id) if push.notification_id else None,
                collapse_id=push.collapse_id,
                status=status,
                reason=outcome.reason[:200],
                status_code=outcome.status_code,
                attempt=attempt,
                private=push.private,
                data=push.data,
                provider_id=outcome.provider_id[:200],
            )
        )
    pruned = [target.device_id for (target, _), outcome in results if outcome.status == PushStatus.pruned]
    sent = [target.device_id for (target, _), outcome in results if outcome.status == PushStatus.sent]
    async with unit_of_work(state.engine):
        await PushLog.insert(*rows)
        if sent:
            await PushDevice.raw("UPDATE push_devices SET last_pushed_at = now() WHERE id = ANY({}::uuid[])", sent)
        if pruned:
            await PushDevice.raw("DELETE FROM push_devices WHERE id = ANY({}::uuid[])", pruned)
    if retries:
        try:  # the attempts are logged: a failure here must not make the job send them all again
            await state.redis.enqueue_job(
                RETRY_JOB, retries, attempt + 1, _defer_by=timedelta(seconds=min(300.0, delay))
            )
        except REDIS_ERRORS as exc:
            log.error("push retries not queued", extra={"devices": len(retries), "error": repr(exc)})
    return counts


# -- housekeeping ------------------------------------------------------------------------------

PRUNE_BATCH = 5000


async def prune_push_data(state: AppState) -> tuple[int, int]:
    """Delete push log rows past ``PUSH_LOG_RETENTION_DAYS`` (in batches) and the devices of
    sessions that ended (expired; revoked ones went with their revocation); returns both counts."""
    logged = 0
    days = state.settings.push_log_retention_days
    while days:
        rows = await PushLog.raw(
            """
            DELETE FROM push_log WHERE id IN (
                SELECT id FROM push_log WHERE created_at < now() - make_interval(days => {}) LIMIT {}
            ) RETURNING id
            """,
            days,
            PRUNE_BATCH,
        )
        logged += len(rows)
        if len(rows) < PRUNE_BATCH:
            break
    devices = await PushDevice.raw(
        """
        DELETE FROM push_devices d USING user_sessions s
        WHERE s.id = d.session AND (s.revoked_at IS NOT NULL OR s.expires_at <= now())
        RETURNING d.id
        """
    )
    return logged, len(devices)
