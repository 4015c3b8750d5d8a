"""Who has a socket open right now, across every node: the "online" record.

Personal channels (``user#<id>``) have no presence of their own (no hub keeps them), so
the gateway keeps one small record per user that the domain and the workers read, for
instance to push to a phone only when none of its user's sockets is connected:

    ``{prefix}:online:<user id>`` — a sorted set: node id → until when (Unix seconds)
    that node holds a socket of the user.

A node enters itself when the user's first socket on it authenticates
(:func:`mark_online`), refreshes its users with the presence refresh
(:func:`queue_refresh`, every ``PRESENCE_TTL / 3`` seconds) and leaves when the user's
last socket on it goes (:func:`mark_offline`). A node that dies stops refreshing, so its
entries lapse within ``PRESENCE_TTL`` seconds; whole keys expire after twice that. A user
is online while any entry is in the future (:func:`online_users`). Nodes and workers
compare with their own clocks, as presence does: keep them in sync (NTP).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence

from server.foundation.redis import RealtimePipeline, RealtimeRedis


def online_key(prefix: str, user_id: uuid.UUID | str) -> str:
    """The sorted set of the nodes holding a socket of ``user_id``."""
    return f"{prefix}:online:{user_id}"


async def mark_online(redis: RealtimeRedis, prefix: str, user_id: uuid.UUID, node_id: str, ttl: int) -> None:
    """``node_id`` holds a socket of ``user_id`` (for ``ttl`` seconds unless refreshed);
    entries of nodes that lapsed are dropped on the way."""
    key, now = online_key(prefix, user_id), time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {node_id: now + ttl})
        pipe.expire(key, ttl * 2)
        await pipe.execute()


async def mark_offline(redis: RealtimeRedis, prefix: str, user_id: uuid.UUID, node_id: str) -> None:
    """``node_id`` holds no socket of ``user_id`` any more."""
    await redis.zrem(online_key(prefix, user_id), node_id)


def queue_refresh(pipe: RealtimePipeline, prefix: str, user_ids: Iterable[uuid.UUID], node_id: str, ttl: int) -> bool:
    """Queue on ``pipe`` the refresh of ``node_id``'s entries for ``user_ids``; whether any was queued."""
    until = time.time() + ttl
    queued = False
    for user_id in user_ids:
        key = online_key(prefix, user_id)
        pipe.zadd(key, {node_id: until})
        pipe.expire(key, ttl * 2)
        queued = True
    return queued


async def online_users(redis: RealtimeRedis, prefix: str, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``user_ids`` with a socket connected to any node now (one round trip)."""
    if not user_ids:
        return set()
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.zcount(online_key(prefix, user_id), f"({now}", "+inf")
        counts = await pipe.execute()
    return {user_id for user_id, count in zip(user_ids, counts, strict=True) if count}
