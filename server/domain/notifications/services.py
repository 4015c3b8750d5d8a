"""Notifications: stored in PostgreSQL, pushed live on ``user#<id>``, optionally mailed.

Two steps, so that nothing is pushed or mailed for a transaction that rolls back:

1. ``create_notification(user_id, kind=..., title=..., body=..., data=...)`` stores
   the row **inside the caller's transaction** and returns its id;
2. ``deliver_notification(state, notification_id)``, run **after the commit**,
   pushes ``{"type": "notification", "notification": {...}, "unread_count": n}``
   to every socket of the user and, when the user's preferences want mail for
   that kind, queues one mail. Delivery is idempotent for mail (``emailed_at`` is
   claimed before a mail is queued, so a second delivery never mails twice) and
   never raises: the stored row is the truth, a lost push is recovered by
   ``GET /notifications``.

``notify_on_commit(state, user_id, ...)`` does both inside the caller's unit of work
(:mod:`server.foundation.unit_of_work`): it stores the row and registers its delivery
for the commit. ``notify(state, user_id, ...)`` is the same in a unit of work of its own
(billing: ``notify(state, user_id, kind=NotificationKind.payment_failed, ...)``).

Push: once pushed live, a notification is queued for push to the user's phones
(``push_notification``, :mod:`server.domain.push.delivery`, which decides at delivery time:
not while a socket of the user is connected, and per the user's push preferences) when
APNs or FCM is configured.

Mail preferences live in ``users.notification_prefs``: ``{"email": false}`` stops
all notification mail; ``{"email:<kind>": true|false}`` turns one kind on or off;
otherwise ``NOTIFICATION_EMAIL_KINDS`` decides. Only active accounts with a
verified address get mail.

Mentions in lounges: a message mentions a member with the token
``@[Display Name](<user uuid>)`` (clients insert it from the member list; the name
is only what readers see, the uuid decides). ``notify_mentions`` notifies the
mentioned active members of that lounge, except the author, at most
``MAX_MENTIONS`` per message.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec

from server.domain.accounts.services import Principal
from server.domain.notifications.schemas import NotificationOut, NotificationPage, ReadResult
from server.domain.tables.notifications import Notification
from server.foundation.database import fetch
from server.foundation.errors import NotFound
from server.foundation.links import public_base_url
from server.foundation.mail import Mail, queue_mail
from server.foundation.pagination import keyset_page
from server.foundation.redis import REDIS_ERRORS
from server.foundation.settings import Settings
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work
from server.streams.broker import broadcast_ephemeral

log = logging.getLogger("lounges.notifications")

# The arq job that pushes a stored notification to the user's phones (server.domain.push,
# which sits above this package, registers it under this name; workers/push.py).
PUSH_JOB = "push_notification"
PUSH_QUEUE_TIMEOUT = 1.0

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_MENTIONS = 20
PRUNE_BATCH = 5000

MENTION = re.compile(
    r"@\[(?P<name>[^\[\]\n]{1,200})\]"
    r"\((?P<id>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)"
)


class NotificationKind(enum.StrEnum):
    """Every ``kind`` a notification may have, with the ids its ``data`` carries."""

    mentor_approved = "mentor.approved"  # mentor_id
    mentor_rejected = "mentor.rejected"  # mentor_id, reason
    lounge_invite = "lounge.invite"  # lounge_id, by
    lounge_request_approved = "lounge.request_approved"  # lounge_id, by
    lounge_request_declined = "lounge.request_declined"  # lounge_id, by
    lounge_mention = "lounge.mention"  # lounge_id, channel, offset, message_id, by
    capsule_unlocked = "capsule.unlocked"  # capsule_id, title, unlock_at, unlocked_at
    payment_succeeded = "payment.succeeded"  # set by billing (e.g. invoice_id, amount, currency)
    payment_failed = "payment.failed"  # set by billing
    ai_budget_nearly_used = "ai.budget_nearly_used"  # month, used, allowance
    subscription_ended = "subscription.ended"  # set by billing (plan, subscription id)
    role_changed = "role.changed"  # role, by
    export_ready = "compliance.export_ready"  # request_id


def personal_channel(user_id: uuid.UUID | str) -> str:
    return f"user#{user_id}"


def _json(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value


def notification_out(row: dict[str, Any]) -> NotificationOut:
    return NotificationOut(
        id=row["id"],
        kind=row["kind"],
        title=row["title"],
        body=row["body"],
        data=_json(row["data"]) or {},
        read=row["read_at"] is not None,
        read_at=row["read_at"],
        created_at=row["created_at"],
    )


def wants_email(settings: Settings, prefs: dict[str, Any], kind: str) -> bool:
    """Whether a user with ``prefs`` gets mail for ``kind``."""
    if prefs.get("email") is False:
        return False
    chosen = prefs.get(f"email:{kind}")
    if isinstance(chosen, bool):
        return chosen
    return kind in settings.notification_email_kinds


# -- creating and delivering -------------------------------------------------------------------


async def create_notification(
    user_id: uuid.UUID, *, kind: str, title: str, body: str, data: dict[str, Any] | None = None
) -> uuid.UUID:
    """Store an in-app notification for ``user_id`` (inside the caller's transaction); returns its id.

    Deliver it with :func:`deliver_notification` after the transaction commits (or use
    :func:`notify_on_commit`, which does both).
    """
    notification_id = uuid.uuid4()
    await Notification.insert(
        Notification(id=notification_id, user=user_id, kind=kind, title=title[:200], body=body, data=data or {})
    )
    return notification_id


async def notify_on_commit(
    state: AppState, user_id: uuid.UUID, *, kind: str, title: str, body: str, data: dict[str, Any] | None = None
) -> uuid.UUID:
    """Store a notification inside the caller's unit of work and deliver it once that commits;
    returns its id."""
    notification_id = await create_notification(user_id, kind=kind, title=title, body=body, data=data)
    await on_commit(partial(deliver_notification, state, notification_id))
    return notification_id


async def unread_count(user_id: uuid.UUID) -> int:
    rows = await fetch('SELECT count(*) AS n FROM notifications WHERE "user" = {} AND read_at IS NULL', user_id)
    return int(rows[0]["n"])


async def deliver_notification(state: AppState, notification_id: uuid.UUID) -> bool:
    """Push a committed notification to the user's sockets and mail it if wanted.

    Never raises (a failure is logged and ``False`` returned); safe to call again.
    """
    try:
        await _deliver(state, notification_id)
    except Exception:
        log.exception("notification delivery failed", extra={"notification_id": str(notification_id)})
        return False
    return True


async def _deliver(state: AppState, notification_id: uuid.UUID) -> None:
    rows = await Notification.raw(
        """
        SELECT n.id, n."user", n.kind, n.title, n.body, n.data, n.read_at, n.emailed_at, n.created_at,
               u.email, u.is_active, u.email_verified_at, u.notification_prefs
        FROM notifications n JOIN users u ON u.id = n."user"
        WHERE n.id = {}
        """,
        notification_id,
    )
    if not rows or not rows[0]["is_active"]:
        return
    row = rows[0]
    await broadcast_ephemeral(
        state,
        personal_channel(row["user"]),
        {
            "type": "notification",
            "notification": msgspec.to_builtins(notification_out(row)),
            "unread_count": await unread_count(row["user"]),
        },
    )
    await _queue_push(state, notification_id)
    prefs = _json(row["notification_prefs"]) or {}
    if (
        row["emailed_at"] is not None
        or row["email_verified_at"] is None
        or not wants_email(state.settings, prefs, row["kind"])
    ):
        return
    # Claim the mail first: a concurrent or repeated delivery finds it taken.
    claimed = await Notification.raw(
        "UPDATE notifications SET emailed_at = now() WHERE id = {} AND emailed_at IS NULL RETURNING id",
        notification_id,
    )
    if not claimed:
        return
    try:
        await queue_mail(state.redis, _mail(state.settings, row))
    except Exception:
        await Notification.raw("UPDATE notifications SET emailed_at = NULL WHERE id = {}", notification_id)
        raise


async def _queue_push(state: AppState, notification_id: uuid.UUID) -> None:
    """Queue the push of a delivered notification (once: the job id is the notification's).
    A failure is logged: the notification is stored and pushed live already."""
    if not state.settings.push_configured:
        return
    try:
        async with asyncio.timeout(PUSH_QUEUE_TIMEOUT):
            await state.redis.enqueue_job(
                PUSH_JOB, str(notification_id), _job_id=f"push:notification:{notification_id}"
            )
    except REDIS_ERRORS as exc:
        log.warning("notification push not queued", extra={"notification_id": str(notification_id), "error": repr(exc)})


def _mail(settings: Settings, row: dict[str, Any]) -> Mail:
    body = f"{row['body']}\n\n" if row["body"] else ""
    return Mail(
        to=row["email"],
        subject=row["title"],
        text=(
            f"{row['title']}\n\n{body}Open Lounges: {settings.app_link_base or public_base_url(settings)}\n\n"
            "You get this mail because of your notification settings; you can turn it off there."
        ),
    )


async def notify(
    state: AppState, user_id: uuid.UUID, *, kind: str, title: str, body: str, data: dict[str, Any] | None = None
) -> uuid.UUID:
    """Store a notification in a unit of work of its own, then deliver it; returns its id."""
    async with unit_of_work(state.engine):
        return await notify_on_commit(state, user_id, kind=kind, title=title, body=body, data=data)


# -- events that notify ------------------------------------------------------------------------


def mentioned_user_ids(text: str) -> list[uuid.UUID]:
    """The distinct users mentioned in ``text`` with ``@[Name](uuid)``, in order, at most ``MAX_MENTIONS``."""
    found: dict[uuid.UUID, None] = {}
    for match in MENTION.finditer(text):
        found.setdefault(uuid.UUID(match["id"]), None)
        if len(found) == MAX_MENTIONS:
            break
    return list(found)


def render_mentions(text: str) -> str:
    """``@[Ada Lovelace](uuid)`` → ``@Ada Lovelace`` (for notification bodies and mail)."""
    return MENTION.sub(lambda match: f"@{match['name']}", text)


def rename_mentions(text: str, user_id: uuid.UUID, name: str) -> str:
    """``text`` with every mention of ``user_id`` showing ``name`` (an erased account's mentions)."""
    return MENTION.sub(
        lambda match: f"@[{name}]({match['id']})" if match["id"].lower() == str(user_id) else match[0], text
    )


async def notify_mentions(state: AppState, channel: str, message: Any) -> list[uuid.UUID]:
    """After a lounge message committed: notify the members it mentions; returns the notification ids.

    ``message`` is the stored :class:`~server.domain.chat.schemas.MessageOut`. Threads,
    AI replies, the author and people who are not active members are skipped.
    Never raises: the message is already posted.
    """
    try:
        if not channel.startswith("lounge:") or message.sender.id is None or message.deleted:
            return []
        author = message.sender.id
        wanted = [user_id for user_id in mentioned_user_ids(message.text) if user_id != author]
        if not wanted:
            return []
        rows = await Notification.raw(
            """
            SELECT lm."user", l.id AS lounge_id, l.title
            FROM lounge_memberships lm
            JOIN lounges l ON l.id = lm.lounge
            JOIN users u ON u.id = lm."user"
            WHERE l.channel = {} AND lm.status = 'active' AND u.is_active AND lm."user" = ANY({}::uuid[])
            """,
            channel,
            wanted,
        )
        if not rows:
            return []
        body = _mention_body(message.text)
        async with unit_of_work(state.engine):
            return [
                await notify_on_commit(
                    state,
                    row["user"],
                    kind=NotificationKind.lounge_mention,
                    title=f"{message.sender.full_name} mentioned you in {row['title']}",
                    body=body,
                    data={
                        "lounge_id": str(row["lounge_id"]),
                        "channel": channel,
                        "offset": message.offset,
                        "message_id": str(message.id),
                        "by": str(author),
                    },
                )
                for row in rows
            ]
    except Exception:
        log.exception("mention notifications failed", extra={"channel": channel})
        return []


async def reword_mentions(message_id: uuid.UUID, text: str) -> None:
    """A mentioning message was edited: its notifications show the new text, never the old
    (inside the edit's transaction)."""
    await Notification.raw(
        "UPDATE notifications SET body = {} WHERE kind = {} AND data->>'message_id' = {}",
        _mention_body(text),
        NotificationKind.lounge_mention,
        str(message_id),
    )


async def forget_mentions(*, message_ids: Sequence[uuid.UUID] = (), by: uuid.UUID | None = None) -> None:
    """Delete the mention notifications of deleted messages, or of everything ``by`` an
    erased user wrote (their name is in the title, their text in the body)."""
    if message_ids:
        await Notification.raw(
            "DELETE FROM notifications WHERE kind = {} AND data->>'message_id' = ANY({}::text[])",
            NotificationKind.lounge_mention,
            [str(message_id) for message_id in message_ids],
        )
    if by is not None:
        await Notification.raw(
            "DELETE FROM notifications WHERE kind = {} AND data->>'by' = {}", NotificationKind.lounge_mention, str(by)
        )


def _mention_body(text: str) -> str:
    text = render_mentions(text)
    return text if len(text) <= 300 else text[:299] + "…"


async def notify_budget_nearly_used(state: AppState, user_id: uuid.UUID, used: int, allowance: int) -> uuid.UUID | None:
    """Tell the user once per calendar month (UTC) that ``used`` passed ``AI_BUDGET_WARNING_PERCENT``
    of ``allowance``; returns the new notification's id, ``None`` when below or already told.

    Safe under concurrent calls (an advisory lock per user and month). Never raises.
    """
    try:
        if allowance <= 0 or used * 100 < allowance * state.settings.ai_budget_warning_percent:
            return None
        month = datetime.now(UTC).strftime("%Y-%m")
        async with unit_of_work(state.engine):
            await Notification.raw(
                "SELECT pg_advisory_xact_lock(hashtextextended({}, 0))", f"notify:ai-budget:{user_id}:{month}"
            )
            told = await Notification.raw(
                """
                SELECT 1 FROM notifications
                WHERE "user" = {} AND kind = {} AND data->>'month' = {}
                LIMIT 1
                """,
                user_id,
                NotificationKind.ai_budget_nearly_used.value,
                month,
            )
            if told:
                return None
            percent = min(100, used * 100 // allowance)
            return await notify_on_commit(
                state,
                user_id,
                kind=NotificationKind.ai_budget_nearly_used,
                title=f"You have used {percent}% of this month's AI allowance",
                body=(
                    f"You have used {used:,} of {allowance:,} AI tokens this month. "
                    "The allowance renews on the 1st; a plan raises it."
                ),
                data={"month": month, "used": used, "allowance": allowance},
            )
    except Exception:
        log.exception("AI budget notification failed", extra={"user_id": str(user_id)})
        return None


# -- reading -----------------------------------------------------------------------------------


async def list_notifications(
    principal: Principal, *, unread_only: bool = False, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> NotificationPage:
    """The caller's notifications, newest first (keyset pagination: stable while new ones arrive)."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = 'SELECT id, kind, title, body, data, read_at, created_at FROM notifications WHERE "user" = {}'
    args: list[Any] = [principal.user_id]
    if unread_only:
        sql += " AND read_at IS NULL"
    page, next_cursor = await keyset_page(sql, args, moment="created_at", row_id="id", cursor=cursor, limit=limit)
    return NotificationPage(
        items=[notification_out(row) for row in page],
        next_cursor=next_cursor,
        unread_count=await unread_count(principal.user_id),
    )


async def do_mark_read(state: AppState, principal: Principal, notification_id: uuid.UUID) -> ReadResult:
    """Mark one of the caller's notifications read (idempotent); 404 for anyone else's."""
    rows = await Notification.raw(
        'UPDATE notifications SET read_at = now() WHERE id = {} AND "user" = {} AND read_at IS NULL RETURNING id',
        notification_id,
        principal.user_id,
    )
    if not rows and not await Notification.exists().where(
        Notification.id == notification_id, Notification.user == principal.user_id
    ):
        raise NotFound("no such notification", code="notification_not_found")
    return ReadResult(marked=len(rows), unread_count=await unread_count(principal.user_id))


async def do_mark_all_read(state: AppState, principal: Principal) -> ReadResult:
    """Mark every unread notification of the caller read.

    One ``UPDATE ... WHERE read_at IS NULL``: concurrent calls (and single reads)
    each mark a row at most once, and the count is always taken from the rows.
    """
    rows = await Notification.raw(
        'UPDATE notifications SET read_at = now() WHERE "user" = {} AND read_at IS NULL RETURNING id',
        principal.user_id,
    )
    return ReadResult(marked=len(rows), unread_count=await unread_count(principal.user_id))


# -- housekeeping ------------------------------------------------------------------------------


async def prune_read_notifications(state: AppState) -> int:
    """Delete read notifications older than ``NOTIFICATION_RETENTION_DAYS`` (in batches); returns how many."""
    days = state.settings.notification_retention_days
    if days == 0:
        return 0
    total = 0
    while True:
        rows = await Notification.raw(
            """
            DELETE FROM notifications WHERE id IN (
                SELECT id FROM notifications
                WHERE read_at IS NOT NULL AND created_at < now() - make_interval(days => {})
                LIMIT {}
            ) RETURNING id
            """,
            days,
            PRUNE_BATCH,
        )
        total += len(rows)
        if len(rows) < PRUNE_BATCH:
            return total
