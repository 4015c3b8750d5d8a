"""Time capsules: a message (and files) to one's future self, sealed until ``unlock_at``.

Sealed means unreadable by everyone, the owner included, through every route:
sealed content never leaves PostgreSQL on a read (the queries select it only
``WHEN status = 'unlocked'``), and a sealed capsule's files are reported by
:func:`sealed_file_ids` so the file routes can refuse them.

A capsule opens exactly once, whichever comes first:

- the every-minute job (``workers/capsules.py``) runs :func:`unlock_due_capsules`:
  ``UPDATE ... SET status = 'unlocked' WHERE status = 'sealed' AND unlock_at <= now()``
  over rows picked ``FOR UPDATE SKIP LOCKED``, so runs that overlap (two workers,
  a retry) open disjoint capsules, and everything due is opened, however long
  no worker ran;
- the owner's ``POST /capsules/{id}/unlock`` once ``unlock_at`` has passed (before:
  409 ``capsule_sealed``).

The notification row (kind ``capsule.unlocked``, ``data``: ``capsule_id``, ``title``,
``unlock_at``, ``unlocked_at``) is written in the unlocking transaction; after the
commit the owner gets it as a ``{"type": "notification", ...}`` push on
``user#<id>`` (every device) and, per their preferences, by mail; then
``notified_at`` is set. A process that died between commit and delivery leaves
``notified_at`` empty: :func:`redeliver_unlock_notifications` (same job) delivers
those again (mail is claimed per notification, so it is never sent twice).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import msgspec

from server.domain.accounts.services import Principal
from server.domain.capsules.schemas import CapsuleCreate, CapsuleOut, CapsulePage, CapsuleSummary
from server.domain.notifications.services import NotificationKind, create_notification, deliver_notification
from server.domain.tables.capsules import CapsuleAttachment, CapsuleStatus, TimeCapsule
from server.foundation.clock import now
from server.foundation.errors import Conflict, Forbidden, NotFound, ValidationFailed
from server.foundation.pagination import keyset_page
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Files that may be sealed: uploaded as chat attachments or for a capsule. Sealing sets purpose "capsule".
SEALABLE_PURPOSES = ("attachment", "capsule")
# Unlocks whose delivery did not finish are delivered again after this long, for this long.
REDELIVER_AFTER = timedelta(minutes=2)
REDELIVER_WITHIN = timedelta(days=7)

_SUMMARY_COLUMNS = """
    t.id, t.title, t.status, t.unlock_at, t.unlocked_at, t.created_at, t.unlock_at <= now() AS due,
    (SELECT count(*) FROM capsule_attachments a WHERE a.capsule = t.id) AS attachment_count
"""
# Content and files leave the database only for an unlocked capsule.
_DETAIL_COLUMNS = (
    _SUMMARY_COLUMNS
    + """,
    CASE WHEN t.status = 'unlocked' THEN t.content END AS content,
    CASE WHEN t.status = 'unlocked' THEN
        ARRAY(SELECT a.file FROM capsule_attachments a WHERE a.capsule = t.id ORDER BY a.created_at, a.file)
    END AS attachments
"""
)


def _summary(row: dict[str, Any]) -> CapsuleSummary:
    return CapsuleSummary(
        id=row["id"],
        title=row["title"],
        status=row["status"],
        sealed=row["status"] != CapsuleStatus.unlocked,
        due=bool(row["due"]),
        unlock_at=row["unlock_at"],
        unlocked_at=row["unlocked_at"],
        created_at=row["created_at"],
        attachment_count=int(row["attachment_count"]),
    )


def capsule_out(row: dict[str, Any]) -> CapsuleOut:
    unlocked = row["status"] == CapsuleStatus.unlocked
    return CapsuleOut(
        **msgspec.structs.asdict(_summary(row)),
        content=row["content"] if unlocked else None,
        attachments=list(row["attachments"] or []) if unlocked else None,
    )


async def _owned(principal: Principal, capsule_id: uuid.UUID) -> CapsuleOut:
    rows = await TimeCapsule.raw(
        f'SELECT {_DETAIL_COLUMNS} FROM time_capsules t WHERE t.id = {{}} AND t."user" = {{}}',
        capsule_id,
        principal.user_id,
    )
    if not rows:
        raise NotFound("no such capsule", code="capsule_not_found")
    return capsule_out(rows[0])


# -- the owner's routes ------------------------------------------------------------------------


async def do_create_capsule(state: AppState, principal: Principal, data: CapsuleCreate) -> CapsuleOut:
    """Seal a capsule. Its files must be the caller's own ready uploads, attached to no message
    and to no other capsule; they become ``purpose = 'capsule'``."""
    title, content = data.title.strip(), data.content.strip()
    if not title:
        raise ValidationFailed("title must not be blank", code="invalid_title")
    attachments = list(dict.fromkeys(data.attachments))
    if not content and not attachments:
        raise ValidationFailed("a capsule needs content or an attachment", code="empty_capsule")
    moment = now()
    if data.unlock_at <= moment:
        raise ValidationFailed("unlock_at must be in the future", code="unlock_at_not_in_future")
    furthest = state.settings.capsule_max_days_ahead
    if data.unlock_at > moment + timedelta(days=furthest):
        raise ValidationFailed(f"unlock_at may be at most {furthest} days ahead", code="unlock_at_too_far")
    capsule_id = uuid.uuid4()
    async with unit_of_work(state.engine):
        # One creation per user at a time: the per-user cap and the file checks below hold.
        await TimeCapsule.raw("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))", f"capsules:{principal.user_id}")
        if await TimeCapsule.count().where(TimeCapsule.user == principal.user_id) >= (
            state.settings.capsule_max_per_user
        ):
            raise Conflict(
                f"you have {state.settings.capsule_max_per_user} capsules, the most one may keep",
                code="capsule_limit_reached",
            )
        if attachments:
            usable = await TimeCapsule.raw(
                """
                SELECT f.id FROM files f
                WHERE f.id = ANY({}::uuid[]) AND f.owner = {} AND f.status = 'ready'
                  AND f.purpose = ANY({}::text[])
                  AND NOT EXISTS (SELECT 1 FROM capsule_attachments a WHERE a.file = f.id)
                  AND NOT EXISTS (SELECT 1 FROM message_attachments m WHERE m.file = f.id)
                FOR UPDATE OF f
                """,
                attachments,
                principal.user_id,
                list(SEALABLE_PURPOSES),
            )
            if len(usable) != len(attachments):
                found = {row["id"] for row in usable}
                raise ValidationFailed(
                    "attachments must be your own uploaded files, not attached to a message or another capsule",
                    code="invalid_attachment",
                    file_ids=[str(file_id) for file_id in attachments if file_id not in found],
                )
        await TimeCapsule.insert(
            TimeCapsule(
                id=capsule_id,
                user=principal.user_id,
                title=title,
                content=content,
                unlock_at=data.unlock_at,
                status=CapsuleStatus.sealed,
            )
        )
        if attachments:
            await CapsuleAttachment.insert(*(CapsuleAttachment(capsule=capsule_id, file=f) for f in attachments))
            await TimeCapsule.raw("UPDATE files SET purpose = 'capsule' WHERE id = ANY({}::uuid[])", attachments)
    return await _owned(principal, capsule_id)


async def list_capsules(
    principal: Principal,
    *,
    status: CapsuleStatus | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> CapsulePage:
    """The caller's capsules, soonest ``unlock_at`` first, without content."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = f'SELECT {_SUMMARY_COLUMNS} FROM time_capsules t WHERE t."user" = {{}}'
    args: list[Any] = [principal.user_id]
    if status is not None:
        sql += " AND t.status = {}"
        args.append(str(status))
    page, next_cursor = await keyset_page(
        sql, args, moment="t.unlock_at", row_id="t.id", cursor=cursor, limit=limit, descending=False
    )
    return CapsulePage(
        items=[_summary(row) for row in page],
        next_cursor=next_cursor,
    )


async def get_capsule(principal: Principal, capsule_id: uuid.UUID) -> CapsuleOut:
    """One of the caller's capsules; content and files only once unlocked. Anyone else: 404."""
    return await _owned(principal, capsule_id)


async def do_unlock_capsule(state: AppState, principal: Principal, capsule_id: uuid.UUID) -> CapsuleOut:
    """Open a due capsule now (idempotent once open); before ``unlock_at``: 409 ``capsule_sealed``."""
    async with unit_of_work(state.engine):
        rows = await TimeCapsule.raw(
            """
            UPDATE time_capsules t SET status = 'unlocked', unlocked_at = now()
            WHERE t.id = {} AND t."user" = {} AND t.status = 'sealed' AND t.unlock_at <= now()
            RETURNING t.id, t."user", t.title, t.unlock_at, t.unlocked_at
            """,
            capsule_id,
            principal.user_id,
        )
        await _record_unlocks(state, rows)
    capsule = await _owned(principal, capsule_id)
    if capsule.sealed:
        raise Conflict(
            f"the capsule stays sealed until {capsule.unlock_at.isoformat()}",
            code="capsule_sealed",
            unlock_at=capsule.unlock_at.isoformat(),
        )
    return capsule


async def do_delete_capsule(state: AppState, principal: Principal, capsule_id: uuid.UUID) -> None:
    """Delete a capsule, sealed or not (its content is gone unread; its files stay the owner's)."""
    async with unit_of_work(state.engine):
        rows = await TimeCapsule.raw(
            'DELETE FROM time_capsules WHERE id = {} AND "user" = {} RETURNING id', capsule_id, principal.user_id
        )
    if not rows:
        raise NotFound("no such capsule", code="capsule_not_found")


# -- for the file routes -----------------------------------------------------------------------


async def sealed_file_ids(file_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``file_ids`` sealed in a capsule that is not unlocked yet (their bytes and metadata
    must not be served, not even to their owner)."""
    ids = list(dict.fromkeys(file_ids))
    if not ids:
        return set()
    rows = await CapsuleAttachment.raw(
        """
        SELECT DISTINCT a.file FROM capsule_attachments a JOIN time_capsules t ON t.id = a.capsule
        WHERE a.file = ANY({}::uuid[]) AND t.status <> 'unlocked'
        """,
        ids,
    )
    return {row["file"] for row in rows}


async def check_files_not_sealed(file_ids: Iterable[uuid.UUID]) -> None:
    """403 ``capsule_sealed`` when any of ``file_ids`` is sealed in a capsule."""
    if await sealed_file_ids(file_ids):
        raise Forbidden("the file is sealed in a time capsule until it unlocks", code="capsule_sealed")


# -- the unlock job ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unlocked:
    capsule_id: uuid.UUID
    notification_id: uuid.UUID


async def _record_unlocks(state: AppState, rows: list[dict[str, Any]]) -> list[Unlocked]:
    """The unlock notification of each capsule just opened (in the unlocking unit of work),
    announced once that commits."""
    unlocked = []
    for row in rows:
        notification_id = await create_notification(
            row["user"],
            kind=NotificationKind.capsule_unlocked,
            title=f"Your time capsule “{row['title']}” is open",
            body="The message you sealed for today can be read now.",
            data={
                "capsule_id": str(row["id"]),
                "title": row["title"],
                "unlock_at": row["unlock_at"].isoformat(),
                "unlocked_at": row["unlocked_at"].isoformat(),
            },
        )
        unlocked.append(Unlocked(row["id"], notification_id))
    if unlocked:
        await on_commit(partial(_announce, state, unlocked))
    return unlocked


async def _announce(state: AppState, unlocked: list[Unlocked]) -> None:
    """After the commit: push (and mail) each unlock's notification, then mark the delivered ones notified."""
    delivered = [item.capsule_id for item in unlocked if await deliver_notification(state, item.notification_id)]
    if delivered:
        await TimeCapsule.raw(
            "UPDATE time_capsules SET notified_at = now() WHERE id = ANY({}::uuid[]) AND notified_at IS NULL",
            delivered,
        )


async def unlock_due_capsules(state: AppState) -> int:
    """Open every sealed capsule whose ``unlock_at`` has passed, in batches; returns how many this call opened."""
    batch = state.settings.capsule_unlock_batch_size
    total = 0
    while True:
        async with unit_of_work(state.engine):
            rows = await TimeCapsule.raw(
                """
                UPDATE time_capsules t SET status = 'unlocked', unlocked_at = now()
                WHERE t.id IN (
                    SELECT id FROM time_capsules
                    WHERE status = 'sealed' AND unlock_at <= now()
                    ORDER BY unlock_at, id
                    LIMIT {}
                    FOR UPDATE SKIP LOCKED
                ) AND t.status = 'sealed' AND t.unlock_at <= now()
                RETURNING t.id, t."user", t.title, t.unlock_at, t.unlocked_at
                """,
                batch,
            )
            unlocked = await _record_unlocks(state, rows)
        total += len(unlocked)
        if len(rows) < batch:
            return total


async def redeliver_unlock_notifications(state: AppState) -> int:
    """Deliver again the unlocks whose delivery did not finish (a crash after the commit)."""
    rows = await TimeCapsule.raw(
        """
        SELECT t.id, n.id AS notification_id
        FROM time_capsules t
        LEFT JOIN LATERAL (
            SELECT x.id FROM notifications x
            WHERE x."user" = t."user" AND x.kind = {} AND x.data->>'capsule_id' = t.id::text
            ORDER BY x.created_at LIMIT 1
        ) n ON true
        WHERE t.status = 'unlocked' AND t.notified_at IS NULL
          AND t.unlocked_at < now() - {}::interval AND t.unlocked_at > now() - {}::interval
        ORDER BY t.unlocked_at
        LIMIT {}
        """,
        NotificationKind.capsule_unlocked.value,
        REDELIVER_AFTER,
        REDELIVER_WITHIN,
        state.settings.capsule_unlock_batch_size,
    )
    missing = [row["id"] for row in rows if row["notification_id"] is None]
    if missing:  # nothing to deliver (e.g. the notification was erased): stop looking at them
        await TimeCapsule.raw("UPDATE time_capsules SET notified_at = now() WHERE id = ANY({}::uuid[])", missing)
    items = [Unlocked(row["id"], row["notification_id"]) for row in rows if row["notification_id"] is not None]
    await _announce(state, items)
    return len(items)
