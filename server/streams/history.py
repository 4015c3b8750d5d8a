"""Reading a channel's stream: its top position and the publications after an offset.

Sources, fastest first: the node's in-memory ring of recent publications (see
:mod:`server.gateway.node`), the Redis history cache (bounded, may have holes
after a crash or a flush), and the ``channel_publications`` log in PostgreSQL,
which is complete. A source is used only if it returns a gapless run, and a
cache only if it applied every rewrite of the channel (edits, deletions,
erasure: ``channels.rewrites``), so a rewrite whose broadcast was lost never
lets an earlier version out.
"""

from __future__ import annotations

import msgspec

from server.foundation.redis import REDIS_ERRORS
from server.foundation.state import AppState
from server.streams.broker import Wire, history_key, rewrites_key
from server.streams.tables import Channel, ChannelPublication

_wire_decoder = msgspec.json.Decoder(Wire)

# Empty a cache that missed a rewrite and record the rewrite count it starts again from, in
# one step on the channel's shard (KEYS: history_key, rewrites_key; ARGV: count, TTL seconds).
_RESET = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
"""

Entry = tuple[int, bytes]  # (offset, raw JSON data)


async def stream_position(name: str) -> tuple[int, str, int] | None:
    """The channel's last committed offset, epoch and rewrite count, or ``None`` if it does not exist."""
    rows = await Channel.raw("SELECT last_offset, epoch, rewrites FROM channels WHERE name = {}", name)
    return (rows[0]["last_offset"], rows[0]["epoch"], rows[0]["rewrites"]) if rows else None


async def stream_tops(names: list[str]) -> dict[str, tuple[int, int]]:
    """The last committed offset and rewrite count of each of ``names`` (missing channels are absent)."""
    rows = await Channel.raw("SELECT name, last_offset, rewrites FROM channels WHERE name = ANY({})", names)
    return {row["name"]: (row["last_offset"], row["rewrites"]) for row in rows}


def contiguous(entries: list[Entry], after: int) -> bool:
    return all(offset == after + i + 1 for i, (offset, _) in enumerate(entries))


async def from_cache(state: AppState, name: str, after: int, limit: int, rewrites: int) -> list[Entry]:
    """Up to ``limit`` cached publications after ``after``. None when the cache has not
    applied exactly ``rewrites`` rewrites (the channel's count): one whose broadcast was
    lost would leave an earlier version in it, so a cache that is behind is emptied
    for the broadcasts to refill. None either when it holds two versions of one offset
    (a rewrite raced the original's broadcast: only the log knows which is current)."""
    prefix = state.settings.redis_prefix
    key, count_key = history_key(prefix, name), rewrites_key(prefix, name)
    redis = state.realtime_redis
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(count_key)
        pipe.zrangebyscore(key, f"({after}", "+inf", start=0, num=limit + 1)
        applied, raw = await pipe.execute()
    applied = int(applied or 0)
    if applied != rewrites:
        if applied < rewrites:
            await redis.eval(_RESET, 2, key, count_key, str(rewrites), str(state.settings.history_cache_ttl))  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
        return []
    entries: list[Entry] = []
    for payload in raw:
        wire = _wire_decoder.decode(payload)
        if entries and entries[-1][0] == wire.offset:
            return []
        entries.append((wire.offset, bytes(wire.data)))
    return entries[:limit]


async def from_log(name: str, after: int, limit: int) -> list[Entry]:
    rows = await ChannelPublication.raw(
        'SELECT "offset", data::text AS data FROM channel_publications WHERE channel = {} AND "offset" > {} '
        'ORDER BY "offset" LIMIT {}',
        name,
        after,
        limit,
    )
    return [(row["offset"], row["data"].encode()) for row in rows]


async def publications_after(
    state: AppState, name: str, after: int, top: int, limit: int, *, rewrites: int
) -> list[Entry]:
    """Publications ``after+1 .. min(top, after+limit)``, gapless; ``rewrites`` is the
    channel's rewrite count as the caller knows it (see :func:`from_cache`)."""
    wanted = min(top - after, limit)
    if wanted <= 0:
        return []
    try:
        cached = await from_cache(state, name, after, wanted, rewrites)
    except REDIS_ERRORS:  # the cache is an optimisation: Redis trouble falls back to the log
        cached = []
    if len(cached) == wanted and contiguous(cached, after):
        return cached
    return await from_log(name, after, wanted)


async def latest(name: str, limit: int) -> list[Entry]:
    """The newest ``limit`` publications, oldest first."""
    rows = await ChannelPublication.raw(
        'SELECT "offset", data::text AS data FROM channel_publications WHERE channel = {} '
        'ORDER BY "offset" DESC LIMIT {}',
        name,
        limit,
    )
    return [(row["offset"], row["data"].encode()) for row in reversed(rows)]
