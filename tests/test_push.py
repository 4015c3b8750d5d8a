"""Push notifications end to end: devices registered through the API, the real arq worker
pushing through the real clients (httpx over HTTP/2 + ES256 provider tokens for APNs,
google-auth service-account tokens + FCM HTTP v1) to local stand-ins that speak the wire
formats and check what Apple and Google check (tests/support/push_standins.py), and a real
web node holding the official SDK's socket for "online"."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.app import create_app
from server.domain.compliance.services import export_chunks
from server.domain.push.delivery import prune_push_data
from server.domain.tables.accounts import Role, User, UserSession
from server.domain.tables.capsules import TimeCapsule
from server.domain.tables.push import PushDevice, PushLog
from server.foundation.settings import Settings
from server.foundation.state import AppState
from server.streams.online import online_users
from tests.support.accounts import Account, login
from tests.support.community import Community
from tests.support.lifespan import running_lifespan
from tests.support.nodes import WebNode
from tests.support.push_standins import ApnsStandin, FcmStandin, running_apns_standin, running_fcm_standin
from tests.support.sdk import sdk_client
from tests.support.smtp import SmtpSink
from tests.support.worker import run_worker_until_idle

API = "/api/v1"
BUNDLE = "dev.lounges.app"
RunJobs = Callable[[], Awaitable[None]]


def apns_token() -> str:
    return secrets.token_hex(32)


def fcm_token() -> str:
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(110)}"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def apns() -> AsyncIterator[ApnsStandin]:
    async with running_apns_standin(topics={BUNDLE}) as standin:
        yield standin


@pytest.fixture
async def fcm() -> AsyncIterator[FcmStandin]:
    async with running_fcm_standin() as standin:
        yield standin


def configured(settings: Settings, apns: ApnsStandin | None, fcm: FcmStandin | None, **more: Any) -> Settings:
    values: dict[str, Any] = {"embeddings_provider": "hashing", **more}
    if apns is not None:
        values |= {
            "apns_key": apns.key_pem.replace("\n", "\\n"),  # as a one-line env file holds it
            "apns_key_id": apns.key_id,
            "apns_team_id": apns.team_id,
            "apns_bundle_ids": [BUNDLE],
            "apns_base_url": apns.url,
            "apns_sandbox_base_url": apns.url,
            "apns_ca_file": apns.ca_file,
        }
    if fcm is not None:
        values |= {"fcm_service_account": fcm.service_account_json, "fcm_api_base": fcm.url}
    return msgspec.structs.replace(settings, **values)


@pytest.fixture
def push_settings(settings: Settings, apns: ApnsStandin, fcm: FcmStandin) -> Settings:
    return configured(settings, apns, fcm)


async def serve_in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_lifespan(create_app(settings)) as application:
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://lounges.test") as http:
            yield http


@pytest.fixture
async def api(app: Litestar, push_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with push configured, in-process (``app`` empties the tables and Redis first)."""
    async for http in serve_in_process(push_settings):
        yield http


@pytest.fixture
def run_push_jobs(push_settings: Settings) -> RunJobs:
    """The real arq worker, configured for the stand-ins, until the queue is empty."""
    return lambda: run_worker_until_idle(push_settings)


@pytest.fixture
def people(api: httpx.AsyncClient, mailbox: SmtpSink, run_push_jobs: RunJobs) -> Community:
    return Community(api, mailbox, run_push_jobs)


@pytest.fixture
def state(app: Litestar) -> AppState:
    return app.state.app_state


# -- helpers -----------------------------------------------------------------------------------


async def register(
    api: httpx.AsyncClient, account: Account, platform: str, token: str, **fields: Any
) -> httpx.Response:
    body = {"platform": platform, "token": token, **fields}
    if platform == "apns":
        body.setdefault("app_id", BUNDLE)
    return await api.post(f"{API}/devices", json=body, headers=account.headers)


async def device(api: httpx.AsyncClient, account: Account, platform: str, token: str, **fields: Any) -> str:
    response = await register(api, account, platform, token, **fields)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def devices_of(api: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    response = await api.get(f"{API}/devices", headers=account.headers)
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"items", "next_cursor"}
    return list(page["items"])


async def pushes_of(api: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    response = await api.get(f"{API}/devices/pushes", params={"limit": 100}, headers=account.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def set_prefs(api: httpx.AsyncClient, account: Account, prefs: dict[str, bool]) -> None:
    response = await api.put(f"{API}/users/me", json={"notification_prefs": prefs}, headers=account.headers)
    assert response.status_code == 200, response.text


def apns_kinds(apns: ApnsStandin, token: str) -> list[str]:
    return [r.body["lounges"]["kind"] for r in apns.delivered(token)]


def fcm_kinds(fcm: FcmStandin, token: str) -> list[str]:
    return [r.body["message"]["data"]["kind"] for r in fcm.delivered(token)]


def forget(*standins: ApnsStandin | FcmStandin) -> None:
    for standin in standins:
        standin.received.clear()


async def room(people: Community, api: httpx.AsyncClient, *, access: str = "public") -> tuple[Account, dict[str, Any]]:
    mentor = await people.mentor(f"mentor-{secrets.token_hex(3)}@example.com")
    await User.update({User.full_name: "Grace Hopper"}).where(User.id == uuid.UUID(mentor.id))
    return mentor, await people.lounge(mentor, access=access, title="Morning focus")


async def post(people: Community, account: Account, lounge: dict[str, Any], text: str) -> dict[str, Any]:
    response = await people.post(account, f"{API}/lounges/{lounge['id']}", text)
    assert response.status_code == 201, response.text
    return dict(response.json())


# -- devices -----------------------------------------------------------------------------------


async def test_devices_are_registered_idempotently_listed_and_removed_only_by_their_owner(
    api: httpx.AsyncClient, people: Community
) -> None:
    ada = await people.user("ada@example.com")
    bob = await people.user("bob@example.com")
    token = apns_token()

    first = await register(api, ada, "apns", token, locale="en-GB", app_version="1.4.0 (210)")
    assert first.status_code == 201, first.text
    created = first.json()
    assert created["platform"] == "apns" and created["app_id"] == BUNDLE and created["environment"] == "production"
    assert created["token_hint"] == token[-8:] and token not in first.text  # the token is never shown again
    assert created["current"] is True and created["locale"] == "en-GB" and created["app_version"] == "1.4.0 (210)"

    again = await register(api, ada, "apns", token.upper(), locale="fr-FR", environment="sandbox")
    assert again.status_code == 200, again.text  # the same token: updated, not duplicated
    assert again.json()["id"] == created["id"] and again.json()["locale"] == "fr-FR"
    assert again.json()["environment"] == "sandbox"
    android = await device(api, ada, "fcm", fcm_token(), app_id="lounges-test")
    listed = await devices_of(api, ada)
    assert [d["id"] for d in listed] == [android, created["id"]]  # most recently registered first

    # Someone else's device: not listed, not deletable (404, as if it did not exist).
    assert await devices_of(api, bob) == []
    refused = await api.delete(f"{API}/devices/{created['id']}", headers=bob.headers)
    assert refused.status_code == 404 and refused.json()["code"] == "device_not_found"
    assert len(await devices_of(api, ada)) == 2

    # The phone changes hands: the token moves to the one who registers it now.
    moved = await register(api, bob, "apns", token)
    assert moved.status_code == 200 and moved.json()["id"] == created["id"]
    assert [d["id"] for d in await devices_of(api, ada)] == [android]
    assert [d["id"] for d in await devices_of(api, bob)] == [created["id"]]

    gone = await api.delete(f"{API}/devices/{android}", headers=ada.headers)
    assert gone.status_code == 204
    assert await devices_of(api, ada) == []
    assert (await api.delete(f"{API}/devices/{android}", headers=ada.headers)).status_code == 404
    assert (await api.get(f"{API}/devices")).status_code == 401
    assert (await api.post(f"{API}/devices", json={"platform": "apns", "token": token})).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code", "key"),
    [
        ({"platform": "apns", "token": "ab" * 31 + "\u0000z"}, 422, "validation_failed", "token"),
        ({"platform": "fcm", "token": "a" * 5000}, 422, "validation_failed", "token"),
        ({"platform": "webpush", "token": "a" * 64}, 422, "validation_failed", "platform"),
        ({"platform": "fcm", "token": "a" * 64, "locale": "en US"}, 422, "validation_failed", "locale"),
        ({"platform": "fcm", "token": "a" * 64, "app_version": "1.0\n"}, 422, "validation_failed", "app_version"),
        ({"platform": "fcm", "token": "has spaces " * 5}, 422, "validation_failed", "token"),
        ({"platform": "fcm", "token": "a" * 64 + "\n"}, 422, "validation_failed", "token"),
        ({"platform": "fcm", "token": "a" * 64, "extra": 1}, 422, "validation_failed", None),
        ({"platform": "apns", "token": "z" * 64, "app_id": BUNDLE}, 422, "invalid_device_token", "token"),
        ({"platform": "apns", "token": "ab" * 32}, 422, "app_id_required", "app_id"),
        ({"platform": "apns", "token": "ab" * 32, "app_id": "com.other.app"}, 422, "unknown_app_id", "app_id"),
        ({"platform": "fcm", "token": "a" * 64, "environment": "sandbox"}, 422, "invalid_environment", "environment"),
    ],
)
async def test_bad_device_input_is_a_problem(
    api: httpx.AsyncClient, people: Community, body: dict[str, Any], status: int, code: str, key: str | None
) -> None:
    ada = await people.user("ada@example.com")
    response = await api.post(f"{API}/devices", json=body, headers=ada.headers)  # NUL travels as \\u0000
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == code
    if key is not None:
        assert key in {error["key"] for error in problem["errors"]}
    assert await PushDevice.count() == 0


async def test_a_raw_nul_byte_or_broken_json_is_a_400(api: httpx.AsyncClient, people: Community) -> None:
    ada = await people.user("ada@example.com")
    for raw in (b'{"platform": "fcm", "token": "abc\x00def"}', b'{"platform": "fcm", "token": '):
        response = await api.post(
            f"{API}/devices", content=raw, headers={**ada.headers, "content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "bad_request"


async def test_a_user_keeps_at_most_the_device_cap(settings: Settings, app: Litestar, mailbox: SmtpSink) -> None:
    capped = configured(settings, None, None, push_max_devices_per_user=3)
    async for http in serve_in_process(capped):
        ada = await Community(http, mailbox, None).user("ada@example.com")
        ids = [await device(http, ada, "fcm", fcm_token()) for _ in range(5)]
        assert [d["id"] for d in await devices_of(http, ada)] == ids[:1:-1]  # the three latest


# -- every trigger, through both services -----------------------------------------------------


async def test_every_trigger_pushes_through_apns_and_fcm(
    api: httpx.AsyncClient, people: Community, apns: ApnsStandin, fcm: FcmStandin, run_push_jobs: RunJobs
) -> None:
    mentor, lounge = await room(people, api)
    ada = await people.user("ada@example.com")
    await User.update({User.full_name: "Ada Lovelace"}).where(User.id == uuid.UUID(ada.id))
    iphone, android = apns_token(), fcm_token()
    await device(api, ada, "apns", iphone)
    await device(api, ada, "fcm", android)
    assert (await people.join(ada, lounge)).status_code == 200
    await run_push_jobs()
    forget(apns, fcm)

    # A lounge message.
    message = await post(people, mentor, lounge, "Stretch for five minutes, then write one goal.")
    await run_push_jobs()
    [ios] = apns.delivered(iphone)
    assert ios.http_version == "2"
    assert ios.headers["apns-topic"] == BUNDLE and ios.headers["apns-push-type"] == "alert"
    assert ios.headers["apns-collapse-id"] == lounge["channel"] and ios.headers["apns-priority"] == "10"
    assert ios.body["aps"]["alert"] == {
        "title": "Grace Hopper in Morning focus",
        "body": "Stretch for five minutes, then write one goal.",
    }
    assert ios.body["aps"]["badge"] == 0 and ios.body["aps"]["thread-id"] == lounge["channel"]
    assert ios.body["lounges"] == {
        "kind": "lounge.message",
        "lounge_id": lounge["id"],
        "channel": lounge["channel"],
        "offset": message["offset"],
        "message_id": message["id"],
    }
    [droid] = fcm.delivered(android)
    sent = droid.body["message"]
    assert sent["notification"] == ios.body["aps"]["alert"]
    assert sent["data"] == {key: str(value) for key, value in ios.body["lounges"].items()}
    assert sent["android"]["collapse_key"] == lounge["channel"] and sent["android"]["priority"] == "HIGH"
    assert sent["android"]["notification"] == {"tag": lounge["channel"], "notification_count": 0}
    assert sent["apns"]["headers"]["apns-collapse-id"] == lounge["channel"]
    assert fcm.token_requests == 1  # one OAuth2 token for the whole run

    # A mention: the mention's push (with the notification's id and the badge), not also the message's.
    forget(apns, fcm)
    await post(people, mentor, lounge, f"Nice work @[Ada Lovelace]({ada.id})!")
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == fcm_kinds(fcm, android) == ["lounge.mention"]
    [ios] = apns.delivered(iphone)
    assert ios.body["aps"]["alert"] == {
        "title": "Grace Hopper mentioned you in Morning focus",
        "body": "Nice work @Ada Lovelace!",
    }
    assert ios.body["aps"]["badge"] == 1 and ios.body["lounges"]["notification_id"]
    assert ios.headers["apns-collapse-id"] == lounge["channel"]

    # The coach's reply in Ada's own thread.
    forget(apns, fcm)
    thread = (await api.post(f"{API}/chat/threads", json={}, headers=ada.headers)).json()
    asked = await people.post(ada, f"{API}/chat/threads/{thread['id']}", "How do I keep focus?")
    assert asked.status_code == 201, asked.text
    await run_push_jobs()  # the reply is generated, then pushed
    assert apns_kinds(apns, iphone) == fcm_kinds(fcm, android) == ["thread.coach_reply"]
    [ios] = apns.delivered(iphone)
    assert ios.headers["apns-collapse-id"] == thread["channel"]
    assert ios.body["aps"]["alert"]["title"] == "Your coach replied" and ios.body["aps"]["alert"]["body"]
    assert ios.body["lounges"]["thread_id"] == thread["id"] and ios.body["lounges"]["channel"] == thread["channel"]

    # A time capsule unlocks.
    forget(apns, fcm)
    unlock_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    capsule = (
        await api.post(
            f"{API}/capsules", json={"title": "To me", "content": "Hi", "unlock_at": unlock_at}, headers=ada.headers
        )
    ).json()
    await TimeCapsule.update({TimeCapsule.unlock_at: datetime.now(UTC) - timedelta(seconds=1)}).where(
        TimeCapsule.id == uuid.UUID(capsule["id"])
    )
    assert (await api.post(f"{API}/capsules/{capsule['id']}/unlock", headers=ada.headers)).status_code == 200
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == fcm_kinds(fcm, android) == ["capsule.unlocked"]
    [ios] = apns.delivered(iphone)
    assert ios.headers["apns-collapse-id"] == f"capsule:{capsule['id']}"
    assert ios.body["lounges"]["capsule_id"] == capsule["id"] and "title" not in ios.body["lounges"]

    # Membership decisions: an invitation, a request approved, a request declined.
    forget(apns, fcm)
    owner, private = await room(people, api, access="private")
    headers = owner.headers
    invited = await api.post(f"{API}/lounges/{private['id']}/members", json={"user_id": ada.id}, headers=headers)
    assert invited.status_code == 201, invited.text
    asker, declined = await people.user("asker@example.com"), await people.user("declined@example.com")
    asker_phone, declined_phone = apns_token(), fcm_token()
    await device(api, asker, "apns", asker_phone)
    await device(api, declined, "fcm", declined_phone)
    assert (await people.join(asker, private)).json()["status"] == "requested"
    assert (await people.join(declined, private)).json()["status"] == "requested"
    approved = await api.post(f"{API}/lounges/{private['id']}/members", json={"user_id": asker.id}, headers=headers)
    assert approved.status_code == 201, approved.text
    refused = await api.delete(f"{API}/lounges/{private['id']}/members/{declined.id}", headers=headers)
    assert refused.status_code == 204, refused.text
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == fcm_kinds(fcm, android) == ["lounge.invite"]
    assert apns_kinds(apns, asker_phone) == ["lounge.request_approved"]
    assert fcm_kinds(fcm, declined_phone) == ["lounge.request_declined"]
    [declined_push] = fcm.delivered(declined_phone)
    assert declined_push.body["message"]["notification"]["title"] == "Your request to join Morning focus was declined"

    # Everything was logged, ids only.
    logged = await pushes_of(api, ada)
    assert {p["status"] for p in logged} == {"sent"}
    assert sorted({p["kind"] for p in logged}) == sorted(
        {"lounge.message", "lounge.mention", "thread.coach_reply", "capsule.unlocked", "lounge.invite"}
    )
    assert len(logged) == 10 and not any("Stretch" in json.dumps(p) for p in logged)


# -- when not to push --------------------------------------------------------------------------


async def test_nothing_is_pushed_while_a_socket_is_connected_on_another_node(
    api: httpx.AsyncClient,
    people: Community,
    apns: ApnsStandin,
    fcm: FcmStandin,
    run_push_jobs: RunJobs,
    settings: Settings,
    state: AppState,
) -> None:
    mentor, lounge = await room(people, api)
    ada = await people.user("ada@example.com")
    iphone = apns_token()
    await device(api, ada, "apns", iphone)
    assert (await people.join(ada, lounge)).status_code == 200
    uid, prefix = uuid.UUID(ada.id), settings.redis_prefix
    node = await WebNode(settings, DRAIN_SECONDS="0").start()  # another process: "node B"
    socket, events = sdk_client(node.ws_url, ada.access_token)
    try:
        await socket.connect()
        await socket.ready()
        async with asyncio.timeout(2):  # what the worker reads (written beside the connect)
            while await online_users(state.redis, prefix, [uid]) != {uid}:
                await asyncio.sleep(0.02)
        await post(people, mentor, lounge, "Are you there?")
        await post(people, mentor, lounge, f"@[Ada]({ada.id}) look")
        await run_push_jobs()
        await events.wait_for(lambda e: any(p.get("type") == "notification" for p in e.personal))
        assert apns.delivered(iphone) == []  # the socket got it live instead
        assert await pushes_of(api, ada) == []
        await socket.disconnect()  # the node leaves the record at once (not only when it lapses)
        async with asyncio.timeout(5):
            while await online_users(state.redis, prefix, [uid]):
                await asyncio.sleep(0.05)
    finally:
        await socket.disconnect()
        await node.stop()
    await post(people, mentor, lounge, "Now you are away")
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == ["lounge.message"]


async def test_preferences_mute_a_lounge_or_a_kind_and_private_previews_carry_no_text(
    api: httpx.AsyncClient, people: Community, apns: ApnsStandin, fcm: FcmStandin, run_push_jobs: RunJobs
) -> None:
    mentor, lounge = await room(people, api)
    other = await people.lounge(mentor, title="Evening review")
    ada = await people.user("ada@example.com")
    iphone, android = apns_token(), fcm_token()
    await device(api, ada, "apns", iphone)
    await device(api, ada, "fcm", android)
    for room_ in (lounge, other):
        assert (await people.join(ada, room_)).status_code == 200

    # A muted lounge: no message pushes from it (a mention still comes), the other lounge pushes.
    await set_prefs(api, ada, {f"mute:{lounge['id']}": True})
    await post(people, mentor, lounge, "Quiet in here")
    await post(people, mentor, other, "Loud over here")
    await run_push_jobs()
    assert [r.body["lounges"]["lounge_id"] for r in apns.delivered(iphone)] == [other["id"]]
    await post(people, mentor, lounge, f"@[Ada]({ada.id}) a question for you")
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == ["lounge.message", "lounge.mention"]

    # One kind off, then everything off.
    forget(apns, fcm)
    await set_prefs(api, ada, {"push:lounge.message": False})
    await post(people, mentor, other, "Not pushed")
    await post(people, mentor, other, f"@[Ada]({ada.id}) but this is")
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == fcm_kinds(fcm, android) == ["lounge.mention"]
    await set_prefs(api, ada, {"push": False})
    await post(people, mentor, other, f"@[Ada]({ada.id}) nothing at all")
    await run_push_jobs()
    assert apns_kinds(apns, iphone) == ["lounge.mention"]

    # Private previews: generic texts, no message text, no names, no lounge title.
    forget(apns, fcm)
    await set_prefs(api, ada, {"private_previews": True})
    secret = "My salary is 91000 and I hate my boss"
    await post(people, mentor, other, secret)
    await post(people, mentor, other, f"@[Ada]({ada.id}) {secret}")
    await run_push_jobs()
    assert sorted(apns_kinds(apns, iphone)) == sorted(fcm_kinds(fcm, android)) == ["lounge.mention", "lounge.message"]
    for sent in [*apns.delivered(iphone), *fcm.delivered(android)]:
        wire = json.dumps(sent.body)
        for leak in ("salary", "91000", "Grace", "Hopper", "Evening review"):
            assert leak not in wire, wire
    assert sorted(r.body["aps"]["alert"]["title"] for r in apns.delivered(iphone)) == [
        "New message",
        "You were mentioned",
    ]
    assert [p["private"] for p in (await pushes_of(api, ada))[:4]] == [True] * 4  # newest first


# -- dead tokens, the rate cap, retries --------------------------------------------------------


async def test_dead_tokens_are_pruned_and_the_log_shows_it_to_the_user_and_admins(
    api: httpx.AsyncClient, people: Community, apns: ApnsStandin, fcm: FcmStandin, run_push_jobs: RunJobs
) -> None:
    mentor, lounge = await room(people, api)
    ada = await people.user("ada@example.com")
    gone, bad, unregistered, alive = apns_token(), apns_token(), fcm_token(), fcm_token()
    ids = {
        token: await device(api, ada, platform, token)
        for platform, token in [("apns", gone), ("apns", bad), ("fcm", unregistered), ("fcm", alive)]
    }
    apns.unregistered.add(gone)
    apns.bad_tokens.add(bad)
    fcm.unregistered.add(unregistered)
    assert (await people.join(ada, lounge)).status_code == 200
    await post(people, mentor, lounge, "Hello everyone")
    await run_push_jobs()

    assert [d["id"] for d in await devices_of(api, ada)] == [ids[alive]]
    assert await PushDevice.count() == 1
    outcomes = {(p["device_id"], p["status"], p["reason"], p["status_code"]) for p in await pushes_of(api, ada)}
    assert outcomes == {
        (None, "pruned", "Unregistered", 410),  # the device row is gone; its log row stays
        (None, "pruned", "BadDeviceToken", 400),
        (None, "pruned", "UNREGISTERED", 404),
        (ids[alive], "sent", "", 200),
    }
    logged = await pushes_of(api, ada)
    assert {p["token_hint"] for p in logged} == {t[-8:] for t in (gone, bad, unregistered, alive)}

    admin = await people.user("admin@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(admin.id))
    seen = await api.get(f"{API}/admin/users/{ada.id}/pushes", headers=admin.headers)
    assert seen.status_code == 200 and seen.json()["items"] == logged
    assert (await api.get(f"{API}/admin/users/{ada.id}/pushes", headers=ada.headers)).status_code == 403
    missing = await api.get(f"{API}/admin/users/{uuid.uuid4()}/pushes", headers=admin.headers)
    assert missing.status_code == 404 and missing.json()["code"] == "user_not_found"

    # Pruned for good: the next message reaches the live device only.
    forget(apns, fcm)
    await post(people, mentor, lounge, "Second")
    await run_push_jobs()
    assert apns.received == [] and fcm_kinds(fcm, alive) == ["lounge.message"]


async def test_the_per_device_rate_cap_drops_and_logs_the_excess(
    settings: Settings,
    apns: ApnsStandin,
    fcm: FcmStandin,
    api: httpx.AsyncClient,
    people: Community,
) -> None:
    capped = configured(settings, apns, fcm, push_max_per_device_per_minute=3)
    mentor, lounge = await room(people, api)
    ada = await people.user("ada@example.com")
    iphone = apns_token()
    await device(api, ada, "apns", iphone)
    assert (await people.join(ada, lounge)).status_code == 200
    for index in range(5):
        await post(people, mentor, lounge, f"Message {index}")
    await run_worker_until_idle(capped)
    assert len(apns.delivered(iphone)) == 3
    statuses = sorted(p["status"] for p in await pushes_of(api, ada))
    assert statuses == ["rate_limited", "rate_limited", "sent", "sent", "sent"]


async def test_a_transient_failure_is_retried_with_backoff_for_that_device_only(
    api: httpx.AsyncClient, people: Community, apns: ApnsStandin, fcm: FcmStandin, run_push_jobs: RunJobs
) -> None:
    mentor, lounge = await room(people, api)
    ada = await people.user("ada@example.com")
    flaky, steady = apns_token(), fcm_token()
    await device(api, ada, "apns", flaky)
    await device(api, ada, "fcm", steady)
    apns.fail_times[flaky] = 1  # one 503, then fine
    fcm.revoke_access_tokens(and_the_next=1)  # FCM refuses the worker's first access token: renewed, sent
    assert (await people.join(ada, lounge)).status_code == 200
    await post(people, mentor, lounge, "Keep going")
    await run_push_jobs()  # the retry is deferred ~5 s; the burst worker waits for it
    assert [r.status for r in apns.received] == [503, 200]
    assert len(fcm.delivered(steady)) == 1  # not pushed twice
    assert [r.status for r in fcm.received] == [401, 200] and fcm.token_requests == 2
    logged = sorted((p["platform"], p["attempt"], p["status"]) for p in await pushes_of(api, ada))
    assert logged == [("apns", 1, "retrying"), ("apns", 2, "sent"), ("fcm", 1, "sent")]


# -- devices end with their session, the account, and appear in the export ---------------------


async def test_signing_out_revoking_sessions_and_erasure_remove_devices(
    api: httpx.AsyncClient, people: Community, run_push_jobs: RunJobs, apns: ApnsStandin
) -> None:
    ada = await people.user("ada@example.com")
    second = await login(api, ada.email)
    third = await login(api, ada.email)
    as_second = {"Authorization": f"Bearer {second['access_token']}"}
    as_third = {"Authorization": f"Bearer {third['access_token']}"}
    first_id = await device(api, ada, "apns", apns_token())
    second_token = fcm_token()
    second_id = (
        await api.post(f"{API}/devices", json={"platform": "fcm", "token": second_token}, headers=as_second)
    ).json()["id"]
    third_id = (
        await api.post(f"{API}/devices", json={"platform": "fcm", "token": fcm_token()}, headers=as_third)
    ).json()["id"]
    assert {d["id"] for d in await devices_of(api, ada)} == {first_id, second_id, third_id}

    assert (await api.post(f"{API}/auth/logout", headers=ada.headers)).status_code == 204
    listed = (await api.get(f"{API}/devices", headers=as_second)).json()["items"]
    assert {d["id"] for d in listed} == {second_id, third_id}
    assert [d["current"] for d in listed if d["id"] == second_id] == [True]

    changed = await api.patch(
        f"{API}/users/me/password",
        json={"current_password": ada.password, "new_password": "another long passphrase 42"},
        headers=as_second,
    )
    assert changed.status_code in (200, 204), changed.text  # ends every other session
    assert [d["id"] for d in (await api.get(f"{API}/devices", headers=as_second)).json()["items"]] == [second_id]

    # The export lists the device without its token.
    uid = uuid.UUID(ada.id)
    await PushLog.insert(
        PushLog(
            user=uid,
            platform="fcm",
            token_hint=second_token[-8:],
            kind="lounge.message",
            collapse_id="lounge:x",
            status="sent",
            reason="",
            data={"channel": "lounge:x"},
            provider_id="projects/p/messages/1",
        )
    )
    archive = b"".join([piece async for piece in export_chunks(uid)])
    exported = json.loads(archive)
    [row] = exported["push_devices"]
    assert row["id"] == second_id and row["token_hint"] == second_token[-8:] and "token" not in row
    assert second_token.encode() not in archive
    assert [p["kind"] for p in exported["push_log"]] == ["lounge.message"]

    deleted = await api.request(
        "DELETE", f"{API}/users/me", json={"password": "another long passphrase 42"}, headers=as_second
    )
    assert deleted.status_code == 202, deleted.text
    await run_push_jobs()  # the erasure
    assert await PushDevice.count().where(PushDevice.user == uid) == 0
    assert await PushLog.count().where(PushLog.user == uid) == 0


# -- without keys ------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_without_keys_devices_register_and_nothing_is_queued(
    client: httpx.AsyncClient, community: Community, settings: Settings, state: AppState, run_jobs: RunJobs
) -> None:
    assert not settings.push_configured
    mentor = await community.mentor("mentor@example.com")
    lounge = await community.lounge(mentor)
    ada = await community.user("ada@example.com")
    assert (await register(client, ada, "apns", apns_token())).status_code == 201
    assert (await community.join(ada, lounge)).status_code == 200
    response = await community.post(mentor, f"{API}/lounges/{lounge['id']}", f"@[Ada]({ada.id}) hi")
    assert response.status_code == 201
    queued = {job.function for job in await state.redis.queued_jobs()}
    assert not {name for name in queued if name.startswith("push_")}, queued
    await run_jobs()
    assert await PushLog.count() == 0


async def test_a_device_whose_service_is_not_configured_is_skipped_and_logged_once_per_job(
    settings: Settings,
    app: Litestar,
    mailbox: SmtpSink,
    fcm: FcmStandin,
) -> None:
    only_fcm = configured(settings, None, fcm)
    async for http in serve_in_process(only_fcm):
        people = Community(http, mailbox, lambda: run_worker_until_idle(only_fcm))
        mentor, lounge = await room(people, http)
        ada = await people.user("ada@example.com")
        await device(http, ada, "apns", apns_token())
        await device(http, ada, "apns", apns_token(), app_id=BUNDLE)
        android = fcm_token()
        await device(http, ada, "fcm", android)
        assert (await people.join(ada, lounge)).status_code == 200
        await post(people, mentor, lounge, "Hello")
        records = Records()
        logging.getLogger("lounges.push").addHandler(records)  # create_app replaced the root's handlers
        try:
            await run_worker_until_idle(only_fcm)
        finally:
            logging.getLogger("lounges.push").removeHandler(records)
        assert [r.getMessage() for r in records.records] == ["push skipped: service not configured"]
        assert fcm_kinds(fcm, android) == ["lounge.message"]
        statuses = sorted((p["platform"], p["status"], p["reason"]) for p in await pushes_of(http, ada))
        assert statuses == [
            ("apns", "skipped", "apns_not_configured"),
            ("apns", "skipped", "apns_not_configured"),
            ("fcm", "sent", ""),
        ]


async def test_the_daily_job_prunes_the_old_log_and_devices_of_expired_sessions(
    api: httpx.AsyncClient, people: Community, push_settings: Settings, state: AppState
) -> None:
    ada = await people.user("ada@example.com")
    kept = await device(api, ada, "fcm", fcm_token())
    later = await login(api, ada.email)
    expired = (
        await api.post(
            f"{API}/devices",
            json={"platform": "fcm", "token": fcm_token()},
            headers={"Authorization": f"Bearer {later['access_token']}"},
        )
    ).json()["id"]
    await UserSession.update({UserSession.expires_at: datetime.now(UTC) - timedelta(minutes=1)}).where(
        UserSession.id
        == (await PushDevice.select(PushDevice.session).where(PushDevice.id == uuid.UUID(expired)).first())["session"]
    )
    uid = uuid.UUID(ada.id)
    for age in (31, 1):
        await PushLog.insert(
            PushLog(
                user=uid,
                platform="fcm",
                token_hint="abcdefgh",
                kind="lounge.message",
                collapse_id="lounge:x",
                status="sent",
                reason="",
                provider_id="",
                created_at=datetime.now(UTC) - timedelta(days=age),
            )
        )
    assert await prune_push_data(state) == (1, 1)
    assert [str(row["id"]) for row in await PushDevice.select(PushDevice.id)] == [kept]
    assert await PushLog.count() == 1
