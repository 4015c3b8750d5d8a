"""File actions: streaming upload into object storage, metadata and presigned downloads,
deletion, and the clean-up of orphaned uploads.

**Upload** (``POST /api/v1/chat/upload``): the body is the file itself (any
``Content-Type``; ``?filename=`` names it) or ``multipart/form-data`` with one
part named ``file``. It is never held whole in memory: bytes flow from the
request through :class:`~server.foundation.storage.ChunkReader` (size limit,
SHA-256) into the object store, one ``UPLOAD_PART_BYTES`` part at a time.
The type is read from the first 8 KiB of the content, never from the client's
header: magic numbers via the ``filetype`` library (images, audio, video, PDF,
archives, executables, ...), otherwise UTF-8 text without control characters
is ``text/plain`` (``text/markdown`` when the client calls it Markdown by type
or ``.md`` name; both are served as text), and HTML/SVG/XML markup is named as
such. Only ``UPLOAD_ALLOWED_TYPES`` pass; a text file is checked to be UTF-8
to its last byte. Past ``UPLOAD_MAX_BYTES`` the upload is aborted (the
multipart upload is discarded by the store) and answered ``413``.

A ``pending`` row is written before the first byte goes to the store and
turned ``ready`` (with size and SHA-256) after the object is complete, so a
crash mid-upload leaves a row the clean-up job finds, never an untracked
object.

**Reading** (metadata and a presigned link valid ``PRESIGNED_URL_TTL``
seconds): the owner; anyone who may read a lounge the file was shared into
(attached to a message there that is not deleted, or a knowledge file of that
lounge: active members and admins); any signed-in user for a file that is
someone's current avatar. Everyone else gets ``404 file_not_found``, exactly
as for a missing file.

**Deletion** (owner or admin): the row turns ``deleted`` and the file's
attachments, knowledge chunks and avatar references go in one transaction;
then the object is removed and the row deleted. If the store is down the row
stays ``deleted`` and the clean-up job finishes it.

**Clean-up** (:func:`clean_files`, the ``clean_files`` cron job): uploads
still ``pending`` after ``ORPHAN_FILE_TTL``, attachment/capsule/avatar files
nothing uses after that long, knowledge files whose lounge was deleted,
exports older than ``EXPORT_RETENTION``, rows left ``deleted``, and objects
under our prefixes, older than ``ORPHAN_FILE_TTL``, that no row knows.
"""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import filetype
import multipart

from server.domain.access.policy import check_can_read_messages, lounge_context
from server.domain.accounts.services import Principal, announce_user_updated
from server.domain.capsules.services import check_files_not_sealed
from server.domain.files.schemas import FileOut, FilePage, UploadPurpose
from server.domain.knowledge.chunking import PDF_TYPES, TEXT_TYPES
from server.domain.tables.accounts import Role, User
from server.domain.tables.capsules import CapsuleAttachment
from server.domain.tables.chat import MessageAttachment
from server.domain.tables.files import File, FilePurpose, FileStatus
from server.domain.tables.knowledge import KnowledgeChunk
from server.foundation.clock import now
from server.foundation.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    ValidationFailed,
)
from server.foundation.pagination import keyset_page
from server.foundation.state import AppState
from server.foundation.storage import ChunkReader
from server.foundation.unit_of_work import on_commit, unit_of_work

log = logging.getLogger("lounges.files")

# The type is decided on this many first bytes (what ``filetype`` reads).
SNIFF_BYTES = 8192
# Room for multipart boundaries and part headers on top of UPLOAD_MAX_BYTES.
MULTIPART_OVERHEAD = 64 * 1024
KNOWLEDGE_TYPES = frozenset(TEXT_TYPES | PDF_TYPES)
AVATAR_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe", b"<!--")
_EXTENSIONS = {"text/plain": "txt", "text/markdown": "md"}
_FILE_COLUMNS = (
    "id, owner, bucket, object_key, filename, content_type, size, sha256, purpose, lounge, status, created_at"
)


class UnsupportedFileType(AppError):
    """The content is of a type this upload does not accept."""

    status, code, title = 415, "unsupported_file_type", "Unsupported media type"


# -- the content's type ----------------------------------------------------------------------


def _decodes_as_text(data: bytes, *, complete: bool) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=complete)  # a character cut at the sniff boundary is fine
    except UnicodeDecodeError:
        return False
    return not _CONTROL.search(text)


def detect_type(head: bytes, *, complete: bool, declared: str = "", filename: str = "") -> str:
    """The media type of content starting with ``head`` (``complete``: that is all of it).

    ``declared`` and ``filename`` only choose between ``text/plain`` and
    ``text/markdown`` for content that is text either way.
    """
    kind = filetype.guess(head[:SNIFF_BYTES])
    if kind is not None:
        return str(kind.mime)
    if not _decodes_as_text(head, complete=complete):
        return "application/octet-stream"
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if start.startswith(_HTML_STARTS):
        return "text/html"
    if start.startswith((b"<svg", b"<?xml")):
        return "image/svg+xml" if b"<svg" in head.lower() else "application/xml"
    if declared in MARKDOWN_TYPES or filename.lower().endswith((".md", ".markdown")):
        return "text/markdown"
    return "text/plain"


class TextCheck:
    """Checks, part by part, that a text upload is UTF-8 without control characters."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def __call__(self, data: bytes, final: bool) -> None:
        try:
            text = self._decoder.decode(data, final=final)
        except UnicodeDecodeError:
            raise UnsupportedFileType("the file starts as text but is not UTF-8 text throughout") from None
        if _CONTROL.search(text):
            raise UnsupportedFileType("the file starts as text but holds binary data")


def check_type(state: AppState, purpose: str, detected: str, declared: str) -> None:
    """Refuse a type outside ``UPLOAD_ALLOWED_TYPES`` or the purpose's own list."""
    said = f" (sent as {declared})" if declared and declared != detected else ""
    if detected not in state.settings.upload_allowed_types:
        raise UnsupportedFileType(
            f"the content is {detected}{said}, which is not accepted",
            detected_type=detected,
            allowed_types=list(state.settings.upload_allowed_types),
        )
    if purpose == FilePurpose.knowledge and detected not in KNOWLEDGE_TYPES:
        raise UnsupportedFileType(
            f"knowledge files must be text, Markdown or PDF; the content is {detected}{said}",
            detected_type=detected,
            allowed_types=sorted(KNOWLEDGE_TYPES),
        )
    if purpose == FilePurpose.avatar and detected not in AVATAR_TYPES:
        raise UnsupportedFileType(
            f"avatars must be JPEG, PNG, GIF or WebP images; the content is {detected}{said}",
            detected_type=detected,
            allowed_types=sorted(AVATAR_TYPES),
        )


def clean_filename(name: str) -> str:
    """The last path component, without control characters, at most 255 characters."""
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name) if unicodedata.category(c)[0] != "C")
    name = name.strip().strip(".").strip()
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 254 - len(ext)] + dot + ext) if dot and len(ext) <= 16 else name[:255]
    return name


def _default_filename(mime: str) -> str:
    guessed = _EXTENSIONS.get(mime)
    if guessed is None:
        kind = next((k for k in filetype.types if k.mime == mime), None)
        guessed = kind.extension if kind is not None else "bin"
    return f"upload.{guessed}"


# -- the request body ------------------------------------------------------------------------


@dataclass(slots=True)
class Incoming:
    """The file inside a request body."""

    filename: str
    declared_type: str
    chunks: AsyncIterator[bytes]


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the file is larger than {limit} bytes", code="file_too_large", max_bytes=limit)


async def _limited(body: AsyncIterator[bytes], limit: int, file_limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in body:
        if not chunk:
            continue
        total += len(chunk)
        if total > limit:
            raise _too_large(file_limit)
        yield chunk


async def _multipart_events(stream: AsyncIterator[bytes], boundary: str) -> AsyncIterator[Any]:
    parser = multipart.PushMultipartParser(boundary, max_segment_count=2, strict=True)
    try:
        async for chunk in stream:
            if parser.closed:
                break  # an epilogue after the final boundary is ignored
            for event in parser.parse(chunk):
                yield event
        if not parser.closed:
            for event in parser.parse(b""):
                yield event
    except multipart.ParserLimitReached:
        raise ValidationFailed("send exactly one form part, named file", code="invalid_multipart") from None
    except multipart.MultipartError as exc:
        raise ValidationFailed(f"malformed multipart body: {exc}", code="invalid_multipart") from None


async def _multipart_file(stream: AsyncIterator[bytes], boundary: str, filename: str | None) -> Incoming:
    events = _multipart_events(stream, boundary)
    first = await anext(events, None)
    if not isinstance(first, multipart.MultipartSegment) or first.name != "file" or first.filename is None:
        raise ValidationFailed(
            'send the file as one multipart/form-data part named "file" (with a filename)',
            code="invalid_multipart",
        )

    async def data() -> AsyncIterator[bytes]:
        async for event in events:
            if event is None:  # end of the file's part
                break
            yield event
        async for event in events:
            if isinstance(event, multipart.MultipartSegment):
                raise ValidationFailed("send exactly one form part, named file", code="invalid_multipart")

    return Incoming(filename or first.filename, (first.content_type or "").lower(), data())


async def open_upload(
    body: AsyncIterator[bytes],
    *,
    content_type: str,
    content_length: int | None,
    max_bytes: int,
    filename: str | None,
) -> Incoming:
    """Find the file in a raw or ``multipart/form-data`` body (nothing is read yet but
    multipart headers)."""
    media_type, options = multipart.parse_options_header(content_type or "")
    media_type = media_type.lower()
    is_multipart = media_type == "multipart/form-data"
    allowance = max_bytes + (MULTIPART_OVERHEAD if is_multipart else 0)
    if content_length is not None and content_length > allowance:
        raise _too_large(max_bytes)
    stream = _limited(body, allowance, max_bytes)
    if is_multipart:
        boundary = options.get("boundary")
        if not boundary:
            raise ValidationFailed("the multipart Content-Type has no boundary", code="invalid_multipart")
        return await _multipart_file(stream, boundary, filename)
    return Incoming(filename or "", media_type, stream)


# -- upload ----------------------------------------------------------------------------------


def _check_configured(state: AppState) -> None:
    if not state.storage.configured:
        raise Unavailable("file storage is not configured (S3_ENDPOINT)", code="storage_not_configured")


async def _check_upload_target(principal: Principal, purpose: UploadPurpose, lounge_id: uuid.UUID | None) -> None:
    if purpose != UploadPurpose.knowledge:
        if lounge_id is not None:
            raise ValidationFailed("lounge_id is only for knowledge files", code="unexpected_lounge")
        return
    if lounge_id is None:
        raise ValidationFailed("knowledge files need the lounge_id they feed", code="lounge_required")
    context = await lounge_context(principal, lounge_id)
    if not (context.is_mentor or context.is_admin):
        raise Forbidden("only the lounge's mentor and admins add knowledge files", code="not_lounge_owner")
    if context.archived:
        raise Conflict("the lounge is archived", code="lounge_archived")


async def do_upload(
    state: AppState,
    principal: Principal,
    body: AsyncIterator[bytes],
    *,
    content_type: str,
    content_length: int | None,
    purpose: UploadPurpose = UploadPurpose.attachment,
    lounge_id: uuid.UUID | None = None,
    filename: str | None = None,
) -> FileOut:
    """Stream one file from a request body into the object store (see the module doc)."""
    _check_configured(state)
    await _check_upload_target(principal, purpose, lounge_id)
    limit = state.settings.upload_max_bytes
    incoming = await open_upload(
        body, content_type=content_type, content_length=content_length, max_bytes=limit, filename=filename
    )
    reader = ChunkReader(incoming.chunks, max_bytes=limit, too_large=lambda: _too_large(limit))
    head = await reader.peek(SNIFF_BYTES)
    if not head:
        raise ValidationFailed("the file is empty", code="empty_file")
    name = clean_filename(incoming.filename)
    mime = detect_type(head, complete=reader.at_end_after_peek, declared=incoming.declared_type, filename=name)
    check_type(state, purpose, mime, incoming.declared_type)
    if mime.startswith("text/"):
        reader.inspect = TextCheck()

    file_id = uuid.uuid4()
    key = f"{purpose}/{principal.user_id}/{file_id}"
    async with unit_of_work(state.engine):
        await File.insert(
            File(
                id=file_id,
                owner=principal.user_id,
                bucket=state.storage.bucket,
                object_key=key,
                filename=name or _default_filename(mime),
                content_type=mime,
                size=0,
                sha256="",
                purpose=str(purpose),
                lounge=lounge_id,
                status=FileStatus.pending,
            )
        )
    try:
        await state.storage.put_stream(key, reader, content_type=mime)
        await reader.drain()
    except BaseException:
        await discard_upload(state, file_id, key)
        raise
    async with unit_of_work(state.engine):
        done = (
            await File.update({File.status: FileStatus.ready, File.size: reader.size, File.sha256: reader.sha256})
            .where(File.id == file_id, File.status == FileStatus.pending)
            .returning(File.id)
        )
        if done and purpose == UploadPurpose.knowledge:
            await on_commit(partial(_enqueue, state, "ingest_knowledge_file", file_id))
    if not done:  # deleted meanwhile (the account was erased)
        await discard_upload(state, file_id, key)
        raise Conflict("the upload was cancelled", code="upload_cancelled")
    log.info("file uploaded", extra={"file_id": str(file_id), "size": reader.size, "content_type": mime})
    return await _out(state, await _row(file_id), with_link=True)


async def discard_upload(state: AppState, file_id: uuid.UUID, key: str) -> None:
    """Forget a failed upload: its object (if any) and its row; what fails stays for the clean-up job."""
    try:
        await state.storage.remove(key)
        await File.delete().where(File.id == file_id)
    except Exception:
        log.warning("could not discard a failed upload", exc_info=True, extra={"file_id": str(file_id)})


async def _enqueue(state: AppState, job: str, file_id: uuid.UUID) -> None:
    try:
        await state.redis.enqueue_job(job, str(file_id))
    except Exception:  # the file is stored; re-uploading or the reindex command catches up
        log.warning("could not enqueue %s", job, exc_info=True, extra={"file_id": str(file_id)})


# -- reading ---------------------------------------------------------------------------------


async def _row(file_id: uuid.UUID) -> dict[str, Any]:
    rows = await File.raw(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = {{}}", file_id)
    if not rows:
        raise NotFound("no such file", code="file_not_found")
    return rows[0]


async def _out(state: AppState, row: dict[str, Any], *, with_link: bool) -> FileOut:
    url = expires = None
    if with_link and row["status"] == FileStatus.ready:
        url, ttl = await state.storage.presigned_get(
            row["object_key"], filename=row["filename"], content_type=row["content_type"], bucket=row["bucket"]
        )
        expires = now() + timedelta(seconds=ttl)
    return FileOut(
        id=row["id"],
        filename=row["filename"],
        content_type=row["content_type"],
        size=row["size"],
        sha256=row["sha256"],
        purpose=row["purpose"],
        status=row["status"],
        owner_id=row["owner"],
        lounge_id=row["lounge"],
        created_at=row["created_at"],
        download_url=url,
        download_expires_at=expires,
    )


async def _shared_lounges(row: dict[str, Any]) -> list[uuid.UUID]:
    """Lounges the file was shared into: its own (knowledge) and those where a live
    message carries it."""
    rows = await File.raw(
        """
        SELECT DISTINCT l.id FROM message_attachments a
        JOIN messages m ON m.id = a.message
        JOIN lounges l ON l.channel = m.channel
        WHERE a.file = {} AND m.deleted_at IS NULL
        """,
        row["id"],
    )
    lounges = [r["id"] for r in rows]
    if row["lounge"] is not None and row["lounge"] not in lounges:
        lounges.insert(0, row["lounge"])
    return lounges


async def check_can_read(principal: Principal, row: dict[str, Any]) -> None:
    """Raise ``404 file_not_found`` unless the caller may read the file (see the module doc)."""
    if row["status"] == FileStatus.deleted:
        raise NotFound("no such file", code="file_not_found")
    await check_files_not_sealed([row["id"]])  # sealed in a time capsule: nobody reads it yet
    if row["owner"] is not None and row["owner"] == principal.user_id:
        return
    if row["status"] == FileStatus.ready:
        if row["purpose"] == FilePurpose.avatar and await User.exists().where(User.avatar_file_id == row["id"]):
            return
        for lounge_id in await _shared_lounges(row):
            try:
                check_can_read_messages(await lounge_context(principal, lounge_id))
            except (NotFound, Forbidden):
                continue
            return
    raise NotFound("no such file", code="file_not_found")


async def get_file(state: AppState, principal: Principal, file_id: uuid.UUID) -> FileOut:
    """Metadata and, for a ready file, a fresh presigned download link."""
    row = await _row(file_id)
    await check_can_read(principal, row)
    return await _out(state, row, with_link=True)


async def download_url(state: AppState, principal: Principal, file_id: uuid.UUID) -> str:
    row = await _row(file_id)
    await check_can_read(principal, row)
    if row["status"] != FileStatus.ready:
        raise Conflict("the file is still uploading", code="file_not_ready")
    url, _ = await state.storage.presigned_get(
        row["object_key"], filename=row["filename"], content_type=row["content_type"], bucket=row["bucket"]
    )
    return url


async def list_files(
    state: AppState,
    principal: Principal,
    *,
    purpose: str | None,
    lounge_id: uuid.UUID | None,
    limit: int,
    cursor: str | None = None,
) -> FilePage:
    """The caller's own files (not deleted), newest first, without links."""
    sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE owner = {{}} AND status <> {{}}"
    args: list[Any] = [principal.user_id, str(FileStatus.deleted)]
    if purpose is not None:
        sql += " AND purpose = {}"
        args.append(str(purpose))
    if lounge_id is not None:
        sql += " AND lounge = {}"
        args.append(lounge_id)
    rows, next_cursor = await keyset_page(sql, args, moment="created_at", row_id="id", cursor=cursor, limit=limit)
    items = [await _out(state, row, with_link=False) for row in rows]
    return FilePage(items=items, next_cursor=next_cursor)


# -- deletion --------------------------------------------------------------------------------


async def detach(file_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Inside the caller's transaction: mark files deleted and drop what points at them
    (message and capsule attachments, knowledge chunks, avatar references). Returns the
    users who lost their avatar."""
    if not file_ids:
        return []
    await File.update({File.status: FileStatus.deleted}).where(File.id.is_in(file_ids))
    await MessageAttachment.delete().where(MessageAttachment.file.is_in(file_ids))
    await CapsuleAttachment.delete().where(CapsuleAttachment.file.is_in(file_ids))
    await KnowledgeChunk.delete().where(KnowledgeChunk.file.is_in(file_ids))
    cleared = (
        await User.update({User.avatar_file_id: None}).where(User.avatar_file_id.is_in(file_ids)).returning(User.id)
    )
    return [row["id"] for row in cleared]


async def do_delete_file(state: AppState, principal: Principal, file_id: uuid.UUID) -> None:
    """Delete a file (its owner or an admin): object and metadata."""
    async with unit_of_work(state.engine):
        rows = await File.raw(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = {{}} FOR UPDATE", file_id)
        if not rows or rows[0]["status"] == FileStatus.deleted:
            raise NotFound("no such file", code="file_not_found")
        row = rows[0]
        if row["owner"] != principal.user_id and principal.role != Role.admin:
            await check_can_read(principal, row)  # 404 for those who may not even see it
            raise Forbidden("only the file's owner may delete it", code="not_file_owner")
        for user_id in await detach([file_id]):  # their cached account shows the avatar gone
            await on_commit(partial(announce_user_updated, state, user_id))
    await purge_files(state, [row])


async def purge_files(state: AppState, rows: Iterable[dict[str, Any]]) -> int:
    """Remove the objects of files already marked deleted, then their rows; a file whose
    object could not be removed keeps its row for the next clean-up. Returns how many went."""
    purged = 0
    for row in rows:
        try:
            await state.storage.remove(row["object_key"], bucket=row["bucket"])
        except Unavailable as exc:  # the store is down (StorageError) or not configured
            log.warning("object not removed yet: %s", exc, extra={"file_id": str(row["id"])})
            continue
        await File.delete().where(File.id == row["id"], File.status == FileStatus.deleted)
        purged += 1
    return purged


# -- clean-up --------------------------------------------------------------------------------

_ORPHANS = f"""
UPDATE files f SET status = 'deleted'
WHERE f.id IN (
    SELECT id FROM files g
    WHERE (g.status = 'pending' AND g.created_at < $1)
       OR (g.status = 'ready' AND g.created_at < $1 AND (
              (g.purpose = 'attachment' AND NOT EXISTS (SELECT 1 FROM message_attachments a WHERE a.file = g.id))
           OR (g.purpose = 'capsule' AND NOT EXISTS (SELECT 1 FROM capsule_attachments c WHERE c.file = g.id))
           OR (g.purpose = 'avatar' AND NOT EXISTS (SELECT 1 FROM users u WHERE u.avatar_file_id = g.id))
           OR (g.purpose = 'knowledge' AND g.lounge IS NULL)))
       OR (g.status = 'ready' AND g.purpose = 'export' AND g.created_at < $2)
    ORDER BY g.created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING {_FILE_COLUMNS}
"""


async def clean_files(state: AppState, *, batch: int = 500) -> dict[str, int]:
    """One pass of the clean-up job (see the module doc); returns what it did."""
    settings = state.settings
    cutoff = now() - timedelta(seconds=settings.orphan_file_ttl)
    export_cutoff = now() - timedelta(seconds=settings.export_retention)
    report = {"orphaned": 0, "purged": 0, "stray_objects": 0}
    if not state.storage.configured:
        return report
    while True:
        async with unit_of_work(state.engine) as transaction:
            rows = await transaction.connection.fetch(_ORPHANS, cutoff, export_cutoff, batch)
            ids = [r["id"] for r in rows]
            if ids:
                await detach(ids)
        report["orphaned"] += len(rows)
        if not rows:
            break
        report["purged"] += await purge_files(state, [dict(r) for r in rows])
        if len(rows) < batch:
            break
    leftovers = await File.raw(f"SELECT {_FILE_COLUMNS} FROM files WHERE status = 'deleted' LIMIT {{}}", batch)
    report["purged"] += await purge_files(state, leftovers)
    report["stray_objects"] = await _remove_stray_objects(state, cutoff)
    return report


async def _remove_stray_objects(state: AppState, cutoff: datetime, batch: int = 500) -> int:
    """Objects under our prefixes, older than ``cutoff``, that no files row names."""
    removed = 0
    for purpose in FilePurpose:
        candidates: list[str] = []
        async for key, modified in state.storage.list_objects(f"{purpose}/"):
            if modified is not None and modified < cutoff:
                candidates.append(key)
            if len(candidates) >= batch:
                removed += await _remove_unknown(state, candidates)
                candidates = []
        removed += await _remove_unknown(state, candidates)
    return removed


async def _remove_unknown(state: AppState, keys: list[str]) -> int:
    if not keys:
        return 0
    known = {r["object_key"] for r in await File.raw("SELECT object_key FROM files WHERE object_key = ANY({})", keys)}
    removed = 0
    for key in keys:
        if key not in known:
            await state.storage.remove(key)
            removed += 1
    return removed
