"""The gateway under Redis and PostgreSQL faults, on real ``python -m server serve``
nodes with a private Redis (tests/support/redis_server.py) and the official
centrifuge-python SDK.

What each test proves:

- ``test_subscribe_and_publish_while_redis_is_down``: a subscribe made while Redis
  is down succeeds completely (one reply, then live publications) or fails with an
  error and no state; a publish whose message was committed is acknowledged (no
  error, so no retry makes a duplicate); two clients on the same node talk live
  during the outage; every node catches up within seconds of Redis returning.
- ``test_redis_killed_and_restarted_under_load``: publishers and subscribers on two
  nodes keep going while Redis is killed and restarted: 0 lost, 0 duplicated, 0
  stalled per client after recovery.
- ``test_postgresql_stall_is_bounded_and_finished``: publishes stalled behind a
  locked channel row are answered within seconds with 108 (temporary), yet each one
  the database already had is finished once the lock goes: stored once, delivered
  live at once (no hole that subscribers wait behind), charged once, and its retry
  with the same ``client_id`` is answered with it for free; with PostgreSQL stalled
  behind a paused TCP proxy, connects are answered 108 in bounded time too.
"""

from __future__ import annotations

import asyncio
import glob
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from centrifuge import CentrifugeError, SubscriptionState

from server.foundation.settings import Settings
from tests.support.cluster import (
    Cluster,
    Conversation,
    assert_exact_stream,
    lounge_with_members,
    message,
    stored_log,
    wait_for_all,
)
from tests.support.community import Community
from tests.support.proxy import TcpProxy
from tests.support.rawws import RawClient
from tests.support.sdk import payload


@pytest.mark.usefixtures("encoding")
async def test_subscribe_and_publish_while_redis_is_down(cluster: Cluster, community: Community) -> None:
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]
    thread = (await community.client.post("/api/v1/chat/threads", json={}, headers=alice.headers)).json()
    watcher_b, _ = await cluster.connect(node_b.ws_url, mentor)
    _, on_b = await cluster.subscribe(watcher_b, channel)
    publisher, _ = await cluster.connect(node_a.ws_url, alice)
    listener, _ = await cluster.connect(node_a.ws_url, bob)
    raw = await RawClient.open(node_a.ws_url)
    await raw.connect(mentor.access_token)
    await publisher.publish(channel, payload(publisher, message("before")))
    await on_b.wait_for(lambda r: len(r.stored) == 1)

    await asyncio.to_thread(cluster.redis.stop)
    # A subscribe during the outage: exactly one reply, and it is a success.
    reply = await raw.call("subscribe", {"channel": channel, "recover": True, "offset": 1, "epoch": ""})
    assert "subscribe" in reply, reply
    # The official SDK subscribes too and hears the conversation on its node, live.
    sub, on_a = await cluster.subscribe(listener, channel)
    assert sub.state == SubscriptionState.SUBSCRIBED
    sent = []
    for index in range(3):
        client_id = str(uuid.uuid4())
        try:
            await publisher.publish(channel, payload(publisher, message(f"during #{index}", client_id)), timeout=5)
        except CentrifugeError as exc:
            raise AssertionError(f"publish #{index} failed during the outage: {exc!r}") from None
        sent.append(client_id)
    log = await stored_log(channel)
    assert [client_id for _, client_id in log[1:]] == sent, "one message per publish, none missing or doubled"
    # A thread message is stored too, though its coach reply cannot be queued without Redis.
    try:
        await publisher.publish(
            thread["channel"], payload(publisher, message("to the coach, during the outage")), timeout=5
        )
    except CentrifugeError as exc:
        raise AssertionError(f"a stored thread message was answered with an error: {exc!r}") from None
    assert len(await stored_log(thread["channel"])) == 1
    await on_a.wait_for(lambda r: len(r.stored) == 3, timeout=3)
    raw_offsets = [(await raw.push(lambda p: "pub" in p, timeout=3))["pub"]["offset"] for _ in range(3)]
    assert raw_offsets == [2, 3, 4], "the raw subscriber hears the outage's publications live, in order"

    await asyncio.to_thread(cluster.redis.start)
    restarted = time.monotonic()
    await wait_for_all({"mentor@B": on_b}, 4, timeout=6)
    caught_up_in = time.monotonic() - restarted
    await publisher.publish(channel, payload(publisher, message("after")))
    log = await stored_log(channel)
    await wait_for_all({"mentor@B": on_b}, len(log), timeout=5)
    assert_exact_stream(on_b, log, "mentor@B")
    await on_a.wait_for(lambda r: len(r.stored) == len(log) - 1, timeout=5)
    assert_exact_stream(on_a, log[1:], "bob@A")
    assert caught_up_in < 6
    assert not [m for m in raw.inbox if m.get("id") == reply["id"]], f"a second reply for one subscribe: {raw.inbox}"
    await raw.close()


@pytest.mark.usefixtures("encoding")
async def test_redis_killed_and_restarted_under_load(cluster: Cluster, community: Community) -> None:
    (node_a, node_b), (lounge, (mentor, alice, bob, carol)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 4)
    )
    channel = lounge["channel"]
    recorders = {}
    for who, url in (("mentor@A", node_a.ws_url), ("mentor@B", node_b.ws_url)):
        watcher, _ = await cluster.connect(url, mentor)
        _, recorders[who] = await cluster.subscribe(watcher, channel)
    latecomer, _ = await cluster.connect(node_a.ws_url, carol)
    publisher_a, _ = await cluster.connect(node_a.ws_url, alice)
    publisher_b, _ = await cluster.connect(node_b.ws_url, bob)
    talk = Conversation(channel)
    publishing = asyncio.gather(
        talk.publisher(publisher_a, "alice@A", 30, pause=0.05), talk.publisher(publisher_b, "bob@B", 30, pause=0.05)
    )

    await asyncio.sleep(0.5)
    await asyncio.to_thread(cluster.redis.stop)
    # The stuck-subscription case: an SDK subscribes while Redis is down, mid-conversation.
    late_sub, late = await cluster.subscribe(latecomer, channel)
    await asyncio.sleep(2.5)
    await asyncio.to_thread(cluster.redis.start)
    restarted = time.monotonic()
    await asyncio.wait_for(publishing, 60)

    log = await stored_log(channel)
    sent = [client_id for ids in talk.sent.values() for client_id in ids]
    assert sorted(client_id for _, client_id in log) == sorted(sent), "lost or duplicated in the store"
    assert [offset for offset, _ in log] == list(range(1, len(sent) + 1))
    try:
        await wait_for_all(recorders, len(log), timeout=8)
    except AssertionError as exc:
        raise AssertionError(f"stalled after Redis returned: {exc}") from None
    recovered_in = time.monotonic() - restarted
    for who, recorder in recorders.items():
        assert_exact_stream(recorder, log, who)
    assert late_sub.state == SubscriptionState.SUBSCRIBED
    [subscribed] = late.subscribed
    position = subscribed.stream_position.offset if subscribed.stream_position else 0
    await late.wait_for(lambda r: len(r.stored) >= len(log) - position, timeout=5)
    assert_exact_stream(late, log[position:], "carol@A (subscribed during the outage)")
    print(  # the numbers of the run (pytest -s)
        f"redis outage under load: {len(log)} stored, {len(talk.failures)} publish attempts failed and were "
        f"retried, 0 lost, 0 duplicated; every subscriber complete {recovered_in:.1f} s after Redis returned"
    )


def database_link_target(database_url: str) -> tuple[tuple[str, int], str]:
    """Where PostgreSQL listens for ``database_url`` (a TCP address, or an embedded server's
    Unix socket as ``(path, 0)``) and the URL of the same database through a proxy port
    (the ``{port}`` placeholder)."""
    parts = urlsplit(database_url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    if socket_dir.startswith("/"):
        [path] = [p for p in glob.glob(f"{socket_dir}/.s.PGSQL.*") if not p.endswith(".lock")]
        target = (path, 0)
    else:
        target = (parts.hostname or "127.0.0.1", parts.port or 5432)
    user = f"{parts.username or 'postgres'}:{parts.password or ''}"
    return target, f"postgresql://{user}@127.0.0.1:{{port}}{parts.path}"


async def timed_call(sock: RawClient, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    reply = await sock.call(method, params, timeout=15)
    return reply, time.monotonic() - started


@pytest.mark.usefixtures("encoding")
async def test_postgresql_stall_is_bounded_and_finished(
    cluster: Cluster, community: Community, settings: Settings
) -> None:
    target, proxied_url = database_link_target(settings.database_url or "")
    pg_link = await TcpProxy([target]).start()
    cluster.proxies.append(pg_link)
    (lounge, (mentor, alice)), node = await asyncio.gather(
        lounge_with_members(community, 2),
        cluster.start_node(
            DATABASE_URL=proxied_url.format(port=pg_link.port), WS_COMMAND_TIMEOUT="2", PUBLISH_RATE_LIMIT="5/60"
        ),
    )
    channel = lounge["channel"]
    sockets = [await RawClient.open(node.ws_url) for _ in range(5)]  # as many as the rate limit allows
    watcher = await RawClient.open(node.ws_url)
    try:
        for sock in sockets:
            await sock.connect(alice.access_token)
        await watcher.connect(alice.access_token)  # the mentor stays unknown to the node until part 2
        assert "subscribe" in await watcher.call("subscribe", {"channel": channel})

        # 1. The channel's row is locked by someone else: every publish waits for it and is answered 108.
        posts = [message(f"stalled {i}") for i in range(len(sockets))]
        locker = await asyncpg.connect(settings.database_url)
        try:
            async with locker.transaction():
                await locker.execute("SELECT 1 FROM channels WHERE name = $1 FOR UPDATE", channel)
                stalled = await asyncio.gather(
                    *(
                        timed_call(s, "publish", {"channel": channel, "data": post})
                        for s, post in zip(sockets, posts, strict=True)
                    )
                )
                assert await locker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted") == len(posts), (
                    "the statements answered 108 were withdrawn from the database"
                )
        finally:
            await locker.close()
        released = time.monotonic()
        codes = [reply.get("error", {}).get("code") for reply, _ in stalled]
        slowest = max(took for _, took in stalled)
        assert codes == [108] * len(sockets), stalled
        assert all(reply["error"].get("temporary") for reply, _ in stalled)
        assert slowest < 4, f"a stalled publish was answered after {slowest:.1f} s"
        # The lock is gone: what the database had is stored once and delivered live at once,
        # not left as holes for the next catch-up from the log.
        delivered = sorted([(await watcher.push(lambda p: "pub" in p, timeout=3))["pub"]["offset"] for _ in posts])
        took = time.monotonic() - released
        assert delivered == [1, 2, 3, 4, 5] and took < 2, (delivered, took)
        assert sorted(client_id for _, client_id in await stored_log(channel)) == sorted(p["client_id"] for p in posts)
        # A retry with its client_id is answered with the stored message, free; the five were charged once.
        for sock, post in zip(sockets, posts, strict=True):
            reply = await sock.call("publish", {"channel": channel, "data": post})
            assert reply.get("publish") == {}, reply
        over = await sockets[0].call("publish", {"channel": channel, "data": message("one too many")})
        assert over.get("error", {}).get("code") == 111, over
        assert len(await stored_log(channel)) == len(posts)

        # 2. PostgreSQL stops answering altogether: publishes and new connects are answered 108 in bounded time.
        pg_link.pause()
        reply, took = await timed_call(sockets[1], "presence_stats", {"channel": channel})
        assert reply.get("error", {}).get("code") == 108 and took < 4, (reply, took)
        newcomer = await RawClient.open(node.ws_url)
        reply, took = await timed_call(newcomer, "connect", {"token": mentor.access_token})
        assert reply.get("error", {}).get("code") == 108 and reply["error"].get("temporary"), reply
        assert took < 4 and (await newcomer.closed())[0] == 3004, "a reconnecting close code"
        print(
            f"postgresql stall (WS_COMMAND_TIMEOUT=2): publishes answered 108 after {slowest:.2f} s at most, connect {took:.2f} s"
        )
        pg_link.resume()
        async with asyncio.timeout(10):  # the pool's connections come back by themselves
            while "presence_stats" not in (reply := await sockets[1].call("presence_stats", {"channel": channel})):
                await asyncio.sleep(0.2)
        fresh = await RawClient.open(node.ws_url)
        await fresh.connect(mentor.access_token)
        await fresh.close()
    finally:
        for sock in [*sockets, watcher]:
            await sock.close()


async def test_postgresql_paused_under_load_on_two_nodes(
    cluster: Cluster, community: Community, settings: Settings
) -> None:
    target, proxied_url = database_link_target(settings.database_url or "")
    pg_link = await TcpProxy([target]).start()
    cluster.proxies.append(pg_link)
    env = {"DATABASE_URL": proxied_url.format(port=pg_link.port), "WS_COMMAND_TIMEOUT": "1.5"}
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        cluster.start_nodes(**env), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]
    recorders = {}
    for who, url in (("mentor@A", node_a.ws_url), ("mentor@B", node_b.ws_url)):
        watcher, _ = await cluster.connect(url, mentor)
        _, recorders[who] = await cluster.subscribe(watcher, channel)
    publisher_a, _ = await cluster.connect(node_a.ws_url, alice)
    publisher_b, _ = await cluster.connect(node_b.ws_url, bob)
    talk = Conversation(channel)  # retries each message with its client_id until acknowledged
    publishing = asyncio.gather(
        talk.publisher(publisher_a, "alice@A", 25, pause=0.05), talk.publisher(publisher_b, "bob@B", 25, pause=0.05)
    )
    await asyncio.sleep(0.5)
    pg_link.pause()
    await asyncio.sleep(3)
    pg_link.resume()
    resumed = time.monotonic()
    await asyncio.wait_for(publishing, 60)

    log = await stored_log(channel)
    sent = [client_id for ids in talk.sent.values() for client_id in ids]
    assert sorted(client_id for _, client_id in log) == sorted(sent), "lost or duplicated in the store"
    assert talk.failures, "the stall was not felt (no publish was refused while PostgreSQL was paused)"
    try:
        await wait_for_all(recorders, len(log), timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"stalled after PostgreSQL returned: {exc}") from None
    for who, recorder in recorders.items():
        assert_exact_stream(recorder, log, who)
    print(
        f"postgresql paused 3 s under load: {len(log)} stored, {len(talk.failures)} refused publishes retried "
        f"with their client_id, 0 lost, 0 duplicated; complete {time.monotonic() - resumed:.1f} s after it resumed"
    )
