"""The realtime gateway's protocol contract (DESIGN §2) against a real web process:
access control, revocation, protocol errors as frames, bounded queues, dead peers,
token refresh, presence, RPC and the personal channel.

Two clients are used: the official centrifuge-python SDK (what apps run) and a raw
``websockets`` client (tests/support/rawws.py) for frames no SDK would send.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from centrifuge import Client, ClientState, ReplyError, ServerSubscribedContext, Subscription, SubscriptionState

from server.domain.tables.accounts import Role, User, UserSession
from server.foundation.settings import Settings
from server.streams.broker import broadcast_ephemeral
from tests.support.accounts import PASSWORD, Account, login
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.rawws import RawClient
from tests.support.sdk import ClientRecorder, Recorder, decoded, payload, sdk_client, subscription

pytestmark = pytest.mark.usefixtures("encoding")  # every test runs on both socket encodings

# The shared node runs with small limits so the limit paths are cheap to reach.
MAX_FRAME = 4096
MAX_SUBSCRIPTIONS = 3
SHARED_NODE_ENV = {
    "WS_MAX_FRAME_BYTES": str(MAX_FRAME),
    "WS_MAX_SUBSCRIPTIONS": str(MAX_SUBSCRIPTIONS),
    "PUBLISH_RATE_LIMIT": "100000/1",
    "DRAIN_SECONDS": "0",
}


@pytest.fixture(scope="module")
async def node(settings: Settings) -> AsyncIterator[WebNode]:
    """One web process for the module (it keeps no state between tests: every test
    closes its sockets, and the ``app`` fixture empties the database and Redis)."""
    web = await WebNode(settings, **SHARED_NODE_ENV).start()
    yield web
    await web.stop()


@asynccontextmanager
async def dedicated_node(settings: Settings, ws_protocol: str = "gateway", **env: str) -> AsyncIterator[WebNode]:
    """A web process of the test's own, with its own settings."""
    web = WebNode(settings, ws_protocol, DRAIN_SECONDS="0", **env)
    try:
        yield await web.start()
    finally:
        await web.stop()


@asynccontextmanager
async def sdk(url: str, token: str, **options: Any) -> AsyncIterator[tuple[Client, ClientRecorder]]:
    """An SDK client, connected; disconnected on exit."""
    client, events = sdk_client(url, token, **options)
    await client.connect()
    try:
        await client.ready(timeout=10)
        yield client, events
    finally:
        await client.disconnect()


@asynccontextmanager
async def raw(url: str, token: str | None = None, **options: Any) -> AsyncIterator[RawClient]:
    """A raw client (protocol-connected when a token is given); closed on exit."""
    client = await RawClient.open(url, **options)
    try:
        if token is not None:
            await client.connect(token)
        yield client
    finally:
        await client.close()


def message(text: str = "hello") -> dict[str, Any]:
    return {"text": text, "client_id": str(uuid.uuid4())}


def ids_of(account: Account) -> tuple[str, str]:
    """(user id, session id) of the account's access token."""
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    return claims["sub"], claims["sid"]


def forge_token(settings: Settings, account: Account, *, expires_in: int) -> str:
    """An access token of the account's session, signed with the deployment's key,
    expiring ``expires_in`` seconds from now (negative: already expired)."""
    user_id, session_id = ids_of(account)
    now = int(time.time())
    kid, _, secret = settings.jwt_keys[0].partition(":")
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": user_id,
        "sid": session_id,
        "iat": min(now, now + expires_in - 1),
        "exp": now + expires_in,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def error_code(reply: dict[str, Any]) -> int | None:
    return reply.get("error", {}).get("code")


async def new_thread(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    response = await client.post("/api/v1/chat/threads", json={}, headers=account.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def another_session(community: Community, account: Account) -> Account:
    """The same user signed in once more (another device: another session)."""
    tokens = await login(community.client, account.email, account.password)
    return Account(account.id, account.email, account.password, tokens["access_token"], tokens["refresh_token"])


async def lounge_with_member(community: Community, **fields: Any) -> tuple[Account, Account, dict[str, Any]]:
    mentor = await community.mentor(f"mentor-{uuid.uuid4().hex[:8]}@example.com")
    lounge = await community.lounge(mentor, **fields)
    member = await community.user(f"member-{uuid.uuid4().hex[:8]}@example.com")
    response = await community.join(member, lounge)
    assert response.status_code == 200, response.text
    return mentor, member, lounge


# -- access ------------------------------------------------------------------------------


async def test_non_member_cannot_subscribe_or_publish_into_a_private_lounge(
    node: WebNode, community: Community
) -> None:
    mentor = await community.mentor("private-mentor@example.com")
    lounge = await community.lounge(mentor, access="private")
    stranger = await community.user("private-stranger@example.com")

    async with raw(node.ws_url, stranger.access_token) as sock:
        refused = await sock.call("subscribe", {"channel": lounge["channel"]})
        assert error_code(refused) in (102, 103), refused
        published = await sock.call("publish", {"channel": lounge["channel"], "data": message("let me in")})
        assert error_code(published) in (102, 103), published
        unknown = await sock.call("subscribe", {"channel": f"lounge:{uuid.uuid4()}"})
        assert error_code(unknown) == 102, unknown
        for name in ("nonsense", "lounge:not-a-uuid", f"user#{ids_of(mentor)[0]}", f"room:{uuid.uuid4()}"):
            assert error_code(await sock.call("subscribe", {"channel": name})) == 102, name
        assert error_code(await sock.call("presence_stats", {"channel": lounge["channel"]})) in (102, 103)
        assert error_code(await sock.call("history", {"channel": lounge["channel"], "limit": 5})) in (102, 103)
        # Every refusal was an error reply; the socket stayed open throughout.

    # Nothing was stored by the refused publish.
    page = await community.client.get(f"/api/v1/lounges/{lounge['id']}/messages", headers=mentor.headers)
    assert page.status_code == 200 and page.json()["items"] == []
    # The mentor, a member, may subscribe.
    async with raw(node.ws_url, mentor.access_token) as sock:
        assert "subscribe" in await sock.call("subscribe", {"channel": lounge["channel"]})


async def test_a_thread_is_its_owner_s_only(node: WebNode, community: Community) -> None:
    owner = await community.user("thread-owner@example.com")
    other = await community.user("thread-other@example.com")
    thread = await new_thread(community.client, owner)
    channel = thread["channel"]
    assert channel == f"thread:{thread['id']}"

    async with raw(node.ws_url, other.access_token) as intruder:
        assert error_code(await intruder.call("subscribe", {"channel": channel})) in (102, 103)
        assert error_code(await intruder.call("publish", {"channel": channel, "data": message("hi")})) in (102, 103)
        assert error_code(await intruder.call("history", {"channel": channel, "limit": 10})) in (102, 103)
        assert error_code(await intruder.call("presence", {"channel": channel})) in (102, 103)

    # The owner's two devices both see what one of them posts.
    second = await another_session(community, owner)
    async with sdk(node.ws_url, owner.access_token) as (phone, _), sdk(node.ws_url, second.access_token) as (laptop, _):
        sub_phone, seen_phone = subscription(phone, channel)
        sub_laptop, seen_laptop = subscription(laptop, channel)
        await sub_phone.subscribe()
        await sub_laptop.subscribe()
        await sub_phone.ready(timeout=10)
        await sub_laptop.ready(timeout=10)
        await sub_phone.publish(payload(sub_phone, message("note to self")))
        await seen_laptop.wait_for(lambda r: r.stored == [1])
        await seen_phone.wait_for(lambda r: r.stored == [1])


async def test_public_lounge_must_be_joined_before_subscribing(node: WebNode, community: Community) -> None:
    mentor = await community.mentor("public-mentor@example.com")
    lounge = await community.lounge(mentor)
    assert lounge["access"] == "public"
    visitor = await community.user("public-visitor@example.com")
    channel = lounge["channel"]

    async with raw(node.ws_url, visitor.access_token) as sock:
        before = await sock.call("subscribe", {"channel": channel})
        assert error_code(before) == 103, before
        assert error_code(await sock.call("publish", {"channel": channel, "data": message("hi")})) == 103

        assert (await community.join(visitor, lounge)).status_code == 200
        after = await sock.call("subscribe", {"channel": channel})
        assert after["subscribe"]["offset"] == 0 and after["subscribe"]["recoverable"] is True, after
        assert (await sock.call("publish", {"channel": channel, "data": message("joined!")})).get("publish") == {}
        pub = await sock.push(lambda p: p["channel"] == channel and "pub" in p)
        assert pub["pub"]["offset"] == 1
        assert pub["pub"]["data"]["message"]["text"] == "joined!"
        assert pub["pub"]["data"]["message"]["sender"]["id"] == visitor.id


# -- revocation --------------------------------------------------------------------------


async def test_logout_disconnects_the_session_s_sockets(node: WebNode, community: Community) -> None:
    user = await community.user("logout@example.com")
    other_device = await another_session(community, user)
    async with (
        sdk(node.ws_url, user.access_token) as (client, events),
        sdk(node.ws_url, other_device.access_token) as (other, other_events),
    ):
        started = time.monotonic()
        response = await community.client.post("/api/v1/auth/logout", headers=user.headers)
        assert response.status_code == 204, response.text
        await events.wait_for(lambda e: e.disconnected, timeout=5)
        assert events.disconnected[0].code == 3500, events.disconnected
        assert time.monotonic() - started < 5
        assert client.state == ClientState.DISCONNECTED  # 3500: the SDK does not reconnect
        # Another session of the same user is not affected.
        await asyncio.sleep(0.5)
        assert other.state == ClientState.CONNECTED and not other_events.disconnected


async def test_member_removed_by_the_mentor_is_unsubscribed_and_cannot_publish(
    node: WebNode, community: Community
) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with (
        sdk(node.ws_url, member.access_token) as (client, events),
        sdk(node.ws_url, mentor.access_token) as (staff, _),
    ):
        (sub, seen), (staff_sub, staff_seen) = await both_subscribed(client, staff, channel)
        response = await community.client.delete(
            f"/api/v1/lounges/{lounge['id']}/members/{member.id}", headers=mentor.headers
        )
        assert response.status_code == 204, response.text
        await assert_channel_taken_away(client, events, sub, seen, staff_sub, staff_seen)


async def both_subscribed(
    client: Client, other: Client, channel: str
) -> tuple[tuple[Subscription, Recorder], tuple[Subscription, Recorder]]:
    """``client`` and ``other`` subscribed to ``channel``; ``other`` posted one message both saw."""
    sub, seen = subscription(client, channel)
    other_sub, other_seen = subscription(other, channel)
    for s in (sub, other_sub):
        await s.subscribe()
        await s.ready(timeout=10)
    await other_sub.publish(payload(other_sub, message("before")))
    for recorder in (seen, other_seen):
        await recorder.wait_for(lambda r: r.stored == [1])
    return (sub, seen), (other_sub, other_seen)


async def assert_channel_taken_away(
    client: Client,
    events: ClientRecorder,
    sub: Subscription,
    seen: Recorder,
    other_sub: Subscription,
    other_seen: Recorder,
) -> None:
    """The server took the channel away from ``client`` (unsubscribed with code 2000): nothing
    more is delivered to it, it cannot post or look back in, and its socket stays connected."""
    await seen.wait_for(lambda r: r.unsubscribed, timeout=5)
    assert seen.unsubscribed[0].code == 2000, seen.unsubscribed
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    channel = sub.channel
    with pytest.raises(ReplyError) as refused:
        await client.publish(channel, payload(client, message("after")))
    assert refused.value.code == 103, refused.value
    await other_sub.publish(payload(other_sub, message("the others only")))
    await other_seen.wait_for(lambda r: r.stored == [1, 2])
    await asyncio.sleep(0.3)
    assert seen.stored == [1]
    with pytest.raises(ReplyError) as again:
        await client.presence_stats(channel)
    assert again.value.code == 103
    assert client.state == ClientState.CONNECTED and not events.disconnected


async def test_demoted_admin_loses_what_only_the_role_allowed_on_open_sockets(
    node: WebNode, community: Community
) -> None:
    _mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    root = await community.user("root-admin@example.com")
    reader = await community.user("demoted-admin@example.com")
    await User.update({User.role: Role.admin}).where(User.id.is_in([uuid.UUID(root.id), uuid.UUID(reader.id)]))
    async with (
        sdk(node.ws_url, reader.access_token) as (client, events),
        sdk(node.ws_url, member.access_token) as (poster, _),
    ):
        # As an admin, the reader follows a lounge they never joined.
        (sub, seen), (member_sub, member_seen) = await both_subscribed(client, poster, channel)
        response = await community.client.patch(
            f"/api/v1/admin/users/{reader.id}/role", headers=root.headers, json={"role": "user"}
        )
        assert response.status_code == 200, response.text
        # The open socket (its token still valid) loses the lounge at once.
        await assert_channel_taken_away(client, events, sub, seen, member_sub, member_seen)


async def test_the_periodic_sweep_applies_what_a_missed_control_event_would_have(
    node: WebNode, community: Community
) -> None:
    """Changes written without an event (as if the node missed it) still reach open sockets
    by the node's sweep: a changed role within ~10 s, a revoked session too."""
    _mentor, _member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    reader = await community.user("swept-admin@example.com")
    revoked = await community.user("swept-session@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(reader.id))
    async with (
        sdk(node.ws_url, reader.access_token) as (client, events),
        sdk(node.ws_url, revoked.access_token) as (_doomed, doomed_events),
    ):
        sub, seen = subscription(client, channel)
        await sub.subscribe()
        await sub.ready(timeout=10)
        await User.update({User.role: Role.user}).where(User.id == uuid.UUID(reader.id))
        await UserSession.update({UserSession.revoked_at: datetime.now(UTC)}).where(
            UserSession.user == uuid.UUID(revoked.id)
        )
        await seen.wait_for(lambda r: r.unsubscribed, timeout=15)
        assert seen.unsubscribed[0].code == 2000, seen.unsubscribed
        await doomed_events.wait_for(lambda r: r.disconnected, timeout=15)
        assert doomed_events.disconnected[0].code == 3500, doomed_events.disconnected
        assert client.state == ClientState.CONNECTED and not events.disconnected


async def test_deleted_account_is_disconnected(node: WebNode, community: Community) -> None:
    user = await community.user("leaving@example.com")
    async with sdk(node.ws_url, user.access_token) as (client, events):
        response = await community.client.request(
            "DELETE", "/api/v1/users/me", json={"password": PASSWORD}, headers=user.headers
        )
        assert response.status_code == 202, response.text
        await events.wait_for(lambda e: e.disconnected, timeout=5)
        assert events.disconnected[0].code == 3503, events.disconnected
        assert client.state == ClientState.DISCONNECTED
    # Reconnecting with the token is refused.
    async with raw(node.ws_url) as sock:
        await sock.send({"connect": {"token": user.access_token}})
        code, _ = await sock.closed()
        assert code == 3500


# -- protocol errors as frames -----------------------------------------------------------


async def test_malformed_lines_are_answered_with_107_and_the_socket_stays(
    node: WebNode, community: Community, encoding: str
) -> None:
    _, member, lounge = await lounge_with_member(community)
    async with raw(node.ws_url, member.access_token) as sock:
        if encoding == "json":
            await sock.send_raw("{this is not json")
            broken = await sock.next(lambda m: "error" in m)
            assert broken["error"]["code"] == 107 and broken.get("id", 0) == 0, broken
            # Valid JSON, wrong shape: the id is salvaged so the reply can be matched.
            await sock.send_raw('{"id": 41, "subscribe": "not an object"}')
            assert error_code(await sock.reply(41)) == 107
            await sock.send_raw('{"id": 42, "publish": {"channel": 7}}')
            assert error_code(await sock.reply(42)) == 107
        else:
            # Bytes that are no Command (a subscribe request cut short): the leading id is salvaged.
            await sock.send_raw(b"\x06\x08\x29\x2a\x02\xff\xff")
            assert error_code(await sock.reply(41)) == 107
            # An offset beyond the protocol's bounds (a uint64 past bigint).
            too_far = {"id": 42, "subscribe": {"channel": lounge["channel"], "recover": True, "offset": 2**64 - 1}}
            await sock.send(too_far)
            assert error_code(await sock.reply(42)) == 107
            # A length prefix running past the frame's end.
            await sock.send_raw(b"\x7f\x08\x2b")
            broken = await sock.next(lambda m: "error" in m)
            assert broken["error"]["code"] == 107 and broken.get("id", 0) == 0, broken
            # Publish data that is not a JSON document.
            await sock.send_raw(b"\x0f\x08\x2c\x3a\x0b\x0a\x01x\x12\x06\xff\x00\xfe\x01\x02\x03")
            assert error_code(await sock.reply(44)) == 107
        # A publish whose data is not a message.
        bad = await sock.call("publish", {"channel": lounge["channel"], "data": {"text": "no client id"}})
        assert error_code(bad) == 107, bad

        subscribed = await sock.call("subscribe", {"channel": lounge["channel"]})
        assert "subscribe" in subscribed, subscribed
        still = await sock.call("publish", {"channel": lounge["channel"], "data": message("still here")})
        assert still.get("publish") == {}, still


async def test_unknown_methods_are_answered_with_104(node: WebNode, community: Community) -> None:
    _, member, lounge = await lounge_with_member(community)
    async with raw(node.ws_url, member.access_token) as sock:
        unknown_rpc = await sock.call("rpc", {"method": "no.such.thing", "data": {}})
        assert error_code(unknown_rpc) == 104, unknown_rpc
        # A method the server does not implement.
        assert error_code(await sock.call("sub_refresh", {"channel": lounge["channel"], "token": "x"})) == 104
        # A command naming a method that does not exist in the protocol at all.
        [command_id] = await sock.send({"frobnicate": {"channel": lounge["channel"]}})
        try:
            reply = await sock.reply(command_id, timeout=3)
        except TimeoutError:
            raise AssertionError(
                "no reply to a command with an id and an unknown method (it was taken for a pong)"
            ) from None
        assert error_code(reply) == 104, reply
        assert "subscribe" in await sock.call("subscribe", {"channel": lounge["channel"]})


async def test_an_oversized_frame_is_refused_by_id(node: WebNode, community: Community) -> None:
    _, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with raw(node.ws_url, member.access_token) as sock:
        assert "subscribe" in await sock.call("subscribe", {"channel": channel})
        big = {"id": 77, "publish": {"channel": channel, "data": message("x" * (MAX_FRAME + 100))}}
        await sock.send(big)
        refused = await sock.reply(77)
        assert refused["error"]["code"] == 107 and "frame too large" in refused["error"]["message"], refused
        # Several commands in an oversized frame are each answered.
        first = {"id": 78, "presence_stats": {"channel": channel}}
        second = {"id": 79, "publish": {"channel": channel, "data": message("y" * MAX_FRAME)}}
        await sock.send(first, second)
        assert error_code(await sock.reply(78)) == 107
        assert error_code(await sock.reply(79)) == 107
        # Nothing was published and the socket is still usable.
        assert (await sock.call("publish", {"channel": channel, "data": message("small")})).get("publish") == {}
        pub = await sock.push(lambda p: "pub" in p)
        assert pub["pub"]["offset"] == 1 and pub["pub"]["data"]["message"]["text"] == "small"


async def test_a_command_before_connect_closes_with_3501(node: WebNode, community: Community) -> None:
    _, _, lounge = await lounge_with_member(community)
    async with raw(node.ws_url) as sock:
        await sock.send({"subscribe": {"channel": lounge["channel"]}})
        code, _ = await sock.closed()
        assert code == 3501
    async with raw(node.ws_url) as sock:
        await sock.send_raw("{garbage")
        code, _ = await sock.closed()
        assert code == 3501


async def test_a_bad_token_closes_with_3500(node: WebNode, community: Community) -> None:
    user = await community.user("bad-token@example.com")
    forged = jwt.encode(
        {"sub": user.id, "sid": ids_of(user)[1], "exp": int(time.time()) + 60},
        "not-the-deployment-key-not-the-deployment-key",
        algorithm="HS256",
    )
    for token in ("garbage", forged, ""):
        async with raw(node.ws_url) as sock:
            await sock.send({"connect": {"token": token}})
            code, _ = await sock.closed()
            assert code == 3500, token


async def test_an_expired_token_is_answered_with_109(node: WebNode, settings: Settings, community: Community) -> None:
    user = await community.user("expired@example.com")
    expired = forge_token(settings, user, expires_in=-60)
    async with raw(node.ws_url) as sock:
        [command_id] = await sock.send({"connect": {"token": expired}})
        reply = await sock.reply(command_id)
        assert error_code(reply) == 109, reply

    # The SDK's path: on 109 it asks the app for a new token and connects with it.
    fresh_calls: list[float] = []

    async def get_token() -> str:
        fresh_calls.append(time.monotonic())
        return user.access_token

    async with sdk(node.ws_url, expired, get_token=get_token) as (client, _):
        assert client.state == ClientState.CONNECTED
        assert len(fresh_calls) == 1


async def test_subscribing_twice_is_105_and_past_the_limit_is_106(node: WebNode, community: Community) -> None:
    user = await community.user("many-threads@example.com")
    threads = [await new_thread(community.client, user) for _ in range(MAX_SUBSCRIPTIONS + 1)]
    async with raw(node.ws_url, user.access_token) as sock:
        first = threads[0]["channel"]
        assert "subscribe" in await sock.call("subscribe", {"channel": first})
        assert error_code(await sock.call("subscribe", {"channel": first})) == 105
        personal = f"user#{user.id}"
        assert error_code(await sock.call("subscribe", {"channel": personal})) == 105
        for thread in threads[1:MAX_SUBSCRIPTIONS]:
            assert "subscribe" in await sock.call("subscribe", {"channel": thread["channel"]})
        over = await sock.call("subscribe", {"channel": threads[MAX_SUBSCRIPTIONS]["channel"]})
        assert error_code(over) == 106, over
        # Leaving one makes room again.
        assert "unsubscribe" in await sock.call("unsubscribe", {"channel": first})
        assert "subscribe" in await sock.call("subscribe", {"channel": threads[MAX_SUBSCRIPTIONS]["channel"]})


async def test_every_command_of_a_multi_command_frame_is_answered(node: WebNode, community: Community) -> None:
    _, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with raw(node.ws_url) as sock:
        # connect and subscribe in one frame, then five commands in the next.
        await sock.send(
            {"id": 1, "connect": {"token": member.access_token}}, {"id": 2, "subscribe": {"channel": channel}}
        )
        assert "connect" in await sock.reply(1)
        assert "subscribe" in await sock.reply(2)
        await sock.send(
            {"id": 3, "publish": {"channel": channel, "data": message("one")}},
            {"id": 4, "publish": {"channel": channel, "data": message("two")}},
            {"id": 5, "presence_stats": {"channel": channel}},
            {"id": 6, "rpc": {"method": "no.such.rpc", "data": {}}},
            {"id": 7, "history": {"channel": channel, "limit": 10}},
        )
        replies = {i: await sock.reply(i) for i in range(3, 8)}
        assert replies[3] == {"id": 3, "publish": {}} and replies[4] == {"id": 4, "publish": {}}
        assert replies[5]["presence_stats"] == {"num_clients": 1, "num_users": 1}
        assert error_code(replies[6]) == 104
        assert [p["offset"] for p in replies[7]["history"]["publications"]] == [1, 2]


# -- slow consumers and bounded memory ----------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("ws_protocol", ["gateway", "uvicorn"])
async def test_a_slow_consumer_is_disconnected_with_3008_and_memory_stays_bounded(
    settings: Settings, community: Community, ws_protocol: str
) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    stuck_user = await community.user("stuck@example.com")
    assert (await community.join(stuck_user, lounge)).status_code == 200
    channel = lounge["channel"]
    """A subscriber that stops reading while a lounge is flooded is disconnected as a slow
    consumer (3008) once WS_OUTBOUND_MAX_BYTES wait for it; the node's memory stays flat
    and the other subscribers get everything, in order. Both ways of writing frames: the
    gateway's own (the transport's buffer is the backlog) and ASGI sends (the queue is).

    The stuck client uses a small receive buffer and MSS so the kernels hold little for
    it (on loopback the MSS is ~64 KiB and the server's send buffer autotunes to MiBs)."""
    publishers, per_publisher, text = 4, 100, "flood " * 600  # 400 messages of ~3.9 kB: ~1.6 MB
    total = publishers * per_publisher

    async with dedicated_node(
        settings, ws_protocol, WS_OUTBOUND_MAX_BYTES="65536", PUBLISH_RATE_LIMIT="100000/1"
    ) as web:
        assert web.process is not None
        pid = web.process.pid
        async with (
            sdk(web.ws_url, member.access_token) as (healthy, healthy_events),
            raw(web.ws_url, stuck_user.access_token, rcvbuf=4096, mss=536, max_queue=1) as stuck,
        ):
            sub, seen = subscription(healthy, channel)
            await sub.subscribe()
            await sub.ready(timeout=10)
            assert "subscribe" in await stuck.call("subscribe", {"channel": channel})
            # From here on the stuck client reads nothing.
            before = rss_bytes(pid)
            peak = before
            stop = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, rss_bytes(pid))
                    await asyncio.sleep(0.05)

            async def publish_all(sock: RawClient) -> None:
                for _ in range(per_publisher):
                    reply = await sock.call("publish", {"channel": channel, "data": message(text)}, timeout=30)
                    assert reply.get("publish") == {}, reply

            sampler = asyncio.create_task(sample())
            flood_started = time.monotonic()
            socks = [await RawClient.open(web.ws_url) for _ in range(publishers)]
            try:
                for sock in socks:
                    await sock.connect(mentor.access_token)
                await asyncio.gather(*(publish_all(s) for s in socks))
                # The healthy subscriber got everything, in order.
                try:
                    await seen.wait_for(lambda r: len(r.stored) >= total, timeout=60)
                except TimeoutError:
                    raise AssertionError(
                        f"the healthy subscriber got {len(seen.stored)} of {total} publications"
                        f" (last {seen.stored[-3:]}); its transitions:"
                        f" {[(c.code, c.reason) for c in healthy_events.connecting]}"
                    ) from None
                flood_seconds = time.monotonic() - flood_started
                assert seen.stored == list(range(1, total + 1))
            finally:
                stop.set()
                await sampler
                for sock in socks:
                    await sock.close()
            after = rss_bytes(pid)
            growth = max(peak, after) - before
            print(
                f"\nflood: {total} publications ({total * len(text) / 1e6:.1f} MB) in {flood_seconds:.1f}s;"
                f" node RSS before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB"
            )
            assert growth < 50 * 2**20, f"node RSS grew by {growth / 2**20:.1f} MiB"

            # Now the stuck client reads: what was buffered, then the close frame.
            code, reason = await stuck.closed(timeout=30)
            received = [m for m in stuck.inbox if "push" in m and "pub" in m["push"]]
            print(f"stuck client: got {len(received)} of {total} publications, then close {code} {reason!r}")
            assert code == 3008, (code, reason)
            assert len(received) < total
            # The healthy subscriber is still connected.
            assert healthy.state == ClientState.CONNECTED


async def test_a_disconnected_slow_consumer_leaves_its_channels_even_if_it_never_reads_again(
    settings: Settings, community: Community
) -> None:
    """Once the server has given up on a slow consumer (3008), it is gone for everyone
    else: it leaves presence and its channels (a leave push), whether or not its peer
    ever reads again (a frozen app keeps its TCP connection open)."""
    mentor, _, lounge = await lounge_with_member(community)
    stuck_user = await community.user("frozen@example.com")
    assert (await community.join(stuck_user, lounge)).status_code == 200
    channel = lounge["channel"]
    async with (
        dedicated_node(settings, WS_OUTBOUND_MAX_BYTES="65536", PUBLISH_RATE_LIMIT="100000/1", PRESENCE_TTL="3") as web,
        sdk(web.ws_url, mentor.access_token) as (watcher, _),
        raw(web.ws_url, rcvbuf=4096, mss=536, max_queue=1) as stuck,
        raw(web.ws_url, mentor.access_token) as publisher,
    ):
        stuck_id = (await stuck.connect(stuck_user.access_token))["client"]
        assert "subscribe" in await stuck.call("subscribe", {"channel": channel})
        sub, seen = subscription(watcher, channel, join_leave=True)
        await sub.subscribe()
        await sub.ready(timeout=10)
        assert stuck_id in (await sub.presence()).clients
        # The stuck client reads nothing from here on; ~600 kB are sent its way.
        for _ in range(150):
            reply = await publisher.call("publish", {"channel": channel, "data": message("flood " * 600)})
            assert reply.get("publish") == {}, reply
        await seen.wait_for(lambda r: len(r.stored) == 150, timeout=30)
        try:
            await seen.wait_for(lambda r: any(leave.info.client == stuck_id for leave in r.leaves), timeout=6)
        except TimeoutError:
            present = stuck_id in (await sub.presence()).clients
            code, _ = await stuck.closed(timeout=20)  # read now: was it really given up on?
            raise AssertionError(
                f"the slow consumer was disconnected (close code {code} once it read again) but had not left"
                f" the channel in the 6 s before: no leave push, still in presence: {present}"
            ) from None
        assert stuck_id not in (await sub.presence()).clients
        # When it finally reads, it learns why.
        code, _ = await stuck.closed(timeout=20)
        assert code == 3008


async def test_a_subscriber_that_missed_more_than_the_outbound_limit_still_recovers(
    settings: Settings, community: Community
) -> None:
    """A client that was away while a lounge was busy comes back and recovers. The
    subscribe reply carries what it missed (up to RECOVERY_MAX_PUBLICATIONS): that one
    frame may be larger than WS_OUTBOUND_MAX_BYTES, which must not count as a slow
    consumer, or the client is disconnected again on every reconnect and never recovers."""
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    missed = 30  # ~120 kB of publications, twice the outbound limit below
    async with dedicated_node(settings, WS_OUTBOUND_MAX_BYTES="65536") as web:
        client, events = sdk_client(web.ws_url, member.access_token)
        await client.connect()
        try:
            await client.ready(timeout=10)
            sub, seen = subscription(client, channel)
            await sub.subscribe()
            await sub.ready(timeout=10)
            await client.disconnect()  # the phone goes into a tunnel
            for n in range(missed):
                response = await community.post(mentor, f"/api/v1/lounges/{lounge['id']}", f"{n} " + "busy " * 700)
                assert response.status_code == 201, response.text
            await client.connect()  # ... and comes out: the SDK resubscribes with recovery
            try:
                await seen.wait_for(lambda r: len(r.stored) >= missed, timeout=10)
            except TimeoutError:
                raise AssertionError(
                    f"recovered {len(seen.stored)} of {missed} publications; the client's transitions since:"
                    f" {[(c.code, c.reason) for c in events.connecting[2:]]}"
                ) from None
            assert seen.stored == list(range(1, missed + 1))
            assert seen.subscribed[-1].recovered is True
        finally:
            await client.disconnect()


async def test_a_history_page_larger_than_the_outbound_limit_is_delivered(
    settings: Settings, community: Community
) -> None:
    """The same for a ``history`` reply: one page (at most RECOVERY_MAX_PUBLICATIONS) may
    exceed WS_OUTBOUND_MAX_BYTES; a client that asks for it and reads is not slow."""
    mentor, member, lounge = await lounge_with_member(community)
    for n in range(30):  # ~120 kB
        response = await community.post(mentor, f"/api/v1/lounges/{lounge['id']}", f"{n} " + "busy " * 700)
        assert response.status_code == 201, response.text
    async with (
        dedicated_node(settings, WS_OUTBOUND_MAX_BYTES="65536") as web,
        sdk(web.ws_url, member.access_token) as (client, events),
    ):
        try:
            page = await client.history(lounge["channel"], limit=30)
        except Exception as exc:
            raise AssertionError(
                f"history failed with {exc!r}; the client's transitions: {[(c.code, c.reason) for c in events.connecting]}"
            ) from None
        assert [p.offset for p in page.publications] == list(range(1, 31))


# -- dead peers --------------------------------------------------------------------------


async def test_a_peer_that_never_answers_pings_is_closed_with_3012(settings: Settings, community: Community) -> None:
    user = await community.user("silent@example.com")
    async with (
        dedicated_node(settings, WS_PING_INTERVAL="1", WS_PONG_TIMEOUT="1") as web,
        sdk(web.ws_url, user.access_token) as (client, events),
        raw(web.ws_url, user.access_token, answer_pings=False) as silent,
    ):
        started = time.monotonic()
        code, reason = await silent.closed(timeout=10)
        elapsed = time.monotonic() - started
        assert code == 3012, (code, reason)
        assert silent.pings >= 1
        assert elapsed < 5, elapsed
        # The SDK answers its pings and stays connected well past several of them.
        await asyncio.sleep(max(0.0, 5 - elapsed))
        assert client.state == ClientState.CONNECTED
        assert not events.disconnected and len(events.connected) == 1


async def test_a_connection_whose_token_expires_is_closed_with_3005(settings: Settings, community: Community) -> None:
    user = await community.user("short-lived@example.com")
    # WS_EXPIRED_CLOSE_DELAY: the grace a connection gets to refresh after its expiry
    # (see the next tests); none here, so the test is quick.
    async with dedicated_node(settings, WS_EXPIRED_CLOSE_DELAY="0") as web, raw(web.ws_url) as sock:
        token = forge_token(settings, user, expires_in=2)  # once the node is up: its start may take seconds
        connected = await sock.connect(token)
        assert connected["expires"] is True and 1 <= connected["ttl"] <= 2, connected
        code, _ = await sock.closed(timeout=6)
        assert code == 3005


# -- refresh -----------------------------------------------------------------------------


async def test_refresh_with_a_new_token_of_the_same_user_extends_the_connection(
    node: WebNode, settings: Settings, community: Community
) -> None:
    user = await community.user("refresher@example.com")
    # The raw protocol: the reply carries the new ttl.
    async with raw(node.ws_url, forge_token(settings, user, expires_in=30)) as sock:
        refreshed = await sock.call("refresh", {"token": forge_token(settings, user, expires_in=600)})
        assert refreshed["refresh"]["expires"] is True, refreshed
        assert 590 <= refreshed["refresh"]["ttl"] <= 600, refreshed

    # The SDK's path: it refreshes by itself when the ttl runs out.
    calls: list[float] = []

    async def get_token() -> str:
        calls.append(time.monotonic())
        return forge_token(settings, user, expires_in=3 if len(calls) < 2 else 600)

    short = forge_token(settings, user, expires_in=3)
    async with sdk(node.ws_url, short, get_token=get_token) as (client, events):
        await asyncio.sleep(8)  # past the first token's expiry and a second refresh
        assert len(calls) >= 2, calls
        assert client.state == ClientState.CONNECTED
        assert not events.disconnected and len(events.connected) == 1, (events.disconnected, events.connecting)


async def test_sdk_refresh_tolerates_the_time_the_app_takes_to_fetch_a_token(
    node: WebNode, settings: Settings, community: Community
) -> None:
    """The official SDKs start a refresh when ``ttl`` runs out, then ask the app for a
    token (an HTTP round trip to /auth/refresh), then send ``refresh``: the command
    arrives after the expiry by that round trip. Centrifuge allows for it
    (ClientExpiredCloseDelay, 25 s by default); the connection must not be dropped."""
    user = await community.user("slow-refresher@example.com")
    calls: list[float] = []

    async def get_token() -> str:
        calls.append(time.monotonic())
        await asyncio.sleep(2.5)  # a slow mobile network
        return forge_token(settings, user, expires_in=600)

    async with sdk(node.ws_url, forge_token(settings, user, expires_in=3), get_token=get_token) as (client, events):
        await wait_until(lambda: calls, timeout=6)
        await asyncio.sleep(4)
        transitions = [(c.code, c.reason) for c in events.connecting[1:]]
        assert not transitions, f"the connection was dropped while the SDK was refreshing: {transitions}"
        assert client.state == ClientState.CONNECTED and len(events.connected) == 1


async def test_refresh_with_a_token_of_another_user_closes_with_3500(
    node: WebNode, settings: Settings, community: Community
) -> None:
    user = await community.user("owner-of-socket@example.com")
    other = await community.user("someone-else@example.com")
    async with raw(node.ws_url, user.access_token) as sock:
        await sock.send({"refresh": {"token": other.access_token}})
        code, _ = await sock.closed()
        assert code == 3500

    async def get_token() -> str:
        return other.access_token

    async with sdk(node.ws_url, forge_token(settings, user, expires_in=2), get_token=get_token) as (client, events):
        await events.wait_for(lambda e: e.disconnected, timeout=8)
        assert events.disconnected[0].code == 3500
        assert client.state == ClientState.DISCONNECTED


# -- presence and join/leave ---------------------------------------------------------------


async def test_presence_stats_and_join_leave_follow_subscriptions(node: WebNode, community: Community) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with (
        sdk(node.ws_url, mentor.access_token) as (alice, _),
        sdk(node.ws_url, member.access_token) as (bob, _),
        sdk(node.ws_url, member.access_token) as (bob_tablet, _),
    ):
        sub_a, seen_a = subscription(alice, channel, join_leave=True)
        await sub_a.subscribe()
        await sub_a.ready(timeout=10)
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (1, 1)

        sub_b, seen_b = subscription(bob, channel, join_leave=True)
        await sub_b.subscribe()
        await sub_b.ready(timeout=10)
        await seen_a.wait_for(lambda r: any(j.info.user == member.id for j in r.joins))
        join = next(j for j in seen_a.joins if j.info.user == member.id)
        assert join.info.client == bob.client_id

        sub_b2, _ = subscription(bob_tablet, channel)  # without join_leave: it sees none, others see it
        await sub_b2.subscribe()
        await sub_b2.ready(timeout=10)
        await seen_a.wait_for(lambda r: any(j.info.client == bob_tablet.client_id for j in r.joins))

        presence = await sub_b.presence()
        assert set(presence.clients) == {alice.client_id, bob.client_id, bob_tablet.client_id}
        assert {c.user for c in presence.clients.values()} == {mentor.id, member.id}
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (3, 2)

        await sub_b.unsubscribe()
        await seen_a.wait_for(lambda r: any(leave.info.client == bob.client_id for leave in r.leaves))
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (2, 2)

        await bob_tablet.disconnect()
        await seen_a.wait_for(lambda r: any(leave.info.client == bob_tablet.client_id for leave in r.leaves))
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (1, 1)
        assert [j.info.client for j in seen_b.joins if j.info.client == alice.client_id] == []


# -- rpc ---------------------------------------------------------------------------------


async def test_rpc_typing_read_edit_delete_and_reaction(node: WebNode, community: Community) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with sdk(node.ws_url, mentor.access_token) as (alice, _), sdk(node.ws_url, member.access_token) as (bob, _):
        sub_a, seen_a = subscription(alice, channel)
        sub_b, seen_b = subscription(bob, channel)
        for s in (sub_a, sub_b):
            await s.subscribe()
            await s.ready(timeout=10)
        await sub_a.publish(payload(sub_a, message("first")))
        await sub_a.publish(payload(sub_a, message("second")))
        await sub_b.publish(payload(sub_b, message("bob's")))
        await seen_a.wait_for(lambda r: r.stored == [1, 2, 3])

        # typing: ephemeral (offset 0), to the others.
        assert decoded((await bob.rpc("typing", payload(bob, {"channel": channel}))).data) is None
        await seen_a.wait_for(lambda r: r.of_type("typing"))
        offset, typing = next((o, d) for o, d in seen_a.publications if d["type"] == "typing")
        assert offset == 0 and typing["user"]["id"] == member.id and typing["user"]["full_name"]

        # read: the position and the unread count come back; the others get a receipt.
        read = decoded((await bob.rpc("read", payload(bob, {"channel": channel, "offset": 1}))).data)
        assert read == {"channel": channel, "last_read_offset": 1, "unread": 1}  # "second"; bob's own is not unread
        await seen_a.wait_for(lambda r: r.of_type("read"))
        offset, receipt = next((o, d) for o, d in seen_a.publications if d["type"] == "read")
        assert offset == 0 and receipt == {"type": "read", "user_id": member.id, "offset": 1}

        # message.edit: stored, with an offset; only by the author.
        edited = decoded(
            (
                await bob.rpc("message.edit", payload(bob, {"channel": channel, "offset": 3, "text": "bob's, edited"}))
            ).data
        )
        assert edited["text"] == "bob's, edited" and edited["offset"] == 3 and edited["edited_at"]
        await seen_a.wait_for(lambda r: r.of_type("message.edited"))
        assert seen_a.publications[-1][0] == 4
        assert seen_a.publications[-1][1]["message_offset"] == 3
        assert seen_a.publications[-1][1]["text"] == "bob's, edited"
        with pytest.raises(ReplyError) as not_author:
            await bob.rpc("message.edit", payload(bob, {"channel": channel, "offset": 1, "text": "hijack"}))
        assert not_author.value.code == 103

        # reaction: stored, with counts.
        reacted = decoded(
            (await alice.rpc("reaction", payload(alice, {"channel": channel, "offset": 3, "emoji": "👍"}))).data
        )
        assert reacted == {"reactions": {"👍": 1}}
        await seen_b.wait_for(lambda r: r.of_type("reaction"))
        offset, reaction = next((o, d) for o, d in seen_b.publications if d["type"] == "reaction")
        assert offset == 5
        assert reaction["message_offset"] == 3 and reaction["emoji"] == "👍" and reaction["added"] is True
        assert reaction["user_id"] == mentor.id and reaction["count"] == 1

        # message.delete: the mentor moderates bob's message.
        assert (
            decoded((await alice.rpc("message.delete", payload(alice, {"channel": channel, "offset": 3}))).data) is None
        )
        await seen_b.wait_for(lambda r: r.of_type("message.deleted"))
        assert seen_b.publications[-1] == (6, {"type": "message.deleted", "message_offset": 3})

        # Bad arguments and unknown methods are error replies, not dropped sockets.
        with pytest.raises(ReplyError) as bad:
            await bob.rpc("read", payload(bob, {"channel": channel}))
        assert bad.value.code == 107
        with pytest.raises(ReplyError) as unknown:
            await bob.rpc("message.pin", payload(bob, {"channel": channel, "offset": 1}))
        assert unknown.value.code == 104
        assert seen_a.stored == [1, 2, 3, 4, 5, 6] and seen_b.stored == [1, 2, 3, 4, 5, 6]
        assert bob.state == ClientState.CONNECTED


# -- the personal channel ------------------------------------------------------------------


@dataclass
class PersonalRecorder(ClientRecorder):
    server_subscribed: list[ServerSubscribedContext] = field(default_factory=list)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.server_subscribed.append(ctx)


async def test_the_personal_channel_reaches_all_of_the_user_s_connections_only(
    node: WebNode, app: Any, community: Community
) -> None:
    user = await community.user("personal@example.com")
    other = await community.user("personal-other@example.com")
    tablet = await another_session(community, user)
    personal = f"user#{user.id}"

    async with raw(node.ws_url) as sock:
        connected = await sock.connect(user.access_token)
        # Subscribed server-side to the personal channel, with nothing to recover (an empty
        # result; Protobuf shows its fields at their defaults).
        assert list(connected["subs"]) == [personal] and not any(connected["subs"][personal].values()), connected
        assert error_code(await sock.call("unsubscribe", {"channel": personal})) == 103

    clients = []
    try:
        for token in (user.access_token, tablet.access_token, other.access_token):
            events = PersonalRecorder()
            client = Client(node.ws_url, token=token, events=events, max_reconnect_delay=1.0)
            await client.connect()
            await client.ready(timeout=10)
            clients.append((client, events))
        (_, phone), (_, tab), (_, stranger) = clients
        await wait_until(lambda: phone.server_subscribed and tab.server_subscribed and stranger.server_subscribed)
        assert [c.channel for c in phone.server_subscribed] == [personal]
        assert [c.channel for c in tab.server_subscribed] == [personal]
        assert [c.channel for c in stranger.server_subscribed] == [f"user#{other.id}"]

        payload = {"type": "notification", "title": "Your capsule unlocked", "n": 1}
        await broadcast_ephemeral(app.state.app_state, personal, payload)
        await wait_until(lambda: phone.personal and tab.personal)
        assert phone.personal == [payload] and tab.personal == [payload]
        await asyncio.sleep(0.3)
        assert stranger.personal == []
    finally:
        for client, _ in clients:
            await client.disconnect()
