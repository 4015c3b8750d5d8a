"""Files against a real S3-compatible server (SeaweedFS, or S3_ENDPOINT): streaming
uploads, type checks from the content, presigned downloads, permissions, deletion,
knowledge ingestion and the clean-up of orphans."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.app import create_app
from server.domain.tables.chat import MessageAttachment
from server.domain.tables.files import File
from server.domain.tables.knowledge import KnowledgeChunk
from server.foundation.settings import Settings
from server.foundation.state import AppState
from server.foundation.storage import ChunkReader
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.lifespan import running_lifespan
from tests.support.worker import run_worker_until_idle

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00"


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under other ``settings`` (e.g. smaller limits)."""
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 40000))
    async with (
        running_lifespan(application),
        httpx.AsyncClient(transport=transport, base_url="http://lounges.test") as http,
    ):
        yield http


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return client


@pytest.fixture
def state(app: Litestar) -> AppState:
    return app.state.app_state


async def upload(
    api: httpx.AsyncClient,
    account: Account,
    content: Any,
    *,
    filename: str | None = "file.bin",
    content_type: str = "application/octet-stream",
    **params: str,
) -> httpx.Response:
    if filename is not None:
        params["filename"] = filename
    return await api.post(
        "/api/v1/chat/upload",
        params=params,
        content=content,
        headers={**account.headers, "Content-Type": content_type},
    )


async def fetch(url: str) -> httpx.Response:
    """A plain HTTP GET, as a client's browser or app would follow a presigned link."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(url)


async def stream_of(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def test_upload_presigned_download_delete_round_trip(api: httpx.AsyncClient, community: Community, state) -> None:
    alice = await community.user("alice@example.com")
    body = PNG + os.urandom(50_000)
    response = await upload(api, alice, body, filename="../../etc/holiday.png", content_type="image/png")
    assert response.status_code == 201, response.text
    file = response.json()
    assert file["filename"] == "holiday.png"  # path components dropped
    assert (file["content_type"], file["size"], file["status"]) == ("image/png", len(body), "ready")
    assert file["sha256"] == hashlib.sha256(body).hexdigest()
    assert file["owner_id"] == alice.id and file["purpose"] == "attachment"

    metadata = await api.get(f"/api/v1/files/{file['id']}", headers=alice.headers)
    assert metadata.status_code == 200
    link = metadata.json()["download_url"]
    expires = datetime.fromisoformat(metadata.json()["download_expires_at"])
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(seconds=state.settings.presigned_url_ttl)
    assert f"X-Amz-Expires={state.settings.presigned_url_ttl}" in link
    downloaded = await fetch(link)
    assert downloaded.status_code == 200 and downloaded.content == body
    assert downloaded.headers["content-type"] == "image/png"
    assert 'filename="holiday.png"' in downloaded.headers["content-disposition"]
    # The signature covers the expiry: a link cannot be stretched.
    assert (await fetch(link.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"))).status_code == 403

    redirect = await api.get(f"/api/v1/files/{file['id']}/download", headers=alice.headers)
    assert redirect.status_code == 307
    assert (await fetch(redirect.headers["location"])).content == body

    row = await File.select(File.object_key).where(File.id == uuid.UUID(file["id"])).first()
    assert await state.storage.exists(row["object_key"])
    deleted = await api.delete(f"/api/v1/files/{file['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    assert (await fetch(link)).status_code == 404  # the object is gone
    assert not await state.storage.exists(row["object_key"])
    assert not await File.exists().where(File.id == uuid.UUID(file["id"]))
    gone = await api.get(f"/api/v1/files/{file['id']}", headers=alice.headers)
    assert gone.status_code == 404 and gone.json()["code"] == "file_not_found"
    assert (await api.delete(f"/api/v1/files/{file['id']}", headers=alice.headers)).status_code == 404


async def test_multipart_form_upload(api: httpx.AsyncClient, community: Community) -> None:
    alice = await community.user("alice@example.com")
    body = PDF + b"1 0 obj << >> endobj\n" * 1000
    response = await api.post(
        "/api/v1/chat/upload",
        files={"file": ("Plan 2026 – draft.pdf", body, "application/pdf")},
        headers=alice.headers,
    )
    assert response.status_code == 201, response.text
    file = response.json()
    assert (file["filename"], file["content_type"], file["size"]) == (
        "Plan 2026 – draft.pdf",
        "application/pdf",
        len(body),
    )
    assert (await fetch(file["download_url"])).content == body

    two = await api.post(
        "/api/v1/chat/upload",
        files={"file": ("a.pdf", body, "application/pdf"), "other": ("b.pdf", body, "application/pdf")},
        headers=alice.headers,
    )
    assert two.status_code == 422 and two.json()["code"] == "invalid_multipart"
    unnamed = await api.post("/api/v1/chat/upload", files={"upload": ("a.pdf", body)}, headers=alice.headers)
    assert unnamed.status_code == 422 and unnamed.json()["code"] == "invalid_multipart"
    assert await File.count() == 1


async def test_large_upload_streams_in_parts(app: Litestar, settings: Settings, community: Community) -> None:
    """48 MiB go through in 5 MiB parts without the server ever holding the file."""
    big = msgspec.structs.replace(settings, upload_max_bytes=64 * MiB, upload_part_bytes=5 * MiB)
    alice = await community.user("alice@example.com")
    size, digest = 48 * MiB, hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        block = PDF + os.urandom(256 * 1024 - len(PDF))
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            digest.update(piece)
            sent += len(piece)
            yield piece

    async with serving(big) as api:
        tracemalloc.start()
        try:
            response = await upload(api, alice, body(), filename="big.pdf")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 201, response.text
    file = response.json()
    assert (file["size"], file["sha256"]) == (size, digest.hexdigest())
    # At most a few parts in memory, never the 48 MiB file.
    assert peak < 4 * 5 * MiB, f"peak {peak / MiB:.1f} MiB"
    downloaded = await fetch(file["download_url"])
    assert hashlib.sha256(downloaded.content).hexdigest() == digest.hexdigest()


async def test_oversize_uploads_are_refused_and_leave_nothing(
    app: Litestar, settings: Settings, community: Community, state
) -> None:
    small = msgspec.structs.replace(settings, upload_max_bytes=6 * MiB, upload_part_bytes=5 * MiB)
    alice = await community.user("alice@example.com")
    too_big = PNG + b"\x00" * (6 * MiB)
    async with serving(small) as api:
        # Announced by Content-Length: refused before a byte is read.
        announced = await upload(api, alice, too_big, filename="big.png", content_type="image/png")
        # Streamed without a length: refused past the limit, after a first 5 MiB part went up.
        streamed = await upload(api, alice, stream_of(too_big), filename="big.png", content_type="image/png")
        multipart = await api.post(
            "/api/v1/chat/upload", files={"file": ("big.png", too_big, "image/png")}, headers=alice.headers
        )
        exact = await upload(api, alice, stream_of(too_big[: 6 * MiB]), filename="exact.png")
    for response in (announced, streamed, multipart):
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["code"] == "file_too_large" and problem["max_bytes"] == 6 * MiB
    assert exact.status_code == 201 and exact.json()["size"] == 6 * MiB
    assert [r["filename"] for r in await File.select(File.filename)] == ["exact.png"]
    keys = [key async for key, _ in state.storage.list_objects(f"attachment/{alice.id}/")]
    assert len(keys) == 1  # no stray object or multipart leftovers from the refused uploads


@pytest.mark.parametrize(
    ("content", "filename", "declared", "detected"),
    [
        (ELF + b"\x00" * 4000, "photo.png", "image/png", "application/x-executable"),
        (b"MZ\x90\x00\x03" + b"\x00" * 4000, "invoice.pdf", "application/pdf", "application/x-msdownload"),
        (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "notes.txt", "text/plain", "text/html"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "a.png", "image/png", None),
        (b"PK\x03\x04" + b"\x00" * 100, "photo.jpg", "image/jpeg", "application/zip"),
        (b"just text\n" * 1000 + b"\x00\x01binary tail" * 100, "notes.txt", "text/plain", None),
        (b"\xff\xfe\xfd not utf-8" * 10, "notes.txt", "text/plain", "application/octet-stream"),
    ],
)
async def test_disguised_files_are_refused(
    api: httpx.AsyncClient, community: Community, content: bytes, filename: str, declared: str, detected: str | None
) -> None:
    alice = await community.user("alice@example.com")
    response = await upload(api, alice, content, filename=filename, content_type=declared)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "unsupported_file_type"
    if detected is not None:
        assert problem["detected_type"] == detected
        assert declared in problem["detail"]
    assert await File.count() == 0


async def test_type_is_read_from_the_content(api: httpx.AsyncClient, community: Community) -> None:
    alice = await community.user("alice@example.com")
    png_as_pdf = await upload(api, alice, PNG, filename="scan.pdf", content_type="application/pdf")
    assert png_as_pdf.status_code == 201 and png_as_pdf.json()["content_type"] == "image/png"
    markdown = await upload(api, alice, "# Plan\n\nÉtapes *claires*.\n".encode(), filename="plan.md")
    assert markdown.status_code == 201 and markdown.json()["content_type"] == "text/markdown"
    text = await upload(api, alice, b"plain words\n", filename=None, content_type="application/octet-stream")
    assert text.json()["content_type"] == "text/plain" and text.json()["filename"] == "upload.txt"
    empty = await upload(api, alice, b"", filename="nothing.txt")
    assert empty.status_code == 422 and empty.json()["code"] == "empty_file"
    avatar = await upload(api, alice, PDF + b"x" * 100, filename="me.pdf", purpose="avatar")
    assert avatar.status_code == 415 and avatar.json()["code"] == "unsupported_file_type"
    assert (await upload(api, alice, PNG, filename="me.png", purpose="avatar")).status_code == 201
    assert (await upload(api, alice, PNG, purpose="export")).status_code == 422


async def test_another_user_cannot_read_or_delete(api: httpx.AsyncClient, community: Community) -> None:
    alice = await community.user("alice@example.com")
    bob = await community.user("bob@example.com")
    file = (await upload(api, alice, PNG, filename="private.png")).json()
    for response in (
        await api.get(f"/api/v1/files/{file['id']}", headers=bob.headers),
        await api.get(f"/api/v1/files/{file['id']}/download", headers=bob.headers),
        await api.delete(f"/api/v1/files/{file['id']}", headers=bob.headers),
    ):
        assert response.status_code == 404 and response.json()["code"] == "file_not_found"
    assert (await api.get(f"/api/v1/files/{file['id']}")).status_code == 401
    assert (await api.get("/api/v1/files", headers=bob.headers)).json() == {"items": [], "next_cursor": None}
    mine = await api.get("/api/v1/files", headers=alice.headers)
    assert [f["id"] for f in mine.json()["items"]] == [file["id"]] and mine.json()["next_cursor"] is None
    assert mine.json()["items"][0]["download_url"] is None


async def test_lounge_members_read_files_shared_into_the_lounge(
    api: httpx.AsyncClient, community: Community, client: httpx.AsyncClient
) -> None:
    mentor = await community.mentor("mentor@example.com")
    lounge = await community.lounge(mentor)
    alice, carol = await community.user("alice@example.com"), await community.user("carol@example.com")
    bob = await community.user("bob@example.com")
    for member in (alice, carol):
        assert (await community.join(member, lounge)).status_code in (200, 201)
    file = (await upload(api, alice, PNG, filename="whiteboard.png")).json()
    # Not shared yet: only alice.
    assert (await api.get(f"/api/v1/files/{file['id']}", headers=carol.headers)).status_code == 404

    path = f"/api/v1/lounges/{lounge['id']}"
    posted = await community.post(alice, path, "see the board", attachments=[file["id"]])
    assert posted.status_code == 201, posted.text
    assert posted.json()["attachments"] == [file["id"]]
    # bob may not attach alice's file to his own posts.
    assert (await community.join(bob, lounge)).status_code in (200, 201)
    stolen = await community.post(bob, path, "mine now", attachments=[file["id"]])
    assert stolen.status_code == 422 and stolen.json()["code"] == "invalid_attachment"
    await client.post(f"{path}/leave", headers=bob.headers)

    seen = await api.get(f"/api/v1/files/{file['id']}", headers=carol.headers)
    assert seen.status_code == 200 and (await fetch(seen.json()["download_url"])).content == PNG
    for who in (mentor, carol):
        assert (await api.get(f"/api/v1/files/{file['id']}", headers=who.headers)).status_code == 200
    assert (await api.get(f"/api/v1/files/{file['id']}", headers=bob.headers)).status_code == 404  # left
    refused = await api.delete(f"/api/v1/files/{file['id']}", headers=carol.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "not_file_owner"

    # The message is deleted: the file is no longer shared.
    offset = posted.json()["offset"]
    assert (await client.delete(f"{path}/messages/{offset}", headers=alice.headers)).status_code == 204
    assert (await api.get(f"/api/v1/files/{file['id']}", headers=carol.headers)).status_code == 404
    assert (await api.get(f"/api/v1/files/{file['id']}", headers=alice.headers)).status_code == 200


async def test_deleting_an_attached_file_removes_it_from_messages(
    api: httpx.AsyncClient, community: Community, client: httpx.AsyncClient
) -> None:
    alice = await community.user("alice@example.com")
    thread = (await client.post("/api/v1/chat/threads", json={"title": "Plans"}, headers=alice.headers)).json()
    file = (await upload(api, alice, b"my plan\n", filename="plan.txt")).json()
    path = f"/api/v1/chat/threads/{thread['id']}"
    posted = await community.post(alice, path, "here", attachments=[file["id"]])
    assert posted.status_code == 201 and posted.json()["attachments"] == [file["id"]]
    assert (await api.delete(f"/api/v1/files/{file['id']}", headers=alice.headers)).status_code == 204
    history = await client.get(f"{path}/messages", headers=alice.headers)
    mine = [m for m in history.json()["items"] if m["text"] == "here"]
    assert mine[0]["attachments"] == []


async def test_knowledge_files_feed_the_lounge_retrieval(
    api: httpx.AsyncClient, community: Community, settings: Settings
) -> None:
    mentor = await community.mentor("mentor@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("member@example.com")
    assert (await community.join(member, lounge)).status_code in (200, 201)
    text = "# Sleep hygiene\n\nKeep a fixed wake-up time, even on weekends.\n\nNo screens an hour before bed.\n"

    refused = await upload(api, member, text.encode(), filename="tips.md", purpose="knowledge", lounge_id=lounge["id"])
    assert refused.status_code == 403 and refused.json()["code"] == "not_lounge_owner"
    missing = await upload(api, mentor, text.encode(), filename="tips.md", purpose="knowledge")
    assert missing.status_code == 422 and missing.json()["code"] == "lounge_required"
    image = await upload(api, mentor, PNG, filename="tips.png", purpose="knowledge", lounge_id=lounge["id"])
    assert image.status_code == 415

    response = await upload(api, mentor, text.encode(), filename="tips.md", purpose="knowledge", lounge_id=lounge["id"])
    assert response.status_code == 201, response.text
    file = response.json()
    assert (file["purpose"], file["lounge_id"], file["content_type"]) == ("knowledge", lounge["id"], "text/markdown")
    await run_worker_until_idle(msgspec.structs.replace(settings, embeddings_provider="hashing"))
    chunks = await KnowledgeChunk.select(KnowledgeChunk.content, KnowledgeChunk.lounge).where(
        KnowledgeChunk.file == uuid.UUID(file["id"])
    )
    assert chunks and all(str(c["lounge"]) == lounge["id"] for c in chunks)
    assert "fixed wake-up time" in " ".join(c["content"] for c in chunks)
    # Members of the lounge may read the lounge's knowledge files.
    assert (await api.get(f"/api/v1/files/{file['id']}", headers=member.headers)).status_code == 200

    assert (await api.delete(f"/api/v1/files/{file['id']}", headers=mentor.headers)).status_code == 204
    assert not await KnowledgeChunk.exists().where(KnowledgeChunk.file == uuid.UUID(file["id"]))


async def test_cleanup_removes_orphans_and_keeps_what_is_used(
    api: httpx.AsyncClient, community: Community, settings: Settings, state, run_jobs
) -> None:
    alice = await community.user("alice@example.com")
    used = (await upload(api, alice, b"attached\n", filename="used.txt")).json()
    orphan = (await upload(api, alice, b"never attached\n", filename="orphan.txt")).json()
    fresh = (await upload(api, alice, b"just uploaded\n", filename="fresh.txt")).json()
    # A lounge message uses one file (a lounge, not a thread: no coach reply to run).
    lounge = await community.lounge(await community.mentor("mentor@example.com"))
    assert (await community.join(alice, lounge)).status_code in (200, 201)
    posted = await community.post(alice, f"/api/v1/lounges/{lounge['id']}", "see", attachments=[used["id"]])
    assert posted.status_code == 201
    assert await MessageAttachment.count() == 1
    # An upload whose process died: a pending row (its object may or may not exist).
    stuck_id = uuid.uuid4()
    stuck_key = f"attachment/{alice.id}/{stuck_id}"
    await state.storage.put_stream(stuck_key, ChunkReader(stream_of(b"half")), content_type="text/plain")
    await File.insert(
        File(
            id=stuck_id,
            owner=uuid.UUID(alice.id),
            bucket=state.storage.bucket,
            object_key=stuck_key,
            filename="stuck.txt",
            content_type="text/plain",
            sha256="",
            purpose="attachment",
            status="pending",
        )
    )
    old = datetime.now(UTC) - timedelta(seconds=settings.orphan_file_ttl + 60)
    ids = [uuid.UUID(f["id"]) for f in (used, orphan)] + [stuck_id]
    await File.update({File.created_at: old}).where(File.id.is_in(ids))
    keys = {r["id"]: r["object_key"] for r in await File.select(File.id, File.object_key)}

    await state.redis.enqueue_job("clean_files")
    await run_jobs()
    remaining = {r["id"] for r in await File.select(File.id)}
    assert remaining == {uuid.UUID(used["id"]), uuid.UUID(fresh["id"])}
    assert not await state.storage.exists(keys[uuid.UUID(orphan["id"])])
    assert not await state.storage.exists(stuck_key)
    assert await state.storage.exists(keys[uuid.UUID(used["id"])])

    # An object no row knows (a crash between the store and the database), once old enough.
    stray = f"attachment/{alice.id}/{uuid.uuid4()}"
    await state.storage.put_stream(stray, ChunkReader(stream_of(b"stray")), content_type="text/plain")
    await asyncio.sleep(2.1)
    await state.redis.enqueue_job("clean_files")
    await run_worker_until_idle(msgspec.structs.replace(settings, orphan_file_ttl=1))
    assert not await state.storage.exists(stray)
    assert await state.storage.exists(keys[uuid.UUID(used["id"])])


async def test_ready_checks_the_object_store(api: httpx.AsyncClient, settings: Settings) -> None:
    response = await api.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "redis": "ok", "storage": "ok"}
    wrong = msgspec.structs.replace(settings, s3_secret_key="not-the-secret")
    async with serving(wrong) as broken:
        refused = await broken.get("/ready")
    assert refused.status_code == 503 and refused.json()["checks"]["storage"].startswith("down")


async def test_without_storage_uploads_answer_503(app: Litestar, settings: Settings, community: Community) -> None:
    alice = await community.user("alice@example.com")
    async with serving(msgspec.structs.replace(settings, s3_endpoint=None)) as api:
        response = await upload(api, alice, PNG, filename="a.png")
        ready = await api.get("/ready")
    assert response.status_code == 503 and response.json()["code"] == "storage_not_configured"
    assert ready.status_code == 200 and "storage" not in ready.json()["checks"]
