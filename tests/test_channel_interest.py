"""A node subscribes in Redis only to the channels its own sockets use, so a lounge's
traffic never reaches a node where nobody follows it (what lets nodes and shards add up)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from server.streams.broker import pubsub_channel
from tests.support.cluster import Cluster, lounge_with_members, message
from tests.support.community import Community
from tests.support.sdk import payload


async def numsub(redis: aioredis.Redis, channel: str) -> int:
    """Subscribers of the sharded pub/sub ``channel`` (the nodes' links)."""
    _, count = await redis.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(count)


async def test_a_node_hears_only_the_channels_its_sockets_follow(cluster: Cluster, community: Community) -> None:
    (node_a, node_b), (busy, (mentor, member)), (quiet, (quiet_mentor,)) = (
        await cluster.start_nodes(),
        await lounge_with_members(community, 2),
        await lounge_with_members(community, 1),
    )
    prefix = cluster.settings.redis_prefix
    redis = aioredis.Redis.from_url(cluster.redis.url)
    try:
        busy_wire, quiet_wire = pubsub_channel(prefix, busy["channel"]), pubsub_channel(prefix, quiet["channel"])
        # Node A follows the busy lounge; node B only the quiet one.
        on_a, _ = await cluster.connect(node_a.ws_url, member)
        _, seen_on_a = await cluster.subscribe(on_a, busy["channel"])
        on_b, _ = await cluster.connect(node_b.ws_url, quiet_mentor)
        _, seen_on_b = await cluster.subscribe(on_b, quiet["channel"])
        assert await numsub(redis, busy_wire) == 1, "only node A listens to the busy lounge"
        assert await numsub(redis, quiet_wire) == 1, "only node B listens to the quiet lounge"

        # A burst in the busy lounge, posted through node B: B publishes it but never hears it back.
        poster, _ = await cluster.connect(node_b.ws_url, mentor)
        for index in range(20):
            await poster.publish(busy["channel"], payload(poster, message(f"busy #{index}")))
        await seen_on_a.wait_for(lambda r: len(r.stored) == 20)
        assert seen_on_b.publications == []
        assert await numsub(redis, busy_wire) == 1

        # Once its last follower leaves, node A stops listening too.
        await on_a.disconnect()
        async with asyncio.timeout(10):
            while await numsub(redis, busy_wire):
                await asyncio.sleep(0.05)
        assert await numsub(redis, quiet_wire) == 1
    finally:
        await redis.aclose()
