"""Channels: names, offset assignment, the publication log, and post-commit broadcast.

Offsets come from one row per channel: ``UPDATE channels SET last_offset =
last_offset + 1 ... RETURNING`` inside the writer's transaction. The row lock
serialises writers of one channel (on any node), a rolled-back transaction
gives its number back, so stored offsets are strictly increasing with no gaps.
The publication is broadcast only after the transaction commits.

A stored publication is rewritten in place (same offset, same epoch) when what
it says must no longer be readable: an edited or deleted message, an erased
author (:func:`rewrite`). After the commit, :func:`broadcast` replaces the entry
in the Redis history cache and tells every node, which replaces it in its ring.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.exceptions import RedisError

from server.foundation.state import AppState
from server.realtime.tables import Channel, ChannelPublication

ChannelKind = Literal["lounge", "thread"]

_encoder = msgspec.json.Encoder()
log = logging.getLogger("lounges.realtime")
REDIS_TIMEOUT = 1.0  # seconds a broadcast may wait for Redis; the log is the truth either way


@dataclass(frozen=True, slots=True)
class ChannelName:
    """A parsed ``lounge:<uuid>`` or ``thread:<uuid>``."""

    kind: ChannelKind
    id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, name: str) -> ChannelName | None:
        kind, sep, raw_id = name.partition(":")
        if not sep or kind not in ("lounge", "thread"):
            return None
        try:
            return cls(kind=kind, id=uuid.UUID(raw_id))  # type: ignore[arg-type]
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Publication:
    """A stored publication, ready to broadcast."""

    channel: str
    offset: int
    epoch: str
    data: dict[str, Any]
    rewrites: int = 0  # for a rewritten one: the channel's rewrite count it brought about


def new_epoch() -> str:
    return secrets.token_hex(4)


async def create_channel(name: str) -> None:
    """Create the offset sequence of a new channel (inside the caller's transaction)."""
    await Channel.insert(Channel(name=name, epoch=new_epoch(), last_offset=0))


async def delete_channel(name: str) -> None:
    await ChannelPublication.delete().where(ChannelPublication.channel == name)
    await Channel.delete().where(Channel.name == name)


async def forget_channels(state: AppState, names: list[str]) -> None:
    """After deleted channels' transaction committed: drop their Redis history caches
    (node rings go with the hubs, which close with their last subscriber). Never raises:
    the deletion is done, and a cache Redis kept only expires (nobody may read a channel
    that no longer exists)."""
    if not names:
        return
    prefix = state.settings.redis_prefix
    keys = [key for name in names for key in (history_key(prefix, name), rewrites_key(prefix, name))]
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            await state.redis.delete(*keys)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("deleted channels' history caches left to expire", extra={"error": repr(exc)})


async def has_history(name: str) -> bool:
    """Whether anything was ever published in the channel."""
    row = await Channel.select(Channel.last_offset).where(Channel.name == name).first()
    return bool(row and row["last_offset"] > 0)


async def next_offset(name: str) -> tuple[int, str]:
    """Take the channel's next offset; the row stays locked until the transaction ends."""
    rows = await Channel.raw(
        "UPDATE channels SET last_offset = last_offset + 1 WHERE name = {} RETURNING last_offset, epoch", name
    )
    if not rows:
        raise LookupError(f"no channel {name}")
    return rows[0]["last_offset"], rows[0]["epoch"]


async def append(name: str, data: dict[str, Any], offset: int | None = None, epoch: str | None = None) -> Publication:
    """Store ``data`` in the channel's log at ``offset`` (taken now when not given)."""
    if offset is None or epoch is None:
        offset, epoch = await next_offset(name)
    await ChannelPublication.insert(ChannelPublication(channel=name, offset=offset, data=data))
    return Publication(channel=name, offset=offset, epoch=epoch, data=data)


async def rewrite(name: str, offset: int, data: dict[str, Any]) -> Publication:
    """Replace the stored publication at ``offset`` with ``data`` (inside the caller's
    transaction). Offsets stay gapless: the entry keeps its offset and epoch, only what
    it says changes. The channel's ``rewrites`` count goes up by one, so a cache of the
    log that missed this rewrite's broadcast can tell. Pass the result to
    :func:`broadcast` as ``rewritten`` after the commit."""
    rows = await ChannelPublication.raw(
        """WITH counted AS (
               UPDATE channels SET rewrites = rewrites + 1 WHERE name = {} RETURNING epoch, rewrites
           )
           UPDATE channel_publications p SET data = {}::jsonb FROM counted
           WHERE p.channel = {} AND p."offset" = {} RETURNING counted.epoch, counted.rewrites""",
        name,
        _encoder.encode(data).decode(),
        name,
        offset,
    )
    if not rows:
        raise LookupError(f"no publication {offset} in {name}")
    return Publication(channel=name, offset=offset, epoch=rows[0]["epoch"], data=data, rewrites=rows[0]["rewrites"])


def pubsub_channel(prefix: str, name: str) -> str:
    """The Redis pub/sub channel carrying ``name``'s publications between nodes."""
    return f"{prefix}:ch:{name}"


def history_key(prefix: str, name: str) -> str:
    """The Redis sorted set caching ``name``'s recent publications by offset."""
    return f"{prefix}:hist:{name}"


def rewrites_key(prefix: str, name: str) -> str:
    """The channel's rewrite count the history cache has applied (see :func:`rewrite`)."""
    return f"{prefix}:hist-rewrites:{name}"


WIRE_PUBLICATION, WIRE_JOIN, WIRE_LEAVE, WIRE_REWRITE = 0, 1, 2, 3


class Wire(msgspec.Struct, array_like=True):
    """What travels over Redis pub/sub: kind, offset (0 when ephemeral), epoch, raw JSON data.

    ``WIRE_REWRITE`` carries the new version of an already stored publication at
    ``offset`` and, last, the channel's rewrite count it brought about."""

    kind: int
    offset: int
    epoch: str
    data: msgspec.Raw
    rewrites: int = 0


class _PlainWire(msgspec.Struct, array_like=True):
    """:class:`Wire` without ``rewrites``, for everything but rewrites (four fields, as ever)."""

    kind: int
    offset: int
    epoch: str
    data: msgspec.Raw


def encode_wire(kind: int, offset: int, epoch: str, data: bytes, rewrites: int = 0) -> bytes:
    if rewrites:
        return _encoder.encode(Wire(kind=kind, offset=offset, epoch=epoch, data=msgspec.Raw(data), rewrites=rewrites))
    return _encoder.encode(_PlainWire(kind=kind, offset=offset, epoch=epoch, data=msgspec.Raw(data)))


async def broadcast(state: AppState, publications: list[Publication], *, rewritten: Sequence[Publication] = ()) -> None:
    """Fan stored ``publications`` out to every node and the history cache, after
    applying ``rewritten`` ones (see :func:`rewrite`) to the cache and every node's ring.

    Call after the transaction committed. Nodes may receive publications of
    one channel out of order (two writers publish concurrently); they restore
    the order by offset and fill gaps from the log.

    A rewritten entry replaces whatever the cache holds at its offset and is added
    even when nothing was there: should the original's own broadcast still be on
    its way (its writer committed first but publishes later), the cache ends up with
    two entries at one offset, which :func:`server.realtime.history.from_cache`
    never serves as a gapless run, so the log answers instead. Rewrites travel on
    the channel's pub/sub ahead of ``publications``, so a node has applied them
    before it delivers what follows. With rewrites the whole pipeline is one
    MULTI/EXEC, so the cache's content and its rewrite count (:func:`rewrites_key`)
    change together; a cache whose count is not the channel's is not served.

    Never raises (the publications are committed, so the write succeeded): this process's
    own sockets get everything at once through ``state.local_delivery`` (the copy that
    comes back through Redis is dropped by offset); when Redis does not take it in
    time, every other node reads it from the log once its link is back, or at its
    periodic catch-up.
    """
    if not publications and not rewritten:
        return
    settings = state.settings
    local = state.local_delivery
    async with state.redis.pipeline(transaction=bool(rewritten)) as pipe:
        for publication in rewritten:
            data = _encoder.encode(publication.data)
            key = history_key(settings.redis_prefix, publication.channel)
            pipe.zremrangebyscore(key, publication.offset, publication.offset)
            pipe.zadd(
                key, {encode_wire(WIRE_PUBLICATION, publication.offset, publication.epoch, data): publication.offset}
            )
            pipe.zremrangebyrank(key, 0, -settings.history_cache_size - 1)
            pipe.expire(key, settings.history_cache_ttl)
            pipe.set(
                rewrites_key(settings.redis_prefix, publication.channel),
                publication.rewrites,
                ex=settings.history_cache_ttl,
            )
            rewrite_wire = encode_wire(WIRE_REWRITE, publication.offset, publication.epoch, data, publication.rewrites)
            pipe.publish(pubsub_channel(settings.redis_prefix, publication.channel), rewrite_wire)
            if local is not None:
                local(publication.channel, rewrite_wire)
        for publication in publications:
            payload = encode_wire(
                WIRE_PUBLICATION, publication.offset, publication.epoch, _encoder.encode(publication.data)
            )
            key = history_key(settings.redis_prefix, publication.channel)
            pipe.zadd(key, {payload: publication.offset})
            pipe.zremrangebyrank(key, 0, -settings.history_cache_size - 1)
            pipe.expire(key, settings.history_cache_ttl)
            pipe.publish(pubsub_channel(settings.redis_prefix, publication.channel), payload)
            if local is not None:
                local(publication.channel, payload)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("broadcast through Redis failed; nodes catch up from the log", extra={"error": repr(exc)})


def ephemeral_wire(data: dict[str, Any]) -> bytes:
    """``data`` as an ephemeral publication on the wire (no offset, not stored)."""
    return encode_wire(WIRE_PUBLICATION, 0, "", _encoder.encode(data))


async def broadcast_ephemeral(state: AppState, channel: str, data: dict[str, Any]) -> None:
    """Send ``data`` to the channel's current subscribers only: no offset, not stored
    (typing indicators, read receipts, AI deltas, personal notifications). Never raises:
    while Redis is away only this process's sockets get it."""
    payload = ephemeral_wire(data)
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            await state.redis.publish(pubsub_channel(state.settings.redis_prefix, channel), payload)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("ephemeral broadcast failed; this node only", extra={"channel": channel, "error": repr(exc)})
        if state.local_delivery is not None:
            state.local_delivery(channel, payload)
