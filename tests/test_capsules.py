"""Time capsules: sealed until ``unlock_at`` on every route, opened exactly once by the
scheduled job (also when two runs overlap, also after workers were down), and the owner
told in-app, on their socket and by mail."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.domain.capsules.services import sealed_file_ids
from server.domain.tables.capsules import TimeCapsule
from server.domain.tables.files import File
from server.domain.tables.notifications import Notification
from server.foundation.settings import Settings
from server.foundation.state import AppState
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import sdk_client
from workers.capsules import unlock_capsules
from workers.main import CRON_JOBS, create_worker, worker_options

API = "/api/v1"


@pytest.fixture
async def application(app: Litestar, settings: Settings) -> AsyncIterator[Litestar]:
    """The app with the capsule routes under /api/v1 (same database and Redis as ``app``)."""
    yield app


@pytest.fixture
async def api(application: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 40002))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


@pytest.fixture
def state(app: Litestar) -> AppState:
    return app.state.app_state


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def seal(api: httpx.AsyncClient, owner: Account, **fields: Any) -> dict[str, Any]:
    body = {"title": "Dear future me", "content": "Hello from the past", "unlock_at": in_days(30), **fields}
    response = await api.post(f"{API}/capsules", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def make_due(capsule_id: str, ago: timedelta = timedelta(seconds=1)) -> None:
    """Time passes: the capsule's ``unlock_at`` is now ``ago`` in the past."""
    await TimeCapsule.update({TimeCapsule.unlock_at: datetime.now(UTC) - ago}).where(
        TimeCapsule.id == uuid.UUID(capsule_id)
    )


async def uploaded_file(owner: Account, purpose: str = "attachment", status: str = "ready") -> str:
    file_id = uuid.uuid4()
    await File.insert(
        File(
            id=file_id,
            owner=uuid.UUID(owner.id),
            bucket="lounges",
            object_key=f"test/{file_id}",
            filename="letter.txt",
            content_type="text/plain",
            size=12,
            sha256="0" * 64,
            purpose=purpose,
            status=status,
        )
    )
    return str(file_id)


async def unlock_notifications(capsule_id: str) -> int:
    rows = await Notification.raw(
        "SELECT count(*) AS n FROM notifications WHERE kind = 'capsule.unlocked' AND data->>'capsule_id' = {}",
        capsule_id,
    )
    return int(rows[0]["n"])


async def clear_signup_mail(mailbox, run_jobs) -> None:
    await run_jobs()
    mailbox.messages.clear()


# -- the owner's routes ------------------------------------------------------------------------


async def test_create_list_get_and_delete_with_validation(api: httpx.AsyncClient, community: Community) -> None:
    owner = await community.user("owner@example.com", verified=False)  # capsules are personal, like notes
    other = await community.user("other@example.com")
    attachment = await uploaded_file(owner)
    late = await seal(api, owner, title="Later", unlock_at=in_days(400))
    soon = await seal(api, owner, title="Sooner", unlock_at=in_days(2), attachments=[attachment, attachment])
    assert soon["status"] == "sealed" and soon["sealed"] is True and soon["due"] is False
    assert soon["content"] is None and soon["attachments"] is None and soon["attachment_count"] == 1
    assert (await File.select(File.purpose).where(File.id == uuid.UUID(attachment)).first())["purpose"] == "capsule"

    listed = (await api.get(f"{API}/capsules", params={"limit": 1}, headers=owner.headers)).json()
    assert [item["title"] for item in listed["items"]] == ["Sooner"] and "content" not in listed["items"][0]
    rest = await api.get(f"{API}/capsules", params={"cursor": listed["next_cursor"]}, headers=owner.headers)
    assert [item["id"] for item in rest.json()["items"]] == [late["id"]] and rest.json()["next_cursor"] is None
    unlocked_only = await api.get(f"{API}/capsules", params={"status": "unlocked"}, headers=owner.headers)
    assert unlocked_only.json()["items"] == []
    assert (await api.get(f"{API}/capsules", headers=other.headers)).json()["items"] == []

    for method, path in (
        ("GET", f"/capsules/{soon['id']}"),
        ("POST", f"/capsules/{soon['id']}/unlock"),
        ("DELETE", f"/capsules/{soon['id']}"),
    ):
        response = await api.request(method, API + path, headers=other.headers)
        assert response.status_code == 404 and response.json()["code"] == "capsule_not_found", (method, path)

    used_in_message_or_capsule = [attachment, await uploaded_file(other), await uploaded_file(owner, status="pending")]
    for file_id in used_in_message_or_capsule:
        response = await api.post(
            f"{API}/capsules",
            headers=owner.headers,
            json={"title": "x", "content": "y", "unlock_at": in_days(1), "attachments": [file_id]},
        )
        assert response.status_code == 422 and response.json()["code"] == "invalid_attachment"
        assert response.json()["file_ids"] == [file_id]

    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    for body, code in (
        ({"title": "x", "content": "y", "unlock_at": in_days(-1)}, "unlock_at_not_in_future"),
        ({"title": "x", "content": "y", "unlock_at": in_days(9200)}, "unlock_at_too_far"),
        ({"title": "x", "content": "  ", "unlock_at": in_days(1)}, "empty_capsule"),
        ({"title": "   ", "content": "y", "unlock_at": in_days(1)}, "invalid_title"),
        ({"title": "x", "content": "y", "unlock_at": naive.isoformat()}, "validation_failed"),
        ({"title": "x", "content": "y", "unlock_at": in_days(1), "status": "unlocked"}, "validation_failed"),
        ({"title": "x", "content": "y" * 20_001, "unlock_at": in_days(1)}, "validation_failed"),
    ):
        response = await api.post(f"{API}/capsules", json=body, headers=owner.headers)
        assert response.status_code == 422 and response.json()["code"] == code, (body, response.text)

    assert (await api.delete(f"{API}/capsules/{late['id']}", headers=owner.headers)).status_code == 204
    assert (await api.get(f"{API}/capsules/{late['id']}", headers=owner.headers)).status_code == 404
    assert (await api.get(f"{API}/capsules")).status_code == 401


async def test_a_sealed_capsule_cannot_be_read_early_by_any_route(
    application: Litestar, api: httpx.AsyncClient, community: Community, state: AppState
) -> None:
    owner = await community.user("keeper@example.com")
    secret = f"the-secret-{uuid.uuid4().hex}"
    attachment = await uploaded_file(owner)
    created = await api.post(
        f"{API}/capsules",
        headers=owner.headers,
        json={"title": "Open in a year", "content": secret, "unlock_at": in_days(365), "attachments": [attachment]},
    )
    assert created.status_code == 201 and secret not in created.text and attachment not in created.text
    capsule = created.json()

    # Every GET route of the app, with each id the owner knows in every path parameter:
    # the content never shows, and no route serves the sealed file (or anything) by its id.
    checked = 0
    for value in (capsule["id"], attachment, owner.id):
        for route in application.routes:
            if "GET" not in getattr(route, "methods", ()):
                continue
            path = re.sub(r"\{\w+:int\}", "1", route.path)
            path = re.sub(r"\{\w+:\w+\}", value, path)
            response = await api.get(path, headers=owner.headers)
            assert secret not in response.text, path
            if value == attachment and path != route.path:
                assert response.status_code >= 400, path
            checked += 1
    assert checked > 60

    early = await api.post(f"{API}/capsules/{capsule['id']}/unlock", headers=owner.headers)
    assert early.status_code == 409 and early.json()["code"] == "capsule_sealed" and secret not in early.text
    assert datetime.fromisoformat(early.json()["unlock_at"]) == datetime.fromisoformat(capsule["unlock_at"])
    assert await sealed_file_ids([uuid.UUID(attachment)]) == {uuid.UUID(attachment)}
    assert await unlock_notifications(capsule["id"]) == 0

    await make_due(capsule["id"])
    listed = (await api.get(f"{API}/capsules", headers=owner.headers)).json()["items"]
    assert listed[0]["due"] is True and listed[0]["sealed"] is True
    assert (await api.get(f"{API}/capsules/{capsule['id']}", headers=owner.headers)).json()["content"] is None
    # The owner (twice) and the job race to open it: it opens once, with one notification.
    opened, again, _ = await asyncio.gather(
        api.post(f"{API}/capsules/{capsule['id']}/unlock", headers=owner.headers),
        api.post(f"{API}/capsules/{capsule['id']}/unlock", headers=owner.headers),
        unlock_capsules({"state": state, "job_try": 1}),
    )
    assert opened.status_code == 200, opened.text
    assert opened.json()["content"] == secret and opened.json()["attachments"] == [attachment]
    assert opened.json()["status"] == "unlocked" and opened.json()["unlocked_at"] is not None
    assert again.status_code == 200 and again.json()["unlocked_at"] == opened.json()["unlocked_at"]
    assert await unlock_notifications(capsule["id"]) == 1
    assert await sealed_file_ids([uuid.UUID(attachment)]) == set()


# -- the scheduled job -------------------------------------------------------------------------


async def test_the_job_opens_each_due_capsule_once_even_when_run_twice_concurrently(
    api: httpx.AsyncClient, community: Community, state: AppState, settings: Settings, mailbox, run_jobs
) -> None:
    owner = await community.user("future@example.com")
    other = await community.user("elsewhere@example.com")
    await clear_signup_mail(mailbox, run_jobs)
    due = [await seal(api, owner, title=f"Capsule {i}", content=f"note {i}") for i in range(12)]
    for index, capsule in enumerate(due):  # some came due days ago, while no worker ran
        await make_due(capsule["id"], ago=timedelta(days=index % 3, seconds=1))
    theirs = await seal(api, other, title="Theirs")
    await make_due(theirs["id"], ago=timedelta(hours=5))
    later = await seal(api, owner, title="Not yet", unlock_at=in_days(1))

    # Small batches, so that the two runs overlap over several transactions.
    small = AppState(
        settings=msgspec.structs.replace(settings, capsule_unlock_batch_size=5), engine=state.engine, redis=state.redis
    )
    node = await WebNode(settings, DRAIN_SECONDS="0").start()  # no graceful drain to wait for
    socket, events = sdk_client(node.ws_url, owner.access_token)
    try:
        await socket.connect()
        await socket.ready()
        results = await asyncio.gather(
            unlock_capsules({"state": small, "job_try": 1}), unlock_capsules({"state": small, "job_try": 1})
        )
        opened = [int(re.match(r"opened (\d+)", result)[1]) for result in results]
        assert sum(opened) == 13

        await events.wait_for(lambda e: len(e.personal) >= 12)
        await asyncio.sleep(0.5)  # room for a duplicate to show up
        assert all(p["type"] == "notification" for p in events.personal)
        pushed = [p["notification"] for p in events.personal]
        assert all(n["kind"] == "capsule.unlocked" for n in pushed)
        assert sorted(n["data"]["capsule_id"] for n in pushed) == sorted(c["id"] for c in due)  # each once
    finally:
        await socket.disconnect()
        await node.stop()

    for capsule in [*due, theirs]:
        assert await unlock_notifications(capsule["id"]) == 1
        shown = (
            await api.get(f"{API}/capsules/{capsule['id']}", headers=(other if capsule is theirs else owner).headers)
        ).json()
        assert shown["status"] == "unlocked" and shown["content"] is not None
    row = (
        await TimeCapsule.select(TimeCapsule.status, TimeCapsule.notified_at)
        .where(TimeCapsule.id == uuid.UUID(later["id"]))
        .first()
    )
    assert row == {"status": "sealed", "notified_at": None}
    assert await TimeCapsule.count().where(TimeCapsule.notified_at.is_null(), TimeCapsule.status == "unlocked") == 0

    assert await unlock_capsules({"state": state, "job_try": 1}) == "opened 0, redelivered 0"  # idempotent
    await run_jobs()
    subjects = [m["Subject"] for m in mailbox.messages if m["To"] == owner.email]
    assert sorted(subjects) == sorted(f"Your time capsule “Capsule {i}” is open" for i in range(12))
    assert [m["Subject"] for m in mailbox.messages if m["To"] == other.email] == ["Your time capsule “Theirs” is open"]


async def test_delivery_is_redone_after_a_crash_without_mailing_twice(
    api: httpx.AsyncClient, community: Community, state: AppState, mailbox, run_jobs
) -> None:
    owner = await community.user("crash@example.com")
    await clear_signup_mail(mailbox, run_jobs)
    capsule = await seal(api, owner)
    await make_due(capsule["id"])
    assert await unlock_capsules({"state": state, "job_try": 1}) == "opened 1, redelivered 0"
    await run_jobs()
    assert len(mailbox.messages) == 1

    async def crashed_before_delivery_finished(*, mailed: bool) -> None:
        """As if the process died after the commit: not marked notified, unlocked minutes ago."""
        await TimeCapsule.update(
            {TimeCapsule.notified_at: None, TimeCapsule.unlocked_at: datetime.now(UTC) - timedelta(minutes=5)}
        ).where(TimeCapsule.id == uuid.UUID(capsule["id"]))
        if not mailed:
            await Notification.update({Notification.emailed_at: None}).where(Notification.user == uuid.UUID(owner.id))

    await crashed_before_delivery_finished(mailed=True)
    assert await unlock_capsules({"state": state, "job_try": 1}) == "opened 0, redelivered 1"
    assert await unlock_capsules({"state": state, "job_try": 1}) == "opened 0, redelivered 0"
    await run_jobs()
    assert len(mailbox.messages) == 1  # the mail had gone out already

    await crashed_before_delivery_finished(mailed=False)
    assert await unlock_capsules({"state": state, "job_try": 1}) == "opened 0, redelivered 1"
    await run_jobs()
    assert len(mailbox.messages) == 2
    assert await unlock_notifications(capsule["id"]) == 1


async def test_scheduled_jobs_run_under_arq_cron(
    api: httpx.AsyncClient, community: Community, state: AppState, settings: Settings
) -> None:
    ours = {"cron:unlock_capsules", "cron:prune_notifications"}
    jobs = {job.name: job for job in worker_options(settings)["cron_jobs"] if job.name in ours}
    assert set(jobs) == ours
    assert all(job.unique and job.max_tries > 1 for job in jobs.values())
    every_minute = jobs["cron:unlock_capsules"]
    assert every_minute.minute is None and every_minute.hour is None and every_minute.second == 0

    owner = await community.user("cron@example.com")
    capsule = await seal(api, owner)
    await make_due(capsule["id"], ago=timedelta(days=40))
    uid = uuid.UUID(owner.id)
    old, recent, unread = (
        Notification(user=uid, kind="payment.succeeded", title=title, body="", read_at=read_at)
        for title, read_at in (
            ("old", datetime.now(UTC) - timedelta(days=300)),
            ("recent", datetime.now(UTC)),
            ("unread", None),
        )
    )
    old.created_at = unread.created_at = datetime.now(UTC) - timedelta(days=300)
    await Notification.insert(old, recent, unread)

    # The real arq worker, with both cron jobs due at start-up.
    worker = create_worker(
        settings,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        cron_jobs=[
            dataclasses.replace(job, run_at_startup=True, next_run=None) for job in CRON_JOBS if job.name in ours
        ],
    )
    try:
        await asyncio.wait_for(worker.main(), timeout=30)
    finally:
        await worker.close()
    assert worker.jobs_complete >= 2 and worker.jobs_failed == 0
    row = await TimeCapsule.select(TimeCapsule.status).where(TimeCapsule.id == uuid.UUID(capsule["id"])).first()
    assert row["status"] == "unlocked"
    titles = {r["title"] for r in await Notification.select(Notification.title).where(Notification.user == uid)}
    assert titles == {"recent", "unread", "Your time capsule “Dear future me” is open"}
