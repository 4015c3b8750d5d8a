"""Reading a channel's stream: its top position and the publications after an offset.

Sources, fastest first: the node's in-memory ring of recent publications (see
:mod:`server.realtime.node`), the Redis history cache (bounded, may have holes
after a crash or a flush), and the ``channel_publications`` log in PostgreSQL,
which is complete. A source is used only if it returns a gapless run.
"""

from __future__ import annotations

import msgspec
from redis.exceptions import RedisError

from server.core.state import AppState
from server.realtime.channels import Wire, history_key
from server.realtime.tables import Channel, ChannelPublication

_wire_decoder = msgspec.json.Decoder(Wire)

Entry = tuple[int, bytes]  # (offset, raw JSON data)


async def stream_top(name: str) -> tuple[int, str] | None:
    """The channel's last committed offset and epoch, or ``None`` if it does not exist."""
    row = await Channel.select(Channel.last_offset, Channel.epoch).where(Channel.name == name).first()
    return (row["last_offset"], row["epoch"]) if row else None


async def stream_tops(names: list[str]) -> dict[str, int]:
    """The last committed offset of each of ``names`` (missing channels are absent)."""
    rows = await Channel.raw("SELECT name, last_offset FROM channels WHERE name = ANY({})", names)
    return {row["name"]: row["last_offset"] for row in rows}


def contiguous(entries: list[Entry], after: int) -> bool:
    return all(offset == after + i + 1 for i, (offset, _) in enumerate(entries))


async def from_cache(state: AppState, name: str, after: int, limit: int) -> list[Entry]:
    """Up to ``limit`` cached publications after ``after``; none when the cache holds two
    versions of one offset (a rewrite raced the original's broadcast: only the log knows
    which is current)."""
    raw = await state.redis.zrangebyscore(
        history_key(state.settings.redis_prefix, name), f"({after}", "+inf", start=0, num=limit + 1
    )
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


async def publications_after(state: AppState, name: str, after: int, top: int, limit: int) -> list[Entry]:
    """Publications ``after+1 .. min(top, after+limit)``, gapless."""
    wanted = min(top - after, limit)
    if wanted <= 0:
        return []
    try:
        cached = await from_cache(state, name, after, wanted)
    except RedisError:  # the cache is an optimisation: Redis trouble falls back to the log
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
