"""The realtime guarantees on a sharded realtime Redis: two ``python -m server serve`` nodes
whose ``REALTIME_REDIS_URL`` is a real 3-primary Valkey cluster (one replica each), arq on
a private single Redis, the official centrifuge-python SDK as the client.

- The cross-node suites of ``test_realtime_cluster`` (order, recovery, kill -9 of a node,
  graceful drain) run again here, unchanged, over the cluster.
- Channels spread over the shards, and each node's link subscribes a channel on the
  shard owning its slot only (``PUBSUB SHARDNUMSUB`` on every primary).
- Presence, join/leave, the control bus (a session revoked through one node closes its
  socket on the other) and the publish rate limit work across nodes on the cluster.
- A primary is killed while two nodes converse through it: its replica takes over, the
  nodes relink and catch up from the log, and every subscriber receives every
  acknowledged message exactly once, in order, without its socket dropping.
- The lounge's slot is migrated online to another primary under the same load: the old
  owner unsubscribes the channel, the nodes relink to the new owner and catch up, with
  the same guarantees.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from litestar import Litestar

from server.foundation.settings import Settings
from server.streams.broker import pubsub_channel
from tests import test_realtime_cluster as single_redis
from tests.support.cluster import (
    Cluster,
    Conversation,
    assert_exact_stream,
    lounge_with_members,
    message,
    seen,
    stored_log,
    wait_for_all,
    wait_until,
)
from tests.support.community import Community
from tests.support.redis_server import RedisServer
from tests.support.sdk import Recorder, payload, subscription
from tests.support.valkey_cluster import ValkeyCluster, slot_of

ERROR_RATE_LIMITED = 111
DISCONNECT_INVALID_TOKEN = 3500


# -- the cross-node suites, over the cluster ------------------------------------------------


async def test_order_across_nodes(sharded_cluster: Cluster, community: Community) -> None:
    await single_redis.test_order_across_nodes(sharded_cluster, community)


async def test_recovery_exactly_what_was_missed_and_past_the_limit(
    sharded_cluster: Cluster, community: Community
) -> None:
    await single_redis.test_recovery_exactly_what_was_missed_and_past_the_limit(sharded_cluster, community)


async def test_kill_9_node_loses_no_acknowledged_message(sharded_cluster: Cluster, community: Community) -> None:
    await single_redis.test_kill_9_node_loses_no_acknowledged_message(sharded_cluster, community)


async def test_graceful_drain_moves_clients_without_loss(sharded_cluster: Cluster, community: Community) -> None:
    await single_redis.test_graceful_drain_moves_clients_without_loss(sharded_cluster, community)


# -- shards ---------------------------------------------------------------------------------


async def shard_numsub(valkey: ValkeyCluster, channel: str) -> dict[int, int]:
    """Subscribers of the sharded pub/sub ``channel`` on each primary (by port)."""
    counts = {}
    for node in valkey.live_nodes:
        if node.role != "primary":
            continue
        client = aioredis.Redis(port=node.port)
        try:
            _, count = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        finally:
            await client.aclose()
        counts[node.port] = int(count)
    return counts


async def test_channels_spread_over_shards_and_nodes_subscribe_on_the_owner(
    sharded_cluster: Cluster, community: Community, valkey_cluster: ValkeyCluster
) -> None:
    """Lounges until every primary owns one; two nodes subscribe each lounge's channel on
    its owner only, a node only to the lounges its sockets follow, and a message posted
    on one node reaches a subscriber on the other."""
    (node_a, node_b), (lounge, (mentor,)) = await asyncio.gather(
        sharded_cluster.start_nodes(), lounge_with_members(community, 1)
    )
    prefix = sharded_cluster.settings.redis_prefix
    valkey_cluster.refresh()
    lounges = [lounge]
    owners = {valkey_cluster.primary_for(pubsub_channel(prefix, lounge["channel"])).port}
    while len(owners) < 3:
        another = await community.lounge(mentor, ai_reply_policy="off")
        lounges.append(another)
        owners.add(valkey_cluster.primary_for(pubsub_channel(prefix, another["channel"])).port)
    assert len(lounges) < 40, "hash tags do not spread channels over the primaries"

    watcher, _ = await sharded_cluster.connect(node_a.ws_url, mentor)
    recorders: dict[str, Recorder] = {}
    for each in lounges:
        _, recorders[each["channel"]] = await sharded_cluster.subscribe(watcher, each["channel"])
    for each in lounges:
        wire = pubsub_channel(prefix, each["channel"])
        owner = valkey_cluster.primary_for(wire).port
        counts = await shard_numsub(valkey_cluster, wire)
        assert counts == {port: int(port == owner) for port in counts}, (each["channel"], owner, counts)

    poster, _ = await sharded_cluster.connect(node_b.ws_url, mentor)
    for each in lounges:
        await poster.publish(each["channel"], payload(poster, message(f"to {each['channel']}")))
    for each in lounges:
        recorder = recorders[each["channel"]]
        await wait_until(lambda recorder=recorder: len(recorder.stored) == 1, 10, "the post crossed nodes")
        wire = pubsub_channel(prefix, each["channel"])
        assert sum((await shard_numsub(valkey_cluster, wire)).values()) == 1, "node B follows none of them"


async def test_presence_join_leave_and_control_across_nodes(sharded_cluster: Cluster, community: Community) -> None:
    """Presence and join/leave of clients on two nodes; a session revoked through node B
    disconnects its socket on node A (the control bus is a sharded channel too)."""
    (node_a, node_b), (lounge, (mentor, member)) = await asyncio.gather(
        sharded_cluster.start_nodes(), lounge_with_members(community, 2)
    )
    channel = lounge["channel"]
    alice, _ = await sharded_cluster.connect(node_a.ws_url, mentor)
    sub_a, seen_a = subscription(alice, channel, join_leave=True)
    await sub_a.subscribe()
    await sub_a.ready(timeout=10)
    bob, bob_events = await sharded_cluster.connect(node_a.ws_url, member)
    sub_b, _ = subscription(bob, channel)
    await sub_b.subscribe()
    await sub_b.ready(timeout=10)
    carol, _ = await sharded_cluster.connect(node_b.ws_url, mentor)
    sub_c, _ = subscription(carol, channel)
    await sub_c.subscribe()
    await sub_c.ready(timeout=10)

    await seen_a.wait_for(lambda r: any(j.info.client == carol.client_id for j in r.joins))
    presence = await sub_c.presence()
    assert set(presence.clients) == {alice.client_id, bob.client_id, carol.client_id}
    stats = await sub_a.presence_stats()
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await sub_c.unsubscribe()
    await seen_a.wait_for(lambda r: any(leave.info.client == carol.client_id for leave in r.leaves))
    assert set((await sub_a.presence()).clients) == {alice.client_id, bob.client_id}

    async with httpx.AsyncClient(base_url=node_b.url) as http:
        response = await http.post("/api/v1/auth/logout", headers=member.headers)
        assert response.status_code == 204, response.text
    await wait_until(lambda: bool(bob_events.disconnected), 10, "the revoked session's socket on node A closed")
    assert bob_events.disconnected[0].code == DISCONNECT_INVALID_TOKEN, bob_events.disconnected
    await seen_a.wait_for(lambda r: any(leave.info.client == bob.client_id for leave in r.leaves))


async def test_publish_rate_limit_holds_across_nodes(sharded_cluster: Cluster, community: Community) -> None:
    """One member's publishes through two nodes share one count on the cluster."""
    (node_a, node_b), (lounge, (_mentor, member)) = await asyncio.gather(
        sharded_cluster.start_nodes(PUBLISH_RATE_LIMIT="4/60"), lounge_with_members(community, 2)
    )
    channel = lounge["channel"]
    on_a, _ = await sharded_cluster.connect(node_a.ws_url, member)
    on_b, _ = await sharded_cluster.connect(node_b.ws_url, member)
    codes = []
    for index in range(6):
        client = on_a if index % 2 else on_b
        try:
            await client.publish(channel, payload(client, message(f"#{index}")), timeout=3)
            codes.append(0)
        except Exception as exc:  # the SDK raises its error type with the server's code
            codes.append(getattr(exc, "code", -1))
    assert codes == [0, 0, 0, 0, ERROR_RATE_LIMITED, ERROR_RATE_LIMITED], codes


# -- a primary fails over under load --------------------------------------------------------


@pytest.fixture
async def own_valkey_cluster() -> AsyncIterator[ValkeyCluster]:
    """A cluster of this test's own: it kills one of its primaries."""
    running = await asyncio.to_thread(ValkeyCluster().start)
    try:
        yield running
    finally:
        await asyncio.to_thread(running.close)


async def test_primary_failover_under_load_loses_and_duplicates_nothing(
    app: Litestar,
    settings: Settings,
    private_redis: RedisServer,
    own_valkey_cluster: ValkeyCluster,
    community: Community,
) -> None:
    """Publishers on both nodes keep posting while the primary owning the lounge's slot is
    killed (SIGKILL). Its replica is promoted; both nodes relink to it and catch up from
    the log. Every acknowledged message is stored once and reaches every subscriber
    exactly once, in order, and no subscriber's socket drops."""
    del app
    cluster = Cluster(settings, private_redis, realtime_url=own_valkey_cluster.url)
    try:
        (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
            cluster.start_nodes(), lounge_with_members(community, 3)
        )
        channel = lounge["channel"]
        recorders: dict[str, Recorder] = {}
        events = {}
        for who, url, account in (("mentor@A", node_a.ws_url, mentor), ("alice@B", node_b.ws_url, alice)):
            client, events[who] = await cluster.connect(url, account)
            _, recorders[who] = await cluster.subscribe(client, channel)
        publisher_a, _ = await cluster.connect(node_a.ws_url, alice)
        publisher_b, _ = await cluster.connect(node_b.ws_url, bob)

        talk = Conversation(channel)
        per_publisher = 60
        tasks = [
            asyncio.create_task(talk.publisher(publisher_a, "alice@A", per_publisher, pause=0.03)),
            asyncio.create_task(talk.publisher(publisher_b, "bob@B", per_publisher, pause=0.03)),
        ]
        try:
            await wait_until(lambda: len(talk.acked) >= 20, 15, "20 messages acknowledged before the kill")
            owner = own_valkey_cluster.primary_for(pubsub_channel(settings.redis_prefix, channel))
            own_valkey_cluster.kill(owner)
            killed_at = time.monotonic()
            promoted = await asyncio.to_thread(own_valkey_cluster.wait_failover, owner)
            failover_seconds = time.monotonic() - killed_at
            async with asyncio.timeout(40):
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        assert promoted.port != owner.port
        assert failover_seconds < 15

        log = await stored_log(channel)
        total = 2 * per_publisher
        assert [offset for offset, _ in log] == list(range(1, total + 1)), "a retry was stored twice, or a gap"
        assert {client_id for _, client_id in log} == set(talk.acked)
        await wait_for_all(recorders, total, timeout=20)
        for who, recorder in recorders.items():
            assert_exact_stream(recorder, log, who)
            assert len(events[who].connected) == 1, f"{who}'s socket dropped"
            assert len(recorder.subscribed) == 1, f"{who} had to resubscribe"

        # After the failover the cluster carries traffic again through the new primary.
        client_id = str(uuid.uuid4())
        await publisher_b.publish(channel, payload(publisher_b, message("after the failover", client_id)))
        await wait_for_all(recorders, total + 1, timeout=10)
        for who, recorder in recorders.items():
            assert seen(recorder)[-1] == (total + 1, client_id), who
    finally:
        await cluster.close()


# -- a channel's slot moves to another shard under load ------------------------------------


async def test_a_channels_slot_moving_to_another_shard_loses_and_duplicates_nothing(
    app: Litestar,
    settings: Settings,
    private_redis: RedisServer,
    own_valkey_cluster: ValkeyCluster,
    community: Community,
) -> None:
    """Publishers on both nodes keep posting while the lounge's slot is migrated online to
    another primary (``CLUSTER SETSLOT`` IMPORTING/MIGRATING, ``MIGRATE``, SETSLOT NODE). The
    old owner unsubscribes the channel's shard subscribers on its own; both nodes relink,
    subscribe on the new owner and catch up from the log. Every acknowledged message is
    stored once and reaches every subscriber exactly once, in order, without its socket
    dropping or resubscribing, and the channel is then carried by the new owner only."""
    del app
    valkey = own_valkey_cluster
    cluster = Cluster(settings, private_redis, realtime_url=valkey.url)
    try:
        (node_a, node_b), (lounge, (mentor, alice, bob)) = await asyncio.gather(
            cluster.start_nodes(), lounge_with_members(community, 3)
        )
        channel = lounge["channel"]
        wire = pubsub_channel(settings.redis_prefix, channel)
        recorders: dict[str, Recorder] = {}
        events = {}
        for who, url, account in (("mentor@A", node_a.ws_url, mentor), ("alice@B", node_b.ws_url, alice)):
            client, events[who] = await cluster.connect(url, account)
            _, recorders[who] = await cluster.subscribe(client, channel)
        publisher_a, _ = await cluster.connect(node_a.ws_url, alice)
        publisher_b, _ = await cluster.connect(node_b.ws_url, bob)
        source = valkey.primary_for(wire)
        target = next(node for node in valkey.live_nodes if node.role == "primary" and node is not source)
        assert await shard_numsub(valkey, wire) == {
            node.port: 2 * (node is source) for node in valkey.live_nodes if node.role == "primary"
        }

        talk = Conversation(channel)
        per_publisher = 60
        tasks = [
            asyncio.create_task(talk.publisher(publisher_a, "alice@A", per_publisher, pause=0.03)),
            asyncio.create_task(talk.publisher(publisher_b, "bob@B", per_publisher, pause=0.03)),
        ]
        try:
            await wait_until(lambda: len(talk.acked) >= 20, 15, "20 messages acknowledged before the move")
            await asyncio.to_thread(valkey.move_slot, slot_of(wire), target)
            acked_at_move = len(talk.acked)
            async with asyncio.timeout(40):
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        assert valkey.primary_for(wire) is target
        total = 2 * per_publisher
        assert acked_at_move < total, "the publishers were done before the slot had moved"

        # Both nodes relinked: the channel is subscribed on the new owner (one link per
        # node) and nowhere else, within a bounded time.
        expected = {node.port: 2 * (node is target) for node in valkey.live_nodes if node.role == "primary"}
        deadline = time.monotonic() + 10
        while (counts := await shard_numsub(valkey, wire)) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert counts == expected, f"the nodes did not relink to the new owner {target.port} within 10 s"

        log = await stored_log(channel)
        assert [offset for offset, _ in log] == list(range(1, total + 1)), "a retry was stored twice, or a gap"
        assert {client_id for _, client_id in log} == set(talk.acked)
        await wait_for_all(recorders, total, timeout=20)
        for who, recorder in recorders.items():
            assert_exact_stream(recorder, log, who)
            assert len(events[who].connected) == 1, f"{who}'s socket dropped"
            assert len(recorder.subscribed) == 1, f"{who} had to resubscribe"

        # After the move the channel's traffic flows through its new owner: a post through
        # node B reaches node A's subscriber by pub/sub, well before any periodic catch-up.
        client_id = str(uuid.uuid4())
        await publisher_b.publish(channel, payload(publisher_b, message("after the move", client_id)))
        await wait_for_all(recorders, total + 1, timeout=3)
        for who, recorder in recorders.items():
            assert seen(recorder)[-1] == (total + 1, client_id), who
    finally:
        await cluster.close()
