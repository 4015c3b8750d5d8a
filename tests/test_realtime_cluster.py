"""The realtime guarantees of DESIGN §2 on a real cluster: two ``python -m server serve``
processes, real PostgreSQL, a private Redis of this module's own (so FLUSHALL and
restarts never touch the shared test Redis), and the official centrifuge-python
SDK as the client.

Because the nodes use the private Redis, everything realtime goes through them
(socket publishes, or REST on a node's own port): the in-process app would
broadcast to the shared Redis. Accounts and lounges are made in-process (that is
only PostgreSQL).

What each test proves:

- ``test_order_across_nodes``: guarantee 2 with publishers on both nodes at once.
- ``test_recovery_exactly_what_was_missed_and_past_the_limit``: guarantee 3
  (from the Redis cache on a fresh node, from another node's hub, and
  ``recovered: false`` past ``RECOVERY_MAX_PUBLICATIONS``, then REST paging).
- ``test_kill_9_node_loses_no_acknowledged_message``: guarantee 1 and 3 when a
  node dies mid-conversation behind a load balancer.
- ``test_flushall_recovery_falls_back_to_postgresql``: guarantee 1 and 3 when
  Redis loses everything it had.
- ``test_redis_restart_nodes_reconnect_and_catch_up``: guarantee 1 and 2 across
  a Redis outage (the nodes reconnect and catch up from the log).
- ``test_graceful_drain_moves_clients_without_loss``: guarantee 7 (3001, then
  reconnect and recovery on the other node).
- ``test_publisher_dies_between_commit_and_broadcast``: guarantee 2, a gap left by
  a dead publisher is filled from the log at the next publication.
- ``test_publication_arriving_during_gap_fill_does_not_wedge_the_channel``:
  guarantee 2, gap filling keeps working after a log read raced a late publication.
- ``test_client_ahead_of_a_lagging_node_recovers_without_duplicates``: guarantees 2
  and 3 for a client that reconnects to a node behind the one it left.

Stalls and network cuts are made with :class:`tests.support.proxy.TcpProxy` (in
front of a node's Redis, or of one client), never by patching the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from centrifuge import Client, ClientState

from server.foundation.settings import Settings
from server.streams.broker import history_key
from tests.support.accounts import Account
from tests.support.cluster import (
    Cluster,
    Conversation,
    assert_exact_stream,
    channel_top,
    describe,
    lounge_with_members,
    message,
    seen,
    stored_log,
    wait_for_all,
    wait_until,
)
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.proxy import TcpProxy
from tests.support.sdk import ClientRecorder, Recorder, payload

pytestmark = pytest.mark.usefixtures("encoding")  # every test runs on both socket encodings

DISCONNECT_SHUTDOWN = 3001


# -- 1. order ----------------------------------------------------------------------------------


async def test_order_across_nodes(cluster: Cluster, community: Community) -> None:
    """Three publishers on both nodes post 30 messages each at the same time; four
    subscribers (two per node) all see offsets 1..90 in order, no gap, no duplicate,
    the same sequence, and the same one PostgreSQL committed."""
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]

    recorders: dict[str, Recorder] = {}
    for who, url, account in (
        ("mentor@A", node_a.ws_url, mentor),
        ("alice@A", node_a.ws_url, alice),
        ("bob@B", node_b.ws_url, bob),
        ("mentor@B", node_b.ws_url, mentor),
    ):
        client, _ = await cluster.connect(url, account)
        _, recorders[who] = await cluster.subscribe(client, channel)
    publishers = {
        "alice@A": (await cluster.connect(node_a.ws_url, alice))[0],
        "bob@B": (await cluster.connect(node_b.ws_url, bob))[0],
        "mentor@B": (await cluster.connect(node_b.ws_url, mentor))[0],
    }

    async def publish_30(client: Client, name: str) -> list[str]:
        ids = []
        for index in range(30):
            client_id = str(uuid.uuid4())
            await client.publish(
                channel, payload(client, message(f"{name} #{index}", client_id))
            )  # any error fails the test
            ids.append(client_id)
        return ids

    async with asyncio.timeout(30):
        sent = dict(
            zip(publishers, await asyncio.gather(*(publish_30(c, n) for n, c in publishers.items())), strict=True)
        )

    log = await stored_log(channel)
    assert [offset for offset, _ in log] == list(range(1, 91))
    assert {client_id for _, client_id in log} == {c for ids in sent.values() for c in ids}

    await wait_for_all(recorders, 90, timeout=15)
    for who, recorder in recorders.items():
        assert_exact_stream(recorder, log, who)

    # Each publisher's messages keep its sending order, and the publishers really interleaved.
    offset_of = {client_id: offset for offset, client_id in log}
    for name, ids in sent.items():
        offsets = [offset_of[c] for c in ids]
        assert offsets == sorted(offsets), name
    author = {offset_of[c]: name for name, ids in sent.items() for c in ids}
    switches = sum(1 for offset in range(2, 91) if author[offset] != author[offset - 1])
    assert switches >= 3, f"the publishers did not run concurrently ({switches} switches)"


# -- 2. recovery -------------------------------------------------------------------------------


async def test_recovery_exactly_what_was_missed_and_past_the_limit(cluster: Cluster, community: Community) -> None:
    """A subscriber loses its network, others keep talking, it comes back and gets
    exactly what it missed (``recovered: true``): on a node with no hub for the
    channel any more, and on the other node. Past ``RECOVERY_MAX_PUBLICATIONS`` it
    is told it could not recover, gets none of the missed ones, continues live, and
    pages the REST history for the gap."""
    (node_a, node_b), (lounge, (mentor, alice)) = await asyncio.gather(
        cluster.start_nodes(RECOVERY_MAX_PUBLICATIONS="5"), lounge_with_members(community, 2)
    )
    channel = lounge["channel"]

    link = await cluster.proxy(node_a)  # alice's own network path, to node A
    alice_client, alice_events = await cluster.connect(link.ws_url, alice)
    _, alice_seen = await cluster.subscribe(alice_client, channel)
    witness_client, _ = await cluster.connect(node_b.ws_url, mentor)
    _, witness = await cluster.subscribe(witness_client, channel)
    talker, _ = await cluster.connect(node_b.ws_url, mentor)

    async def talk(count: int) -> None:
        for index in range(count):
            await talker.publish(channel, payload(talker, message(f"while alice is away #{index}")))
        top = await channel_top(channel)
        await witness.wait_for(lambda r: len(r.stored) == top)

    async def lose_network() -> None:
        link.backends = []
        assert await link.sever() >= 1
        await wait_until(lambda: alice_client.state == ClientState.CONNECTING, 5, "alice notices the lost link")

    await talk(2)
    await alice_seen.wait_for(lambda r: len(r.stored) == 2)

    # 1) 5 missed (exactly the limit); back on node A, where the channel's hub closed with
    #    alice's socket: recovery from the Redis history cache.
    await lose_network()
    await talk(5)
    assert len(alice_seen.stored) == 2
    link.backends = [("127.0.0.1", node_a.port)]
    await alice_seen.wait_for(lambda r: len(r.subscribed) == 2 and len(r.stored) >= 7, timeout=10)
    context = alice_seen.subscribed[-1]
    assert context.was_recovering and context.recovered
    assert context.stream_position is not None and context.stream_position.offset == 7
    await asyncio.sleep(0.2)
    assert_exact_stream(alice_seen, await stored_log(channel), "alice after 5 missed")

    # 2) The app disconnects and connects again (same Subscription objects); this time the
    #    network leads to node B: recovery from the other node's hub.
    await alice_client.disconnect()
    await talk(3)
    link.backends = [("127.0.0.1", node_b.port)]
    await alice_client.connect()
    await alice_seen.wait_for(lambda r: len(r.subscribed) == 3 and len(r.stored) >= 10, timeout=10)
    context = alice_seen.subscribed[-1]
    assert context.was_recovering and context.recovered
    await asyncio.sleep(0.2)
    assert_exact_stream(alice_seen, await stored_log(channel), "alice after disconnect()/connect()")
    assert link.routed[-1] == node_b.port

    # 3) 6 missed, one past the limit: told it could not recover, and none of them replayed.
    await lose_network()
    await talk(6)
    link.backends = [("127.0.0.1", node_a.port)]
    await alice_seen.wait_for(lambda r: len(r.subscribed) == 4, timeout=10)
    context = alice_seen.subscribed[-1]
    assert context.was_recovering and not context.recovered
    assert context.stream_position is not None and context.stream_position.offset == 16
    log = await stored_log(channel)
    await asyncio.sleep(0.2)
    assert seen(alice_seen) == log[:10]

    # It continues live from the new position ...
    await talk(1)
    await alice_seen.wait_for(lambda r: len(r.stored) == 11)
    assert alice_seen.stored[-1] == 17
    # ... and pages the REST history for the gap.
    async with httpx.AsyncClient(base_url=node_a.url, headers=alice.headers, timeout=10) as http:
        page = await http.get(f"/api/v1/lounges/{lounge['id']}/messages", params={"after": 10, "limit": 50})
    assert page.status_code == 200, page.text
    assert [(m["offset"], str(m["client_id"])) for m in page.json()["items"]] == (await stored_log(channel))[10:]
    assert alice_events.connected and len(alice_events.connected) == 4


# -- 3. kill -9 --------------------------------------------------------------------------------


async def test_kill_9_node_loses_no_acknowledged_message(cluster: Cluster, community: Community) -> None:
    """Clients reach the cluster through a load balancer (first node that accepts).
    Node A is killed with SIGKILL while two publishers keep posting; A's clients
    reconnect through the balancer to B and recover. Every acknowledged message is
    in PostgreSQL and was received by every subscriber, each exactly once and in
    order; retries with the same client_id stored nothing twice."""
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 3)
    )
    balancer = await cluster.proxy(node_a, node_b)
    channel = lounge["channel"]

    recorders: dict[str, Recorder] = {}
    events: dict[str, ClientRecorder] = {}
    for who, url, account in (
        ("alice@lb", balancer.ws_url, alice),
        ("bob@lb", balancer.ws_url, bob),
        ("mentor@B", node_b.ws_url, mentor),
    ):
        client, events[who] = await cluster.connect(url, account)
        _, recorders[who] = await cluster.subscribe(client, channel)
    publisher_lb, publisher_lb_events = await cluster.connect(balancer.ws_url, alice)
    publisher_b, _ = await cluster.connect(node_b.ws_url, bob)
    assert balancer.routed == [node_a.port] * 3

    talk = Conversation(channel)
    per_publisher = 40
    tasks = [
        asyncio.create_task(talk.publisher(publisher_lb, "alice@lb", per_publisher)),
        asyncio.create_task(talk.publisher(publisher_b, "bob@B", per_publisher)),
    ]
    try:
        await wait_until(lambda: len(talk.acked) >= 20, 15, "20 messages acknowledged before the kill")
        node_a.kill()
        killed_at = time.monotonic()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    assert time.monotonic() - killed_at < 20

    log = await stored_log(channel)
    total = 2 * per_publisher
    assert [offset for offset, _ in log] == list(range(1, total + 1)), "a retry was stored twice, or a gap"
    assert {client_id for _, client_id in log} == set(talk.acked)
    assert len(talk.acked) == total

    await wait_for_all(recorders, total, timeout=15)
    for who, recorder in recorders.items():
        assert_exact_stream(recorder, log, who)
        assert set(talk.acked) <= {client_id for _, client_id in seen(recorder)}, who

    for who in ("alice@lb", "bob@lb"):
        assert len(events[who].connected) >= 2, f"{who} did not reconnect"
        assert len(recorders[who].subscribed) >= 2
        context = recorders[who].subscribed[-1]
        assert context.was_recovering and context.recovered, who
    assert len(recorders["mentor@B"].subscribed) == 1
    assert len(publisher_lb_events.connected) >= 2
    assert balancer.routed[3:] and set(balancer.routed[3:]) == {node_b.port}


# -- 4. FLUSHALL -------------------------------------------------------------------------------


async def test_flushall_recovery_falls_back_to_postgresql(cluster: Cluster, community: Community) -> None:
    """FLUSHALL while a subscriber is away: its history cache is gone, new
    publications make a cache with a hole, and the subscriber still recovers all it
    missed (from PostgreSQL) with ``recovered: true``; nothing acknowledged is lost."""
    (node_a, node_b), (lounge, (mentor, alice)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 2)
    )
    channel = lounge["channel"]
    cache_key = history_key(cluster.settings.redis_prefix, channel)

    link = await cluster.proxy(node_a)  # alice is the only subscriber of node A: no hub there to recover from
    alice_client, _ = await cluster.connect(link.ws_url, alice)
    _, alice_seen = await cluster.subscribe(alice_client, channel)
    witness_client, _ = await cluster.connect(node_b.ws_url, mentor)
    _, witness = await cluster.subscribe(witness_client, channel)
    talker, _ = await cluster.connect(node_b.ws_url, mentor)
    acked: list[str] = []

    async def talk(count: int) -> None:
        for index in range(count):
            client_id = str(uuid.uuid4())
            await talker.publish(channel, payload(talker, message(f"#{len(acked) + index}", client_id)))
            acked.append(client_id)
        await witness.wait_for(lambda r: len(r.stored) == len(acked))

    private = aioredis.from_url(cluster.redis.url)
    try:
        await talk(3)
        await alice_seen.wait_for(lambda r: len(r.stored) == 3)
        assert await private.zcard(cache_key) == 3

        link.backends = []
        await link.sever()
        await wait_until(lambda: alice_client.state == ClientState.CONNECTING, 5, "alice notices the lost link")
        await talk(3)  # offsets 4..6, cached ...
        assert await private.zcard(cache_key) == 6
        assert await private.flushall() is True  # ... and gone
        assert await private.exists(cache_key) == 0
        await talk(3)  # offsets 7..9: the cache now starts at 7
        cached = await private.zrange(cache_key, 0, -1, withscores=True)
        assert [int(score) for _, score in cached] == [7, 8, 9]

        link.backends = [("127.0.0.1", node_a.port)]
        await alice_seen.wait_for(lambda r: len(r.subscribed) == 2 and len(r.stored) >= 9, timeout=10)
        context = alice_seen.subscribed[-1]
        assert context.was_recovering and context.recovered
        await asyncio.sleep(0.2)
        log = await stored_log(channel)
        assert [offset for offset, _ in log] == list(range(1, 10))
        assert {client_id for _, client_id in log} == set(acked)
        assert_exact_stream(alice_seen, log, "alice")
        assert_exact_stream(witness, log, "witness")
    finally:
        await private.aclose()


# -- 5. Redis restart --------------------------------------------------------------------------


async def test_redis_restart_nodes_reconnect_and_catch_up(cluster: Cluster, community: Community) -> None:
    """Redis goes down and comes back empty on the same port, the nodes keep running.
    A message posted through a node's REST API while Redis is down is committed and
    acknowledged, and delivered at once on that node; once Redis is back the other node
    reconnects by itself, catches up from the log and delivers it without anything else
    being published, and publishing on both nodes works again, in order, with nothing missing."""
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]

    recorders: dict[str, Recorder] = {}
    for who, url, account in (("mentor@A", node_a.ws_url, mentor), ("mentor@B", node_b.ws_url, mentor)):
        client, _ = await cluster.connect(url, account)
        _, recorders[who] = await cluster.subscribe(client, channel)
    publisher_a, _ = await cluster.connect(node_a.ws_url, alice)
    publisher_b, _ = await cluster.connect(node_b.ws_url, bob)

    for index in range(2):
        await publisher_a.publish(channel, payload(publisher_a, message(f"alice before #{index}")))
        await publisher_b.publish(channel, payload(publisher_b, message(f"bob before #{index}")))
    await wait_for_all(recorders, 4, timeout=10)

    await asyncio.to_thread(cluster.redis.stop)
    outage_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=node_a.url, headers=alice.headers, timeout=30) as http:
        during = await http.post(
            f"/api/v1/lounges/{lounge['id']}/messages", json=message("posted while Redis is down", outage_id)
        )
    # Committed, so acknowledged (a failed answer would make the client post it again).
    assert during.status_code == 201, during.text
    log = await stored_log(channel)
    assert log[-1] == (5, outage_id)
    # Live on the node that stored it, without Redis; the other node hears of it once Redis is back.
    await recorders["mentor@A"].wait_for(lambda r: len(r.stored) == 5, timeout=3)
    assert len(recorders["mentor@B"].stored) == 4

    await asyncio.to_thread(cluster.redis.start)
    restarted_at = time.monotonic()
    # Catch-up from the log: offset 5 arrives with nothing else published.
    await wait_for_all(recorders, 5, timeout=6)
    caught_up_in = time.monotonic() - restarted_at

    async with httpx.AsyncClient(timeout=5) as http:
        for node in (node_a, node_b):
            await wait_until_ready(http, node)

    acked = []
    for index in range(3):
        for client, name in ((publisher_a, "alice"), (publisher_b, "bob")):
            client_id = str(uuid.uuid4())
            await client.publish(channel, payload(client, message(f"{name} after #{index}", client_id)))
            acked.append(client_id)
    await wait_for_all(recorders, 11, timeout=10)
    log = await stored_log(channel)
    assert [offset for offset, _ in log] == list(range(1, 12))
    assert set(acked) <= {client_id for _, client_id in log}
    for who, recorder in recorders.items():
        assert_exact_stream(recorder, log, who)
    assert caught_up_in < 6


async def wait_until_ready(http: httpx.AsyncClient, node: WebNode, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{node.url}/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


# -- 6. graceful drain -------------------------------------------------------------------------


async def test_graceful_drain_moves_clients_without_loss(cluster: Cluster, community: Community) -> None:
    """SIGTERM to node A mid-conversation: its clients are told to reconnect (3001),
    land on B through the balancer, recover, and nothing is lost; A exits by itself
    within the drain."""
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        cluster.start_nodes(), lounge_with_members(community, 3)
    )
    balancer = await cluster.proxy(node_a, node_b)
    channel = lounge["channel"]

    recorders: dict[str, Recorder] = {}
    events: dict[str, ClientRecorder] = {}
    for who, url, account in (
        ("alice@lb", balancer.ws_url, alice),
        ("bob@lb", balancer.ws_url, bob),
        ("mentor@B", node_b.ws_url, mentor),
    ):
        client, events[who] = await cluster.connect(url, account)
        _, recorders[who] = await cluster.subscribe(client, channel)
    publisher_lb, publisher_lb_events = await cluster.connect(balancer.ws_url, alice)
    publisher_b, _ = await cluster.connect(node_b.ws_url, bob)
    assert balancer.routed == [node_a.port] * 3

    talk = Conversation(channel)
    per_publisher = 40
    tasks = [
        asyncio.create_task(talk.publisher(publisher_lb, "alice@lb", per_publisher)),
        asyncio.create_task(talk.publisher(publisher_b, "bob@B", per_publisher)),
    ]
    try:
        await wait_until(lambda: len(talk.acked) >= 20, 15, "20 messages acknowledged before the drain")
        started = time.monotonic()
        exit_code = await node_a.stop(timeout=15)
        drained_in = time.monotonic() - started
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    assert exit_code != -9, "node A had to be killed: it did not finish its drain"
    assert drained_in < 10

    log = await stored_log(channel)
    total = 2 * per_publisher
    assert [offset for offset, _ in log] == list(range(1, total + 1))
    assert {client_id for _, client_id in log} == set(talk.acked)

    await wait_for_all(recorders, total, timeout=15)
    for who, recorder in recorders.items():
        assert_exact_stream(recorder, log, who)

    for who, client_events in (*((w, events[w]) for w in ("alice@lb", "bob@lb")), ("publisher", publisher_lb_events)):
        codes = [ctx.code for ctx in client_events.connecting]
        assert DISCONNECT_SHUTDOWN in codes, f"{who} was not told to reconnect (3001): {codes}"
        assert not client_events.disconnected, f"{who} gave up: {client_events.disconnected}"
        # A client with nothing left to send reconnects after the SDK's backoff, possibly
        # after the last publication arrived elsewhere: wait for it rather than race it.
        await wait_until(lambda e=client_events: len(e.connected) >= 2, 15, f"{who} reconnected")
    for who in ("alice@lb", "bob@lb"):
        context = recorders[who].subscribed[-1]
        assert len(recorders[who].subscribed) >= 2 and context.was_recovering and context.recovered, who
    # While A drains it still accepts TCP (and refuses the WebSocket, 1013); once it is
    # gone every connection goes to B, and each client ended up there.
    after = balancer.routed[3:]
    first_b = after.index(node_b.port)
    assert set(after[:first_b]) <= {node_a.port} and set(after[first_b:]) == {node_b.port}, after
    assert len(after[first_b:]) == 3, after


# -- 7. a publisher that dies between commit and broadcast -------------------------------------


async def post_via_rest(node: WebNode, lounge: dict[str, Any], account: Account, client_id: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, headers=account.headers, timeout=30) as http:
        return await http.post(f"/api/v1/lounges/{lounge['id']}/messages", json=message("via REST", client_id))


async def wait_committed(channel: str, offset: int, timeout: float = 5) -> list[tuple[int, str]]:
    async with asyncio.timeout(timeout):
        while True:
            log = await stored_log(channel)
            if log and log[-1][0] >= offset:
                return log
            await asyncio.sleep(0.02)


async def commit_without_broadcast(
    node: WebNode, redis_link: TcpProxy, lounge: dict[str, Any], account: Account
) -> tuple[asyncio.Task[httpx.Response], int]:
    """Post through ``node``'s REST API while its Redis link is stalled: the message is
    committed, its broadcast waits in the link. Returns the request and the offset."""
    top = await channel_top(lounge["channel"])
    redis_link.pause()
    request = asyncio.create_task(post_via_rest(node, lounge, account, str(uuid.uuid4())))
    await wait_committed(lounge["channel"], top + 1)
    return request, top + 1


async def test_publisher_dies_between_commit_and_broadcast(cluster: Cluster, community: Community) -> None:
    """Node A commits a message and is killed before its broadcast reaches Redis. The
    next publication on B shows the gap; B fills it from the log at once, so its
    subscriber gets every committed offset, in order (not only after the 10 s sweep)."""
    redis_link, via_link = await cluster.redis_link()
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        asyncio.gather(cluster.start_node(REDIS_URL=via_link), cluster.start_node()), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]
    subscriber, _ = await cluster.connect(node_b.ws_url, mentor)
    _, on_b = await cluster.subscribe(subscriber, channel)
    talker, _ = await cluster.connect(node_b.ws_url, bob)

    await talker.publish(channel, payload(talker, message("before")))
    await on_b.wait_for(lambda r: len(r.stored) == 1)

    request, lost_offset = await commit_without_broadcast(node_a, redis_link, lounge, alice)
    node_a.kill()
    with contextlib.suppress(httpx.HTTPError):
        await request
    await talker.publish(channel, payload(talker, message("after")))
    try:
        await wait_for_all({"mentor@B": on_b}, lost_offset + 1, timeout=2)
    except AssertionError as exc:
        raise AssertionError(f"the gap at offset {lost_offset} was not filled from the log: {exc}") from None
    assert_exact_stream(on_b, await stored_log(channel), "mentor@B")


# -- 8. a late publication while the gap is being filled ---------------------------------------


async def test_publication_arriving_during_gap_fill_does_not_wedge_the_channel(
    cluster: Cluster, community: Community, settings: Settings
) -> None:
    """Node B sees offset n+1 before n and reads n from the log; n arrives from Redis
    while that read is still running (held here by a table lock: in production, any
    read slower than the late publication), so B delivers n, n+1 from Redis first and
    the read returns n, already delivered. That must not break B's gap filling: three
    later gaps (node A's broadcast stalled for seconds after its commit) must each be
    filled from the log at once, not by the 10 s catch-up sweep."""
    redis_link, via_link = await cluster.redis_link()
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        asyncio.gather(cluster.start_node(REDIS_URL=via_link), cluster.start_node()), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]
    subscriber, _ = await cluster.connect(node_b.ws_url, mentor)
    _, on_b = await cluster.subscribe(subscriber, channel)
    talker, _ = await cluster.connect(node_b.ws_url, bob)
    await talker.publish(channel, payload(talker, message("before")))
    await on_b.wait_for(lambda r: len(r.stored) == 1)

    locker = await asyncpg.connect(settings.database_url)
    try:
        for _attempt in range(5):
            request, late = await commit_without_broadcast(node_a, redis_link, lounge, alice)
            lock = locker.transaction()
            await lock.start()
            await talker.publish(channel, payload(talker, message("overtakes")))  # offset late+1 reaches B first
            # B's gap fill reads the log 50 ms after late+1 arrived: hold that read.
            await locker.execute("LOCK TABLE channel_publications IN ACCESS EXCLUSIVE MODE")
            held = await gap_fill_waiting(locker)
            redis_link.resume()  # `late` arrives from Redis while the read waits
            await on_b.wait_for(lambda r, n=late + 1: len(r.stored) >= n)
            await lock.rollback()  # the read returns `late`, already delivered
            assert (await request).status_code == 201
            if held:
                break
        else:
            pytest.fail("could not hold node B's gap fill in five attempts")
        await asyncio.sleep(0.3)
        assert_exact_stream(on_b, await stored_log(channel), "mentor@B (late publication)")
    finally:
        await locker.close()

    for round_ in range(3):
        request, gap = await commit_without_broadcast(node_a, redis_link, lounge, alice)
        await talker.publish(channel, payload(talker, message(f"after gap {round_}")))
        try:
            await wait_for_all({"mentor@B": on_b}, gap + 1, timeout=2)
        except AssertionError as exc:
            raise AssertionError(
                f"round {round_}: node B no longer fills gaps from the log (offset {gap} is committed, its "
                f"broadcast stalled; B holds {gap + 1} back until the 10 s catch-up sweep): {exc}"
            ) from None
        finally:
            redis_link.resume()
        assert (await request).status_code == 201
    await asyncio.sleep(0.3)
    assert_exact_stream(on_b, await stored_log(channel), "mentor@B")


async def gap_fill_waiting(locker: asyncpg.Connection, timeout: float = 1.0) -> bool:
    """Whether another session waits for our lock on channel_publications (the gap fill's read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = await locker.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = 'channel_publications'::regclass AND NOT granted"
        )
        if waiting:
            return True
        await asyncio.sleep(0.02)
    return False


# -- 9. a client that is ahead of the node it reconnects to ------------------------------------


async def test_client_ahead_of_a_lagging_node_recovers_without_duplicates(
    cluster: Cluster, community: Community
) -> None:
    """Alice saw offset 2 on node A; node B has not delivered it yet (its Redis link is
    slow) when her reconnect lands there. Everything she saw is committed, so B must
    recover her (``recovered: true``, nothing missing) and must not deliver offset 2 to
    her a second time when it arrives."""
    redis_link, via_link = await cluster.redis_link()
    (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
        asyncio.gather(cluster.start_node(), cluster.start_node(REDIS_URL=via_link)), lounge_with_members(community, 3)
    )
    channel = lounge["channel"]

    link = await cluster.proxy(node_a)
    alice_client, _ = await cluster.connect(link.ws_url, alice)
    _, alice_seen = await cluster.subscribe(alice_client, channel)
    witness_client, _ = await cluster.connect(node_b.ws_url, mentor)  # keeps B's hub of the channel
    _, witness = await cluster.subscribe(witness_client, channel)
    talker, _ = await cluster.connect(node_a.ws_url, bob)

    await talker.publish(channel, payload(talker, message("one")))
    await alice_seen.wait_for(lambda r: len(r.stored) == 1)
    await witness.wait_for(lambda r: len(r.stored) == 1)

    redis_link.pause()  # B falls behind
    await talker.publish(channel, payload(talker, message("two")))
    await alice_seen.wait_for(lambda r: len(r.stored) == 2)
    assert len(witness.stored) == 1

    link.backends = [("127.0.0.1", node_b.port)]
    await link.sever()
    await alice_seen.wait_for(lambda r: len(r.subscribed) == 2, timeout=10)
    redis_link.resume()
    await talker.publish(channel, payload(talker, message("three")))
    await witness.wait_for(lambda r: len(r.stored) == 3)
    await alice_seen.wait_for(lambda r: r.stored and r.stored[-1] == 3)
    await asyncio.sleep(0.3)

    log = await stored_log(channel)
    assert_exact_stream(witness, log, "witness@B")
    context = alice_seen.subscribed[-1]
    assert seen(alice_seen) == log and context.recovered, (
        f"alice@B: recovered={context.recovered}, position={context.stream_position}; {describe(seen(alice_seen), log)}"
    )
