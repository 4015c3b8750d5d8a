"""The broker seam: publications over Redis pub/sub to every node, and the history cache.

What a writer stored in the channel log (:mod:`server.streams.channels`) is handed here
after its transaction commits: :func:`broadcast` adds it to the Redis history cache and
publishes it on the channel's pub/sub, where every node's gateway hears it. Ephemeral
messages (typing, deltas, notifications) are published only. Never raises: the log is
the truth, and nodes catch up from it.

All of it is on the realtime Redis (``state.realtime_redis``), which may be a Redis
Cluster: a channel's keys and its pub/sub channel share the hash tag ``{<channel>}``, so
they live on one shard, and publications use sharded pub/sub (``SPUBLISH``; see
:mod:`server.streams.sharded_pubsub`). Nothing here spans two channels' keys in one
atomic step, which a cluster could not do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from server.foundation import metrics
from server.foundation.redis import REDIS_ERRORS, RealtimePipeline, RealtimeRedis
from server.foundation.state import AppState
from server.streams.channels import Publication

_encoder = msgspec.json.Encoder()
log = logging.getLogger("lounges.realtime")
REDIS_TIMEOUT = 1.0  # seconds a broadcast may wait for Redis; the log is the truth either way
_BROADCAST_SECONDS = metrics.REDIS_COMMAND_SECONDS.labels("broadcast")
_BROADCAST_ERRORS = metrics.REDIS_ERRORS.labels("broadcast")
_PUBLISH_SECONDS = metrics.REDIS_COMMAND_SECONDS.labels("publish")
_PUBLISH_ERRORS = metrics.REDIS_ERRORS.labels("publish")


async def forget_channels(state: AppState, names: list[str]) -> None:
    """After deleted channels' transaction committed: drop their Redis history caches
    (node rings go with the hubs, which close with their last subscriber). Never raises:
    the deletion is done, and a cache Redis kept only expires (nobody may read a channel
    that no longer exists)."""
    if not names:
        return
    prefix = state.settings.redis_prefix
    try:
        async with asyncio.timeout(REDIS_TIMEOUT), state.realtime_redis.pipeline(transaction=False) as pipe:
            for name in names:  # one DEL per channel: a cluster refuses keys of several slots in one
                pipe.delete(history_key(prefix, name), rewrites_key(prefix, name))
            await pipe.execute()
    except REDIS_ERRORS as exc:
        log.warning("deleted channels' history caches left to expire", extra={"error": repr(exc)})


def pubsub_channel(prefix: str, name: str) -> str:
    """The Redis (sharded) pub/sub channel carrying ``name``'s publications between nodes."""
    return f"{prefix}:ch:{{{name}}}"


def channel_of(prefix: str, pubsub: bytes) -> str | None:
    """The channel name a :func:`pubsub_channel` carries, or None for any other pub/sub channel."""
    head = f"{prefix}:ch:{{".encode()
    if not (pubsub.startswith(head) and pubsub.endswith(b"}")):
        return None
    return pubsub[len(head) : -1].decode()


def history_key(prefix: str, name: str) -> str:
    """The Redis sorted set caching ``name``'s recent publications by offset."""
    return f"{prefix}:hist:{{{name}}}"


def rewrites_key(prefix: str, name: str) -> str:
    """The channel's rewrite count the history cache has applied (see :func:`broadcast`)."""
    return f"{prefix}:hist-rewrites:{{{name}}}"


# Replace the cached publication at ARGV[1] by ARGV[2], trim the cache to ARGV[3] entries,
# set both keys' expiry to ARGV[4] seconds and the applied rewrite count to ARGV[5]: one
# atomic step on the channel's shard (KEYS: history_key, rewrites_key).
_REWRITE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4])
"""


def publish(redis: RealtimeRedis | RealtimePipeline, pubsub: str, payload: bytes) -> Any:
    """``SPUBLISH`` ``payload`` on the shard owning ``pubsub`` (queued, on a pipeline)."""
    return redis.execute_command("SPUBLISH", pubsub, payload)


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
    two entries at one offset, which :func:`server.streams.history.from_cache`
    never serves as a gapless run, so the log answers instead. Rewrites travel on
    the channel's pub/sub ahead of ``publications``, so a node has applied them
    before it delivers what follows (one channel's commands go to one shard, in
    order). Each rewrite changes the cache's entry and its rewrite count
    (:func:`rewrites_key`) in one script, so they change together; a cache whose
    count is not the channel's is not served.

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
    async with state.realtime_redis.pipeline(transaction=False) as pipe:
        for publication in rewritten:
            data = _encoder.encode(publication.data)
            cached = encode_wire(WIRE_PUBLICATION, publication.offset, publication.epoch, data)
            pipe.eval(  # redis-py types eval's arguments as str; it sends bytes and ints as they are
                _REWRITE,
                2,
                history_key(settings.redis_prefix, publication.channel),
                rewrites_key(settings.redis_prefix, publication.channel),
                publication.offset,  # type: ignore[arg-type]
                cached,  # type: ignore[arg-type]
                settings.history_cache_size,  # type: ignore[arg-type]
                settings.history_cache_ttl,  # type: ignore[arg-type]
                publication.rewrites,  # type: ignore[arg-type]
            )
            rewrite_wire = encode_wire(WIRE_REWRITE, publication.offset, publication.epoch, data, publication.rewrites)
            publish(pipe, pubsub_channel(settings.redis_prefix, publication.channel), rewrite_wire)
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
            publish(pipe, pubsub_channel(settings.redis_prefix, publication.channel), payload)
            if local is not None:
                local(publication.channel, payload)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await pipe.execute()
        except REDIS_ERRORS as exc:
            if metrics.collecting:
                _BROADCAST_ERRORS.inc()
            log.warning("broadcast through Redis failed; nodes catch up from the log", extra={"error": repr(exc)})
        if metrics.collecting:
            _BROADCAST_SECONDS.observe(time.perf_counter() - started)


def ephemeral_wire(data: dict[str, Any]) -> bytes:
    """``data`` as an ephemeral publication on the wire (no offset, not stored)."""
    return encode_wire(WIRE_PUBLICATION, 0, "", _encoder.encode(data))


async def broadcast_ephemeral(state: AppState, channel: str, data: dict[str, Any]) -> None:
    """Send ``data`` to the channel's current subscribers only: no offset, not stored
    (typing indicators, read receipts, AI deltas, personal notifications). Never raises:
    while Redis is away only this process's sockets get it."""
    payload = ephemeral_wire(data)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            await publish(state.realtime_redis, pubsub_channel(state.settings.redis_prefix, channel), payload)
        if metrics.collecting:
            _PUBLISH_SECONDS.observe(time.perf_counter() - started)
    except REDIS_ERRORS as exc:
        if metrics.collecting:
            _PUBLISH_ERRORS.inc()
        log.warning("ephemeral broadcast failed; this node only", extra={"channel": channel, "error": repr(exc)})
        if state.local_delivery is not None:
            state.local_delivery(channel, payload)
