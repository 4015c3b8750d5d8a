"""Compliance: the data export (a JSON archive built by the worker into object storage,
downloaded by presigned link) and erasure (files, embeddings, payments anonymised)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.domain.tables.billing import Payment, PaymentStatus
from server.domain.tables.compliance import ComplianceRequest
from server.domain.tables.files import File
from server.domain.tables.knowledge import KnowledgeChunk
from server.domain.tables.notifications import Notification
from server.foundation.settings import Settings
from tests.support.accounts import PASSWORD
from tests.support.community import Community
from tests.support.worker import run_worker_until_idle
from tests.test_files import PNG, fetch, upload


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return client


@pytest.fixture
def run_jobs_fast(settings: Settings):
    """The real worker, with the lexical embedder (no model to load)."""
    return lambda: run_worker_until_idle(msgspec.structs.replace(settings, embeddings_provider="hashing"))


async def test_export_archive_holds_everything_the_user_owns(
    api: httpx.AsyncClient, client: httpx.AsyncClient, community: Community, run_jobs_fast
) -> None:
    mentor = await community.mentor("mentor@example.com")
    lounge = await community.lounge(mentor, title="Evening reflections")
    alice = await community.user("alice@example.com")
    bob = await community.user("bob@example.com")
    assert (await community.join(alice, lounge)).status_code in (200, 201)
    note = await client.post(
        "/api/v1/notes", json={"title": "Goals", "content": "Run a 10k in spring"}, headers=alice.headers
    )
    assert note.status_code == 201
    thread = (await client.post("/api/v1/chat/threads", json={"title": "Career"}, headers=alice.headers)).json()
    assert (
        await community.post(alice, f"/api/v1/chat/threads/{thread['id']}", "Should I switch teams?")
    ).status_code == 201
    assert (await community.post(alice, f"/api/v1/lounges/{lounge['id']}", "Hello lounge")).status_code == 201
    file = (await upload(api, alice, PNG, filename="me.png")).json()

    first = await api.post("/api/v1/users/me/exports", headers=alice.headers)
    assert first.status_code == 202, first.text
    request = first.json()
    assert request["status"] == "pending" and request["download_url"] is None
    again = await api.post("/api/v1/users/me/exports", headers=alice.headers)
    assert again.status_code == 202 and again.json()["id"] == request["id"]  # one open export at a time

    await run_jobs_fast()
    done = await api.get(f"/api/v1/users/me/exports/{request['id']}", headers=alice.headers)
    assert done.status_code == 200
    export = done.json()
    assert export["status"] == "completed" and export["expired"] is False
    assert export["download_url"] and export["available_until"]
    archive = await fetch(export["download_url"])
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/json"
    assert hashlib.sha256(archive.content).hexdigest() == export["sha256"]
    assert len(archive.content) == export["size"]
    assert b"password_hash" not in archive.content and b"token_hash" not in archive.content

    data = archive.json()
    assert data["format"] == "lounges-export/1"
    assert data["account"]["email"] == "alice@example.com"
    assert [n["title"] for n in data["notes"]] == ["Goals"]
    [exported_thread] = data["threads"]
    assert exported_thread["title"] == "Career"
    assert "Should I switch teams?" in [m["text"] for m in exported_thread["messages"]]
    assert [m["lounge_title"] for m in data["lounge_memberships"]] == ["Evening reflections"]
    assert [m["text"] for m in data["lounge_messages"]] == ["Hello lounge"]
    assert [f["id"] for f in data["files"]] == [file["id"]]
    assert "object_key" not in data["files"][0]
    assert data["sessions"] and data["billing"] == {"customer": None, "subscriptions": [], "payments": []}
    assert data["mentor_profile"] is None and data["lounges_run"] == []

    assert (await Notification.count().where(Notification.kind == "compliance.export_ready")) == 1
    listed = await api.get("/api/v1/users/me/exports", headers=alice.headers)
    assert [e["id"] for e in listed.json()["items"]] == [request["id"]] and listed.json()["next_cursor"] is None
    assert (await api.get("/api/v1/users/me/exports", headers=bob.headers)).json() == {"items": [], "next_cursor": None}
    # Nobody else sees it, and the archive is not among the files they can read.
    assert (await api.get(f"/api/v1/users/me/exports/{request['id']}", headers=bob.headers)).status_code == 404
    export_file = await ComplianceRequest.select(ComplianceRequest.result_file).first()
    other = await api.get(f"/api/v1/files/{export_file['result_file']}", headers=bob.headers)
    assert other.status_code == 404

    # A mentor's archive lists the lounges they run.
    mentor_export = (await api.post("/api/v1/users/me/exports", headers=mentor.headers)).json()
    await run_jobs_fast()
    done = (await api.get(f"/api/v1/users/me/exports/{mentor_export['id']}", headers=mentor.headers)).json()
    mentor_data = (await fetch(done["download_url"])).json()
    assert [x["title"] for x in mentor_data["lounges_run"]] == ["Evening reflections"]
    assert mentor_data["mentor_profile"]["status"] == "approved"


async def test_exports_expire(
    api: httpx.AsyncClient, app: Litestar, community: Community, settings: Settings, run_jobs_fast
) -> None:
    alice = await community.user("alice@example.com")
    request = (await api.post("/api/v1/users/me/exports", headers=alice.headers)).json()
    await run_jobs_fast()
    link = (await api.get(f"/api/v1/users/me/exports/{request['id']}", headers=alice.headers)).json()["download_url"]
    assert (await fetch(link)).status_code == 200
    old = datetime.now(UTC) - timedelta(seconds=settings.export_retention + 60)
    await File.update({File.created_at: old}).where(File.purpose == "export")
    await app.state.app_state.redis.enqueue_job("clean_files")
    await run_jobs_fast()
    expired = (await api.get(f"/api/v1/users/me/exports/{request['id']}", headers=alice.headers)).json()
    assert expired["status"] == "completed" and expired["expired"] is True and expired["download_url"] is None
    assert (await fetch(link)).status_code == 404
    assert await File.count().where(File.purpose == "export") == 0


async def test_erasure_scrubs_files_and_embeddings_and_keeps_payments_anonymised(
    api: httpx.AsyncClient, client: httpx.AsyncClient, community: Community, app: Litestar, run_jobs_fast
) -> None:
    state = app.state.app_state
    mentor = await community.mentor("mentor@example.com")
    lounge = await community.lounge(mentor)
    keeper = await community.user("keeper@example.com")
    kept = (await upload(api, keeper, PNG, filename="kept.png")).json()

    assert (await upload(api, mentor, PNG, filename="face.png")).status_code == 201
    knowledge = await upload(
        api,
        mentor,
        b"# Guide\n\nBreathe in for four counts.\n",
        filename="guide.md",
        purpose="knowledge",
        lounge_id=lounge["id"],
    )
    assert knowledge.status_code == 201, knowledge.text
    notes = await client.post(
        "/api/v1/notes", json={"title": "Private", "content": "my secret plan"}, headers=mentor.headers
    )
    assert notes.status_code == 201
    export = (await api.post("/api/v1/users/me/exports", headers=mentor.headers)).json()
    await run_jobs_fast()
    mentor_id = uuid.UUID(mentor.id)
    assert await KnowledgeChunk.exists().where(KnowledgeChunk.note.is_not_null(), KnowledgeChunk.owner == mentor_id)
    assert await KnowledgeChunk.exists().where(KnowledgeChunk.lounge == uuid.UUID(lounge["id"]))
    files = await File.select(File.id, File.object_key).where(File.owner == mentor_id)
    assert len(files) == 3  # attachment, knowledge, export
    [payment] = await Payment.insert(
        Payment(
            user=mentor_id,
            amount_cents=1900,
            currency="eur",
            status=PaymentStatus.paid,
            stripe_invoice_id="in_test_1",
            hosted_invoice_url="https://invoice.example/in_test_1",
        )
    ).returning(Payment.id)

    deleted = await client.request("DELETE", "/api/v1/users/me", json={"password": PASSWORD}, headers=mentor.headers)
    assert deleted.status_code == 202, deleted.text
    await run_jobs_fast()

    assert not await File.exists().where(File.owner == mentor_id)
    for row in files:
        assert not await File.exists().where(File.id == row["id"])
        assert not await state.storage.exists(row["object_key"])
    assert not await KnowledgeChunk.exists().where(KnowledgeChunk.owner == mentor_id)
    assert not await KnowledgeChunk.exists().where(KnowledgeChunk.lounge == uuid.UUID(lounge["id"]))
    kept_payment = await Payment.select().where(Payment.id == payment["id"]).first()
    assert kept_payment["user"] is None and kept_payment["hosted_invoice_url"] is None
    assert (kept_payment["amount_cents"], kept_payment["stripe_invoice_id"]) == (1900, "in_test_1")
    requests = await ComplianceRequest.select(ComplianceRequest.kind, ComplianceRequest.status).where(
        ComplianceRequest.user == mentor_id
    )
    assert {(r["kind"], r["status"]) for r in requests} == {("export", "completed"), ("erasure", "completed")}
    exported = await api.get(f"/api/v1/users/me/exports/{export['id']}", headers=keeper.headers)
    assert exported.status_code == 404
    # Other people's files are untouched.
    assert (await api.get(f"/api/v1/files/{kept['id']}", headers=keeper.headers)).status_code == 200
