"""Compliance: data export (right of access) and the file/embedding/payment side of erasure.

**Export.** ``POST /api/v1/users/me/exports`` records a request (one pending
at a time: asking again answers the open one) and enqueues ``build_export``.
The job streams a JSON archive of everything the account owns into the
object store, table by table and page by page (never the whole archive in
memory), as an ``export`` file of the user, then marks the request completed
and leaves a notification. ``GET /api/v1/users/me/exports/{id}`` answers the
status and, once completed, a fresh presigned link (``PRESIGNED_URL_TTL``).
The archive is deleted by the clean-up job after ``EXPORT_RETENTION``.

Archive (``format: lounges-export/1``): ``account`` (the user row without
secrets), ``identities``, ``sessions``, ``security_events``,
``mentor_profile``, ``lounges_run``, ``lounge_memberships``, ``threads``
(each with all its ``messages``, the coach's replies included),
``lounge_messages`` (the user's own posts in lounges), ``reactions``,
``notes``, ``capsules`` (metadata; the content only once unlocked),
``notifications``, ``push_devices`` (each device's platform, app, locale and dates with
``token_hint``, the token's last 8 characters: the token itself is a delivery address
for the push services, of no use to its owner and harmful in a leaked archive),
``push_log`` (what was pushed: kinds, ids and outcomes, never text), ``files`` (metadata; the bytes stay downloadable through
``/files/{id}``), ``billing`` (customer, subscriptions, payments),
``ai_usage`` and ``compliance_requests``. Password and token hashes are never
included.

**Erasure** (the ``erase_user`` job of ``DELETE /users/me``, in
:mod:`server.domain.compliance.erasure`) calls :func:`erase_owned_data` inside its
transaction and :func:`purge_erased_files` after it commits: every file the
user owns is detached and deleted (object and row), knowledge chunks they own
(note and knowledge-file embeddings) are deleted, and payments, subscriptions
and the Stripe customer link are kept, as accounting law requires, but no
longer point at the person (user set to null, the hosted invoice link
dropped).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial
from typing import Any

import msgspec
from piccolo.table import Table

from server.domain.accounts.services import Principal
from server.domain.compliance.schemas import ExportList, ExportOut
from server.domain.files.services import detach, discard_upload, purge_files
from server.domain.notifications.services import notify_on_commit
from server.domain.push.devices import export_devices
from server.domain.tables.accounts import OAuthAccount, SecurityEvent, User, UserSession
from server.domain.tables.ai import AIUsage
from server.domain.tables.billing import BillingCustomer, Payment, Subscription
from server.domain.tables.capsules import CapsuleAttachment, CapsuleStatus, TimeCapsule
from server.domain.tables.chat import ChatThread, Message, MessageReaction
from server.domain.tables.compliance import ComplianceKind, ComplianceRequest, ComplianceStatus
from server.domain.tables.files import File, FilePurpose, FileStatus
from server.domain.tables.knowledge import KnowledgeChunk
from server.domain.tables.lounges import Lounge, LoungeMembership
from server.domain.tables.mentors import Mentor
from server.domain.tables.notes import Note
from server.domain.tables.notifications import Notification
from server.domain.tables.push import PushLog
from server.foundation.clock import now
from server.foundation.errors import NotFound
from server.foundation.pagination import keyset_page
from server.foundation.state import AppState
from server.foundation.storage import ChunkReader
from server.foundation.unit_of_work import on_commit, unit_of_work

log = logging.getLogger("lounges.compliance")

EXPORT_FORMAT = "lounges-export/1"
EXPORT_JOB = "build_export"
PAGE = 500
DEFAULT_PAGE_SIZE = 20  # of GET /users/me/exports
MAX_PAGE_SIZE = 100
_OPEN = (ComplianceStatus.pending, ComplianceStatus.processing)
_FILE_COLUMNS = (
    "id, owner, bucket, object_key, filename, content_type, size, sha256, purpose, lounge, status, created_at"
)


def export_job_id(request_id: uuid.UUID) -> str:
    """arq job id of a request's export: enqueueing twice runs it once."""
    return f"export:{request_id}"


# -- requests --------------------------------------------------------------------------------


async def _export_out(state: AppState, row: dict[str, Any]) -> ExportOut:
    out = ExportOut(
        id=row["id"],
        status=row["status"],
        requested_at=row["requested_at"],
        completed_at=row["completed_at"],
        error=row["error"],
    )
    if row["status"] != ComplianceStatus.completed:
        return out
    file = None
    if row["result_file"] is not None:
        file = (
            await File.select(
                File.bucket, File.object_key, File.filename, File.content_type, File.size, File.sha256, File.status
            )
            .where(File.id == row["result_file"], File.status == FileStatus.ready)
            .first()
        )
    if file is None:
        out.expired = True
        return out
    out.size, out.sha256 = file["size"], file["sha256"]
    out.available_until = row["completed_at"] + timedelta(seconds=state.settings.export_retention)
    url, ttl = await state.storage.presigned_get(
        file["object_key"], filename=file["filename"], content_type=file["content_type"], bucket=file["bucket"]
    )
    out.download_url, out.download_expires_at = url, now() + timedelta(seconds=ttl)
    return out


async def do_request_export(state: AppState, principal: Principal) -> ExportOut:
    """Ask for an export; an export still pending or processing is answered instead of a new one."""
    async with unit_of_work(state.engine):
        await User.raw("SELECT id FROM users WHERE id = {} FOR UPDATE", principal.user_id)  # one at a time
        row = (
            await ComplianceRequest.select()
            .where(
                ComplianceRequest.user == principal.user_id,
                ComplianceRequest.kind == ComplianceKind.export,
                ComplianceRequest.status.is_in(list(_OPEN)),
            )
            .first()
        )
        if row is None:
            [created] = await ComplianceRequest.insert(
                ComplianceRequest(user=principal.user_id, kind=ComplianceKind.export, status=ComplianceStatus.pending)
            ).returning(ComplianceRequest.id)
            row = await ComplianceRequest.select().where(ComplianceRequest.id == created["id"]).first()
        assert row is not None  # found, or inserted above
        await on_commit(partial(_enqueue_export, state, row["id"]))
    return await _export_out(state, row)


async def _enqueue_export(state: AppState, request_id: uuid.UUID) -> None:
    try:
        await state.redis.enqueue_job(EXPORT_JOB, str(request_id), _job_id=export_job_id(request_id))
    except Exception:  # the request is recorded; asking again re-enqueues it
        log.warning("could not enqueue the export", exc_info=True, extra={"compliance_request_id": str(request_id)})


async def get_export(state: AppState, principal: Principal, request_id: uuid.UUID) -> ExportOut:
    row = (
        await ComplianceRequest.select()
        .where(
            ComplianceRequest.id == request_id,
            ComplianceRequest.user == principal.user_id,
            ComplianceRequest.kind == ComplianceKind.export,
        )
        .first()
    )
    if row is None:
        raise NotFound("no such export", code="export_not_found")
    return await _export_out(state, row)


async def list_exports(
    state: AppState, principal: Principal, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> ExportList:
    """The caller's export requests, newest first, each with a fresh link while its archive is kept."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    rows, next_cursor = await keyset_page(
        'SELECT r.* FROM compliance_requests r WHERE r."user" = {} AND r.kind = {}',
        [principal.user_id, str(ComplianceKind.export)],
        moment="r.requested_at",
        row_id="r.id",
        cursor=cursor,
        limit=limit,
    )
    return ExportList(items=[await _export_out(state, row) for row in rows], next_cursor=next_cursor)


# -- the archive -----------------------------------------------------------------------------


async def _paged(table: type[Table], *conditions: Any) -> AsyncIterator[dict[str, Any]]:
    """Rows of ``table`` matching ``conditions``, without secret columns, by id in pages."""
    last: Any = None
    while True:
        query = table.select(exclude_secrets=True).where(*conditions)
        if last is not None:
            query = query.where(table._meta.primary_key > last)
        rows = await query.order_by(table._meta.primary_key).limit(PAGE).output(load_json=True)
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        last = rows[-1]["id"]


async def _channel_messages(channel: str) -> AsyncIterator[dict[str, Any]]:
    last = 0
    while True:
        rows = (
            await Message.select()
            .where(Message.channel == channel, Message.offset > last)
            .order_by(Message.offset)
            .limit(PAGE)
            .output(load_json=True)
        )
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        last = rows[-1]["offset"]


async def _lounge_posts(user_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    channel, offset = "", 0
    while True:
        rows = (
            await Message.select()
            .where(
                Message.sender == user_id,
                Message.channel.like("lounge:%"),
                (Message.channel > channel) | ((Message.channel == channel) & (Message.offset > offset)),
            )
            .order_by(Message.channel)
            .order_by(Message.offset)
            .limit(PAGE)
            .output(load_json=True)
        )
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        channel, offset = rows[-1]["channel"], rows[-1]["offset"]


async def _capsules(user_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    async for capsule in _paged(TimeCapsule, TimeCapsule.user == user_id):
        sealed = capsule["status"] != CapsuleStatus.unlocked
        attachments = await CapsuleAttachment.select(CapsuleAttachment.file).where(
            CapsuleAttachment.capsule == capsule["id"]
        )
        yield {
            **capsule,
            "content": None if sealed else capsule["content"],
            "sealed": sealed,
            "attachments": [a["file"] for a in attachments],
        }


async def _memberships(user_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    async for membership in _paged(LoungeMembership, LoungeMembership.user == user_id):
        lounge = await Lounge.select(Lounge.title, Lounge.channel).where(Lounge.id == membership["lounge"]).first()
        yield {**membership, "lounge_title": lounge["title"] if lounge else None}


async def _push_devices(user_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    for row in await export_devices(user_id):
        yield row


async def _nothing() -> AsyncIterator[dict[str, Any]]:
    return
    yield


async def _files(user_id: uuid.UUID) -> AsyncIterator[dict[str, Any]]:
    async for row in _paged(File, File.owner == user_id, File.status == FileStatus.ready):
        yield {k: v for k, v in row.items() if k not in ("bucket", "object_key")}


async def export_chunks(user_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The JSON archive of ``user_id``, in pieces (see the module doc)."""
    encode = msgspec.json.Encoder().encode
    account = await User.select(exclude_secrets=True).where(User.id == user_id).output(load_json=True).first()
    yield b'{"format":' + encode(EXPORT_FORMAT) + b',"generated_at":' + encode(now())
    yield b',"account":' + encode(account)
    mentor = await Mentor.select().where(Mentor.user == user_id).output(load_json=True).first()
    yield b',"mentor_profile":' + encode(mentor)

    async def section(name: str, rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        yield b',"' + name.encode() + b'":['
        first = True
        async for row in rows:
            yield (b"" if first else b",") + encode(row)
            first = False
        yield b"]"

    sections: list[tuple[str, AsyncIterator[dict[str, Any]]]] = [
        ("identities", _paged(OAuthAccount, OAuthAccount.user == user_id)),
        ("sessions", _paged(UserSession, UserSession.user == user_id)),
        ("security_events", _paged(SecurityEvent, SecurityEvent.user == user_id)),
        ("lounges_run", _paged(Lounge, Lounge.mentor == mentor["id"]) if mentor else _nothing()),
        ("lounge_memberships", _memberships(user_id)),
    ]
    for name, rows in sections:
        async for piece in section(name, rows):
            yield piece

    yield b',"threads":['
    first = True
    async for thread in _paged(ChatThread, ChatThread.user == user_id):
        head = encode(thread)
        yield (b"" if first else b",") + head[:-1] + b',"messages":['
        first = False
        first_message = True
        async for message in _channel_messages(thread["channel"]):
            yield (b"" if first_message else b",") + encode(message)
            first_message = False
        yield b"]}"
    yield b"]"

    later: list[tuple[str, AsyncIterator[dict[str, Any]]]] = [
        ("lounge_messages", _lounge_posts(user_id)),
        ("reactions", _paged(MessageReaction, MessageReaction.user == user_id)),
        ("notes", _paged(Note, Note.user == user_id)),
        ("capsules", _capsules(user_id)),
        ("notifications", _paged(Notification, Notification.user == user_id)),
        ("push_devices", _push_devices(user_id)),
        ("push_log", _paged(PushLog, PushLog.user == user_id)),
        ("files", _files(user_id)),
        ("ai_usage", _paged(AIUsage, AIUsage.user == user_id)),
        ("compliance_requests", _paged(ComplianceRequest, ComplianceRequest.user == user_id)),
    ]
    for name, rows in later:
        async for piece in section(name, rows):
            yield piece

    customer = await BillingCustomer.select().where(BillingCustomer.user == user_id).first()
    yield b',"billing":{"customer":' + encode(customer)
    for name, rows in (
        ("subscriptions", _paged(Subscription, Subscription.user == user_id)),
        ("payments", _paged(Payment, Payment.user == user_id)),
    ):
        async for piece in section(name, rows):
            yield piece
    yield b"}}"


async def build_export(state: AppState, request_id: uuid.UUID) -> str:
    """Write the archive of a pending export request and complete it (idempotent: a
    completed or failed request is left alone). Raises on failure; the caller retries
    or records it with :func:`fail_export`."""
    async with unit_of_work(state.engine):
        rows = await ComplianceRequest.raw(
            'SELECT id, "user", kind, status FROM compliance_requests WHERE id = {} FOR UPDATE', request_id
        )
        if not rows or rows[0]["kind"] != ComplianceKind.export or rows[0]["status"] not in _OPEN:
            return "skipped"
        user_id = rows[0]["user"]
        if user_id is None:
            await ComplianceRequest.update(
                {ComplianceRequest.status: ComplianceStatus.failed, ComplianceRequest.error: "the account is gone"}
            ).where(ComplianceRequest.id == request_id)
            return "failed: the account is gone"
        await ComplianceRequest.update({ComplianceRequest.status: ComplianceStatus.processing}).where(
            ComplianceRequest.id == request_id
        )

    file_id = uuid.uuid4()
    key = f"{FilePurpose.export}/{user_id}/{file_id}"
    async with unit_of_work(state.engine):
        await File.insert(
            File(
                id=file_id,
                owner=user_id,
                bucket=state.storage.bucket,
                object_key=key,
                filename=f"lounges-export-{now():%Y-%m-%d}.json",
                content_type="application/json",
                size=0,
                sha256="",
                purpose=FilePurpose.export,
                status=FileStatus.pending,
            )
        )
    reader = ChunkReader(export_chunks(user_id))
    try:
        await state.storage.put_stream(key, reader, content_type="application/json")
    except BaseException:
        await discard_upload(state, file_id, key)
        raise
    async with unit_of_work(state.engine):
        await File.update({File.status: FileStatus.ready, File.size: reader.size, File.sha256: reader.sha256}).where(
            File.id == file_id
        )
        await ComplianceRequest.update(
            {
                ComplianceRequest.status: ComplianceStatus.completed,
                ComplianceRequest.result_file: file_id,
                ComplianceRequest.completed_at: now(),
                ComplianceRequest.error: None,
            }
        ).where(ComplianceRequest.id == request_id)
        await notify_on_commit(
            state,
            user_id,
            kind="compliance.export_ready",
            title="Your data export is ready",
            body="Download it from your account settings while it is available.",
            data={"request_id": str(request_id)},
        )
    log.info("export written", extra={"compliance_request_id": str(request_id), "size": reader.size})
    return f"exported {reader.size} bytes"


async def fail_export(request_id: uuid.UUID, reason: str) -> None:
    await ComplianceRequest.update(
        {
            ComplianceRequest.status: ComplianceStatus.failed,
            ComplianceRequest.error: reason[:500],
            ComplianceRequest.completed_at: now(),
        }
    ).where(ComplianceRequest.id == request_id, ComplianceRequest.status.is_in(list(_OPEN)))


# -- erasure ---------------------------------------------------------------------------------


async def erase_owned_data(user_id: uuid.UUID) -> list[dict[str, Any]]:
    """Inside the erasure's transaction: detach and mark deleted every file of the user
    (names scrubbed), drop their knowledge chunks, and anonymise their payments.
    Returns the files for :func:`purge_erased_files` to remove after the commit."""
    rows = await File.raw(f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = {{}} FOR UPDATE", user_id)
    ids = [row["id"] for row in rows]
    if ids:
        await detach(ids)
        await File.update({File.filename: "erased", File.sha256: ""}).where(File.id.is_in(ids))
    await KnowledgeChunk.delete().where(KnowledgeChunk.owner == user_id)
    await Payment.update({Payment.user: None, Payment.hosted_invoice_url: None}).where(Payment.user == user_id)
    await Subscription.update({Subscription.user: None}).where(Subscription.user == user_id)
    await BillingCustomer.update({BillingCustomer.user: None}).where(BillingCustomer.user == user_id)
    return rows


async def purge_erased_files(state: AppState, rows: list[dict[str, Any]]) -> int:
    """After the erasure committed: remove the objects and rows (what fails is finished
    by the clean-up job, which purges every row left ``deleted``)."""
    return await purge_files(state, rows)
