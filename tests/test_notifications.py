"""Notifications: stored, listed with an unread count and a cursor, marked read (also concurrently),
pushed live on ``user#<id>``, mailed per preferences, and created by the events that should."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from litestar import Litestar

from server.domain.notifications.services import (
    create_notification,
    deliver_notification,
    mentioned_user_ids,
    notify,
    notify_budget_nearly_used,
)
from server.domain.tables.accounts import Role, User
from server.domain.tables.mentors import Mentor, MentorStatus
from server.domain.tables.notifications import Notification
from server.foundation.settings import Settings
from server.foundation.state import AppState
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import sdk_client

API = "/api/v1"


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return client


@pytest.fixture
def state(app: Litestar) -> AppState:
    return app.state.app_state


async def seed(state: AppState, user_id: str, count: int, kind: str = "payment.succeeded") -> list[uuid.UUID]:
    ids = []
    for index in range(count):
        async with state.engine.transaction():
            ids.append(
                await create_notification(
                    uuid.UUID(user_id), kind=kind, title=f"Note {index}", body="body", data={"index": index}
                )
            )
    return ids


async def unread_in_db(user_id: str) -> int:
    return await Notification.count().where(Notification.user == uuid.UUID(user_id), Notification.read_at.is_null())


async def kinds_of(api: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    response = await api.get(f"{API}/notifications", headers=headers)
    assert response.status_code == 200, response.text
    return [item["kind"] for item in response.json()["items"]]


# -- listing and marking read ------------------------------------------------------------------


async def test_list_pages_by_cursor_with_unread_count_and_marks_read(
    api: httpx.AsyncClient, community: Community, state: AppState
) -> None:
    reader = await community.user("reader@example.com")
    other = await community.user("other@example.com")
    ids = await seed(state, reader.id, 25)
    foreign = (await seed(state, other.id, 1))[0]

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        response = await api.get(f"{API}/notifications", params=params, headers=reader.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["unread_count"] == 25
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 25 and {item["id"] for item in seen} == {str(i) for i in ids}
    assert [item["created_at"] for item in seen] == sorted((item["created_at"] for item in seen), reverse=True)
    assert all(item["read"] is False and item["read_at"] is None for item in seen)

    first = await api.patch(f"{API}/notifications/{ids[0]}/read", headers=reader.headers)
    assert first.status_code == 200 and first.json() == {"marked": 1, "unread_count": 24}
    again = await api.post(f"{API}/notifications/{ids[0]}/read", headers=reader.headers)
    assert again.json() == {"marked": 0, "unread_count": 24}  # idempotent, POST accepted too
    refused = await api.patch(f"{API}/notifications/{foreign}/read", headers=reader.headers)
    assert refused.status_code == 404 and refused.json()["code"] == "notification_not_found"

    unread = (
        await api.get(f"{API}/notifications", params={"unread": "true", "limit": 100}, headers=reader.headers)
    ).json()
    assert len(unread["items"]) == 24 and str(ids[0]) not in {item["id"] for item in unread["items"]}

    everything = await api.patch(f"{API}/notifications/read-all", headers=reader.headers)
    assert everything.json() == {"marked": 24, "unread_count": 0}
    assert (await api.post(f"{API}/notifications/read-all", headers=reader.headers)).json() == {
        "marked": 0,
        "unread_count": 0,
    }
    assert await unread_in_db(other.id) == 1  # nobody else's

    bad = await api.get(f"{API}/notifications", params={"cursor": "nonsense"}, headers=reader.headers)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
    assert (await api.get(f"{API}/notifications")).status_code == 401


async def test_counts_stay_right_under_concurrent_read_all(
    api: httpx.AsyncClient, community: Community, state: AppState
) -> None:
    reader = await community.user("busy@example.com")
    bystander = await community.user("bystander@example.com")
    ids = await seed(state, reader.id, 60)
    await seed(state, bystander.id, 5)

    calls = [
        *(api.patch(f"{API}/notifications/read-all", headers=reader.headers) for _ in range(8)),
        *(api.post(f"{API}/notifications/read-all", headers=reader.headers) for _ in range(8)),
        *(api.patch(f"{API}/notifications/{notification_id}/read", headers=reader.headers) for notification_id in ids),
    ]
    arriving = [
        notify(state, uuid.UUID(reader.id), kind="payment.succeeded", title=f"New {i}", body="") for i in range(10)
    ]
    results = await asyncio.gather(*calls, *arriving)
    responses: list[httpx.Response] = list(results[: len(calls)])
    assert all(response.status_code == 200 for response in responses), [r.text for r in responses]
    bodies = [response.json() for response in responses]
    assert all(0 <= body["unread_count"] <= 70 for body in bodies)

    read_rows = await Notification.count().where(
        Notification.user == uuid.UUID(reader.id), Notification.read_at.is_not_null()
    )
    # Every notification was marked read by exactly one call.
    assert sum(body["marked"] for body in bodies) == read_rows
    assert read_rows >= 60  # all that existed before any read-all started
    listed = (await api.get(f"{API}/notifications", params={"limit": 1}, headers=reader.headers)).json()
    assert listed["unread_count"] == 70 - read_rows == await unread_in_db(reader.id)

    last = (await api.patch(f"{API}/notifications/read-all", headers=reader.headers)).json()
    assert last == {"marked": 70 - read_rows, "unread_count": 0}
    assert await unread_in_db(bystander.id) == 5


# -- live push and mail ------------------------------------------------------------------------


async def test_pushed_live_on_the_user_channel_and_mailed_by_preference(
    api: httpx.AsyncClient,
    client: httpx.AsyncClient,
    community: Community,
    state: AppState,
    settings: Settings,
    mailbox,
    run_jobs,
) -> None:
    user = await community.user("live@example.com")
    uid = uuid.UUID(user.id)
    await run_jobs()  # the sign-up mail
    mailbox.messages.clear()
    node = await WebNode(settings, DRAIN_SECONDS="0").start()  # no graceful drain to wait for
    socket, events = sdk_client(node.ws_url, user.access_token)
    try:
        await socket.connect()
        await socket.ready()
        paid = await notify(state, uid, kind="payment.succeeded", title="Payment received", body="Thank you.")
        await events.wait_for(lambda e: any(p.get("type") == "notification" for p in e.personal))
        [push] = [p for p in events.personal if p.get("type") == "notification"]
        assert push["notification"]["id"] == str(paid) and push["notification"]["kind"] == "payment.succeeded"
        assert push["notification"]["read"] is False and push["unread_count"] == 1

        async with state.engine.transaction():  # stored, then delivered after the commit
            later = await create_notification(uid, kind="lounge.mention", title="Mentioned", body="")
            await asyncio.sleep(0.2)
            assert [p["notification"]["id"] for p in events.personal] == [str(paid)]
        assert await deliver_notification(state, later)
        await events.wait_for(lambda e: len(e.personal) == 2)
        assert events.personal[1]["notification"]["id"] == str(later) and events.personal[1]["unread_count"] == 2
    finally:
        await socket.disconnect()
        await node.stop()

    await run_jobs()
    mails = [m for m in mailbox.messages if m["To"] == user.email]
    assert [m["Subject"] for m in mails] == ["Payment received"]
    assert "Thank you." in mails[0].get_body(("plain",)).get_content()
    assert await deliver_notification(state, paid)  # delivering again never mails twice
    await run_jobs()
    assert len([m for m in mailbox.messages if m["To"] == user.email]) == 1

    async def mails_after(prefs: dict[str, bool], kind: str) -> int:
        response = await client.put(f"{API}/users/me", headers=user.headers, json={"notification_prefs": prefs})
        assert response.status_code == 200, response.text
        before = len(mailbox.messages)
        await notify(state, uid, kind=kind, title=f"About {kind}", body="")
        await run_jobs()
        return len(mailbox.messages) - before

    assert await mails_after({"email:payment.succeeded": False}, "payment.succeeded") == 0
    assert await mails_after({}, "lounge.mention") == 0  # not mailed by default
    assert await mails_after({"email:lounge.mention": True}, "lounge.mention") == 1
    assert await mails_after({"email": False, "email:lounge.mention": True}, "lounge.mention") == 0
    assert await mails_after({"email": False}, "payment.failed") == 0

    unverified = await community.user("unverified@example.com", verified=False)
    await notify(state, uuid.UUID(unverified.id), kind="payment.failed", title="Payment failed", body="")
    await run_jobs()
    assert [m["Subject"] for m in mailbox.messages if m["To"] == unverified.email] == [
        "Confirm your email for Lounges"  # the sign-up mail only
    ]
    assert await kinds_of(api, unverified.headers) == ["payment.failed"]  # still stored in-app


# -- the events that notify --------------------------------------------------------------------


async def test_mentor_review_and_lounge_invite_notify_after_commit(
    api: httpx.AsyncClient, client: httpx.AsyncClient, community: Community, mailbox, run_jobs
) -> None:
    admin = await community.user("admin@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(admin.id))
    approved = await community.user("approved@example.com")
    rejected = await community.user("rejected@example.com")
    [first] = await Mentor.insert(
        Mentor(user=uuid.UUID(approved.id), headline="Coach", bio="bio", status=MentorStatus.pending)
    ).returning(Mentor.id)
    [second] = await Mentor.insert(
        Mentor(user=uuid.UUID(rejected.id), headline="Coach", bio="bio", status=MentorStatus.pending)
    ).returning(Mentor.id)
    response = await client.patch(f"{API}/admin/mentors/{first['id']}/approve", headers=admin.headers)
    assert response.status_code == 200, response.text
    response = await client.patch(
        f"{API}/admin/mentors/{second['id']}/reject", headers=admin.headers, json={"reason": "Too little detail"}
    )
    assert response.status_code == 200, response.text
    assert await kinds_of(api, approved.headers) == ["mentor.approved"]
    assert await kinds_of(api, rejected.headers) == ["mentor.rejected"]

    mentor = await community.mentor("host@example.com")
    lounge = await community.lounge(mentor, access="private")
    guest = await community.user("guest@example.com")
    response = await client.post(
        f"{API}/lounges/{lounge['id']}/members", headers=mentor.headers, json={"user_id": guest.id}
    )
    assert response.status_code == 201, response.text
    listed = (await api.get(f"{API}/notifications", headers=guest.headers)).json()
    assert [item["kind"] for item in listed["items"]] == ["lounge.invite"]
    assert listed["items"][0]["data"]["lounge_id"] == lounge["id"]

    await run_jobs()
    sent = {(m["To"], m["Subject"]) for m in mailbox.messages}
    assert ("approved@example.com", "You are now a mentor") in sent
    assert ("rejected@example.com", "Your mentor application was not approved") in sent
    assert ("guest@example.com", f"You are invited to {lounge['title']}") in sent


async def test_mentions_in_a_lounge_notify_the_mentioned_members(
    api: httpx.AsyncClient, client: httpx.AsyncClient, community: Community
) -> None:
    mentor = await community.mentor("speaker@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("member@example.com")
    outsider = await community.user("outsider@example.com")
    assert (await community.join(member, lounge)).status_code == 200
    await User.update({User.full_name: "Ada Lovelace"}).where(User.id == uuid.UUID(member.id))

    text = (
        f"Welcome @[Ada Lovelace]({member.id}), and @[Ada]({member.id}) again; "
        f"@[Me]({mentor.id}) @[Nobody]({uuid.uuid4()}) @[Outsider]({outsider.id}) @plain"
    )
    response = await community.post(mentor, f"{API}/lounges/{lounge['id']}", text)
    assert response.status_code == 201, response.text
    message = response.json()

    listed = (await api.get(f"{API}/notifications", headers=member.headers)).json()
    [mention] = listed["items"]
    assert mention["kind"] == "lounge.mention"
    assert mention["body"].startswith("Welcome @Ada Lovelace, and @Ada again")
    assert mention["data"] == {
        "lounge_id": lounge["id"],
        "channel": lounge["channel"],
        "offset": message["offset"],
        "message_id": message["id"],
        "by": mentor.id,
    }
    assert await kinds_of(api, mentor.headers) == []  # not the author
    assert await kinds_of(api, outsider.headers) == []  # not a member

    thread = await client.post(f"{API}/chat/threads", headers=member.headers, json={})
    assert thread.status_code == 201, thread.text
    response = await community.post(member, f"{API}/chat/threads/{thread.json()['id']}", f"@[Me]({mentor.id})")
    assert response.status_code == 201, response.text
    assert await kinds_of(api, mentor.headers) == []  # threads have nobody to mention

    assert mentioned_user_ids("@[A](not-a-uuid) @[](" + str(uuid.uuid4()) + ")") == []


async def test_ai_budget_warning_once_a_month(
    api: httpx.AsyncClient, community: Community, state: AppState, mailbox, run_jobs
) -> None:
    user = await community.user("spender@example.com")
    uid = uuid.UUID(user.id)
    await run_jobs()  # the sign-up mail
    mailbox.messages.clear()
    assert await notify_budget_nearly_used(state, uid, 79, 100) is None  # below AI_BUDGET_WARNING_PERCENT
    results = await asyncio.gather(*(notify_budget_nearly_used(state, uid, 85, 100) for _ in range(5)))
    assert len([r for r in results if r is not None]) == 1
    assert await notify_budget_nearly_used(state, uid, 99, 100) is None  # already told this month
    listed = (await api.get(f"{API}/notifications", headers=user.headers)).json()
    [warning] = listed["items"]
    assert warning["kind"] == "ai.budget_nearly_used" and warning["title"].startswith("You have used 85%")
    await run_jobs()
    assert [m["Subject"] for m in mailbox.messages if m["To"] == user.email] == [warning["title"]]
