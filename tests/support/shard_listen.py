"""Hear a sharded pub/sub channel of the realtime Redis from a test, as a node's link does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from server.foundation.redis import RealtimeRedis
from server.streams.sharded_pubsub import ShardLink, discover_shards, shard_of


@contextlib.asynccontextmanager
async def listening(redis: RealtimeRedis, channel: str) -> AsyncIterator[asyncio.Queue[bytes]]:
    """A queue of what is published on ``channel`` from when the block starts (subscription confirmed)."""
    [shard] = [shard for shard in await discover_shards(redis) if shard.name == shard_of(redis, channel)]
    link = ShardLink(shard)
    await link.connect()
    heard: asyncio.Queue[bytes] = asyncio.Queue()
    reader = asyncio.create_task(link.run(lambda _channel, data: heard.put_nowait(data)))
    try:
        await link.subscribe(channel)
        yield heard
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await link.close()
