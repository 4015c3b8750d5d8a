"""A storm of sockets does not storm Redis with connections.

Every socket that subscribes or leaves makes Redis calls (presence, online records). With
redis-py's default pool each call that finds no free connection opens another: a node
with 10,000 sockets opened ~10,000 connections when they came or went at once, Redis's
default ``maxclients``, refusing every other node and worker. A node keeps at most
``REDIS_MAX_CONNECTIONS`` per Redis server; the storm's calls wait for a free one.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from tests.support.cluster import Cluster, lounge_with_members
from tests.support.community import Community
from tests.support.rawws import RawClient

SOCKETS = 300
LIMIT = 8


async def _peak_clients(client: redis.Redis, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        info = await client.info("clients")
        peak = max(peak, int(info["connected_clients"]))
        await asyncio.sleep(0.005)
    return peak


async def test_a_socket_storm_stays_within_the_redis_pool(cluster: Cluster, community: Community) -> None:
    (lounge, (mentor,)), node = await asyncio.gather(
        lounge_with_members(community, 1), cluster.start_node(REDIS_MAX_CONNECTIONS=str(LIMIT))
    )
    channel = lounge["channel"]
    watcher = redis.Redis.from_url(cluster.redis.url)
    try:
        idle = int((await watcher.info("clients"))["connected_clients"])  # the node's links, this client
        sockets = await asyncio.gather(*(RawClient.open(node.ws_url) for _ in range(SOCKETS)))

        async def join(sock: RawClient) -> None:
            await sock.connect(mentor.access_token)
            reply = await sock.call("subscribe", {"channel": channel})
            assert "subscribe" in reply, reply

        stop = asyncio.Event()
        watching = asyncio.create_task(_peak_clients(watcher, stop))
        await asyncio.gather(*(join(sock) for sock in sockets))  # every one joins the lounge's presence
        await asyncio.gather(*(sock.close() for sock in sockets))  # and leaves it, all at once
        await asyncio.sleep(2)  # the node's leaving calls run after the sockets closed
        stop.set()
        peak = await watching
        assert peak <= idle + LIMIT, f"{peak} Redis connections at the peak, {idle} before the storm"
        print(f"{SOCKETS} sockets joined and left at once: at most {peak} Redis connections ({idle} before)")
    finally:
        await watcher.aclose()
