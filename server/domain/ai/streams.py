"""A running coach reply's lease, its end, and the reaper of replies whose worker died.

A reply is *live* from the moment a worker takes it until it is stored:

- ``{prefix}:ai:live`` (hash): stream id → :class:`LiveReply`, what is needed to end the
  reply without its worker (the asker, the provider, the tokens read).
- ``{prefix}:ai:lease:<stream id>``: the worker's id, expiring after
  ``AI_STREAM_LEASE_SECONDS`` unless :class:`LeaseKeeper` renews it (every third of that).
- the asker's slot: a member of ``{prefix}:ai:active:<user>`` (a sorted set) scored by
  the lease's expiry, so a slot whose worker died frees itself.

Its snapshot for late subscribers (:class:`StreamState`) lives in ``{prefix}:ai:streams:<channel>``
and its cancel flag in ``{prefix}:ai:cancel:<stream id>``.

A live reply without a lease lost its worker (kill -9, out of memory, a lost host).
:func:`reap_dead_replies` (every worker, each second; the web node when someone
subscribes to the channel or cancels the reply) ends it: the text streamed so far
stored as ``ai.error`` with ``error`` ``worker_lost``, its usage-ledger row, the slot
and the snapshot freed, and its arq job removed (arq would hold the job for as long
as its longest job may run and then replay it). :func:`end_reply` stores a stream's
reply at most once, whoever calls it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from functools import partial
from types import TracebackType
from typing import Any

import msgspec
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.exceptions import RedisError

from server.domain.ai.metrics import reply_ended
from server.domain.chat.messages import ReplyAlreadyStored, do_store_ai_reply
from server.domain.llm.providers import Usage, estimate_text_tokens
from server.domain.tables.ai import AIUsage
from server.domain.tables.chat import MessageStatus
from server.foundation.redis import queue_name
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work
from server.streams.broker import broadcast, publish, pubsub_channel
from server.streams.channels import Publication

log = logging.getLogger("lounges.coach")

WORKER_LOST = "worker_lost"


class StreamState(msgspec.Struct):
    """A reply being streamed: what a late subscriber needs for its ``ai.snapshot``."""

    stream_id: str
    channel: str
    user_id: str
    reply_to: int
    seq: int = 0
    text: str = ""


def streams_key(state: AppState, channel: str) -> str:
    return f"{state.settings.redis_prefix}:ai:streams:{channel}"


def cancel_key(state: AppState, stream_id: str) -> str:
    return f"{state.settings.redis_prefix}:ai:cancel:{stream_id}"


def active_key(state: AppState, user_id: uuid.UUID | str) -> str:
    return f"{state.settings.redis_prefix}:ai:active:{user_id}"


def reply_job_id(stream_id: str) -> str:
    """The arq job that runs the reply ``stream_id``."""
    return f"coach:{stream_id}"


class LiveReply(msgspec.Struct):
    """A reply a worker is running: enough to end it as ``worker_lost`` without that worker."""

    stream_id: str
    channel: str
    user_id: str
    reply_to: int
    worker: str
    provider: str = "none"
    model: str = "none"
    input_tokens: int = 0
    citations: list[Any] = msgspec.field(default_factory=list)


def process_id(role: str) -> str:
    """Who holds a lease or ends a reply, for logs: ``worker:host:pid``."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def live_key(state: AppState) -> str:
    return f"{state.settings.redis_prefix}:ai:live"


def lease_key(state: AppState, stream_id: str) -> str:
    return f"{state.settings.redis_prefix}:ai:lease:{stream_id}"


def ending_key(state: AppState, stream_id: str) -> str:
    return f"{state.settings.redis_prefix}:ai:ending:{stream_id}"


def _lease_ms(state: AppState) -> int:
    return int(state.settings.ai_stream_lease_seconds * 1000)


# Scores are Redis's own clock, so several hosts' clocks never disagree about a lease.
# A slot key written by an older version (a counter) is replaced.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('TYPE', KEYS[1]).ok ~= 'zset' then
  redis.call('DEL', KEYS[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"""

# Renews only a reply that is still live and not being ended by a reaper (KEYS[4]): once
# one took it, its worker learns so here.
_RENEW = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[3]))
return 1
"""

# The snapshot that includes a frame of the reply, unless a reaper took the reply (claimed
# or ended it); the frame is published after it (on the realtime Redis, maybe another
# server). The reaper claims before it reads the snapshot, so what it stores holds every
# frame subscribers were sent (and at most one they were not, should the publish fail).
_SNAPSHOT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], 3600)
return 1
"""


async def _eval(state: AppState, script: str, keys: tuple[str, ...], *args: str | bytes | int) -> Any:
    """Run the Lua ``script`` on ``keys`` with ``args``. redis-py types ``eval``'s arguments as
    ``str`` (it sends bytes and ints as they are) and its result as ``Awaitable[str] | str``
    (redis-py#2399), hence the one ignore."""
    return await state.redis.eval(script, len(keys), *keys, *args)  # type: ignore[misc, arg-type]


async def acquire_slot(state: AppState, user_id: uuid.UUID | str, stream_id: str) -> bool:
    """Take one of the user's ``AI_MAX_CONCURRENT_PER_USER`` slots for ``stream_id``.

    A refused ask changes nothing: it neither holds a slot nor extends anyone's."""
    taken = await _eval(
        state,
        _ACQUIRE,
        (active_key(state, user_id),),
        stream_id,
        _lease_ms(state),
        state.settings.ai_max_concurrent_per_user,
    )
    return bool(taken)


async def begin_reply(state: AppState, live: LiveReply) -> None:
    """List the reply as live under its worker's lease (both at once: never one without the other)."""
    async with state.redis.pipeline(transaction=True) as pipe:
        # redis-py types hash values as str; bytes are sent as they are.
        pipe.hset(live_key(state), live.stream_id, msgspec.json.encode(live))  # type: ignore[arg-type]
        pipe.set(lease_key(state, live.stream_id), live.worker, px=_lease_ms(state))
        await pipe.execute()


class LeaseKeeper:
    """Renews a live reply's lease and its asker's slot every third of the lease, writing
    the reply's current :class:`LiveReply` with it. ``lost`` is set once the reply is no
    longer live: a reaper, taking this worker for dead (a stall longer than the lease), ended it."""

    def __init__(self, state: AppState, live: LiveReply) -> None:
        self.state = state
        self.live = live
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._renew(), name=f"coach-lease-{self.live.stream_id}")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def renew(self) -> None:
        """Renew now, saving the current :class:`LiveReply` (e.g. once its provider is known)."""
        state, live = self.state, self.live
        keys = (
            live_key(state),
            lease_key(state, live.stream_id),
            active_key(state, live.user_id),
            ending_key(state, live.stream_id),
        )
        kept = await _eval(
            state, _RENEW, keys, live.stream_id, live.worker, _lease_ms(state), msgspec.json.encode(live)
        )
        if not kept:
            self._taken()

    async def publish(self, snapshot: StreamState, frame: bytes) -> bool:
        """Send ``frame`` (wire bytes) on the reply's channel with ``snapshot``; False, sending
        nothing, once a reaper took the reply (``lost`` is set then)."""
        state, live = self.state, self.live
        keys = (live_key(state), ending_key(state, live.stream_id), streams_key(state, live.channel))
        if not await _eval(state, _SNAPSHOT, keys, live.stream_id, msgspec.json.encode(snapshot)):
            self._taken()
            return False
        await publish(state.realtime_redis, pubsub_channel(state.settings.redis_prefix, live.channel), frame)
        return True

    def _taken(self) -> None:
        if not self.lost.is_set():
            log.warning("coach reply was taken by a reaper", extra={"stream_id": self.live.stream_id})
            self.lost.set()

    async def _renew(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self.state.settings.ai_stream_lease_seconds / 3)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:  # the stream itself fails on the same outage
                log.warning(
                    "coach reply lease not renewed", extra={"stream_id": self.live.stream_id, "error": repr(exc)}
                )


def _owners(channel: str) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The lounge and the thread a reply's ledger row points at (``lounge:<id>`` / ``thread:<id>``)."""
    kind, _, ident = channel.partition(":")
    return (uuid.UUID(ident), None) if kind == "lounge" else (None, uuid.UUID(ident))


async def end_reply(
    state: AppState, live: LiveReply, *, text: str, status: MessageStatus, error_code: str, usage: Usage
) -> Publication | None:
    """Store the reply with its usage-ledger row (one unit of work), then forget its live state
    and broadcast it. Returns None, storing nothing, when the stream's reply is stored already."""
    lounge_id, thread_id = _owners(live.channel)
    try:
        async with unit_of_work(state.engine):
            publication, message_id = await do_store_ai_reply(
                state,
                channel=live.channel,
                reply_to=live.reply_to,
                stream_id=live.stream_id,
                text=text,
                status=status,
                provider=live.provider,
                model=live.model,
                usage=usage,
                meta={"citations": live.citations, "provider": live.provider, "error": error_code or None},
            )
            await AIUsage.insert(
                AIUsage(
                    user=uuid.UUID(live.user_id),
                    lounge=lounge_id,
                    thread=thread_id,
                    message=message_id,
                    provider=live.provider,
                    model=live.model,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    outcome=str(status),
                )
            )
            await on_commit(partial(_publish_reply, state, live, publication))
    except ReplyAlreadyStored:
        await forget_reply(state, live)
        return None
    reply_ended(state.settings, live.provider, live.model, str(status), error_code, usage)
    return publication


async def _publish_reply(state: AppState, live: LiveReply, publication: Publication) -> None:
    """After the reply committed: forget its live state, then broadcast it."""
    await forget_reply(state, live)
    try:
        await broadcast(state, [publication])
    except (RedisError, OSError) as exc:  # stored: subscribers get it from history when they recover
        log.warning("coach reply stored but not broadcast", extra={"stream_id": live.stream_id, "error": repr(exc)})


async def forget_reply(state: AppState, live: LiveReply) -> None:
    """Drop a reply's live state: listing, lease, snapshot, cancel flag and the asker's slot.
    Best effort: with Redis unreachable, the lease and the slot expire by themselves."""
    stream_id = live.stream_id
    try:
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(live_key(state), stream_id)
            pipe.hdel(streams_key(state, live.channel), stream_id)
            pipe.zrem(active_key(state, live.user_id), stream_id)
            pipe.delete(lease_key(state, stream_id), cancel_key(state, stream_id), ending_key(state, stream_id))
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("coach reply's live state not cleared", extra={"stream_id": stream_id, "error": repr(exc)})


async def end_lost_reply(state: AppState, live: LiveReply, claimant: str) -> bool:
    """End ``live`` as ``worker_lost``, keeping the text its snapshot holds, and remove its arq
    job. False when another process is ending it or it was stored already."""
    if not await state.redis.set(ending_key(state, live.stream_id), claimant, nx=True, ex=60):
        return False
    raw = await state.redis.hget(streams_key(state, live.channel), live.stream_id)  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
    text = msgspec.json.decode(raw, type=StreamState).text if raw else ""
    usage = Usage(input_tokens=live.input_tokens, output_tokens=estimate_text_tokens(text))
    publication = await end_reply(
        state, live, text=text, status=MessageStatus.failed, error_code=WORKER_LOST, usage=usage
    )
    job_id = reply_job_id(live.stream_id)
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.zrem(queue_name(state.settings), job_id)
        pipe.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id)
        await pipe.execute()
    if publication is not None:
        log.warning(
            "coach reply lost its worker; stored as failed",
            extra={"stream_id": live.stream_id, "worker": live.worker, "by": claimant, "chars": len(text)},
        )
    return publication is not None


async def reap_dead_replies(state: AppState, claimant: str, channel: str | None = None) -> list[str]:
    """End every live reply (of ``channel``, or all) whose lease expired; returns their stream ids."""
    replies = await state.redis.hvals(live_key(state))  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
    listed = [msgspec.json.decode(raw, type=LiveReply) for raw in replies]
    if channel is not None:
        listed = [live for live in listed if live.channel == channel]
    if not listed:
        return []
    async with state.redis.pipeline(transaction=False) as pipe:
        for live in listed:
            pipe.exists(lease_key(state, live.stream_id))
        leased = await pipe.execute()
    return [
        live.stream_id
        for live, has_lease in zip(listed, leased, strict=True)
        if not has_lease and await end_lost_reply(state, live, claimant)
    ]


async def live_reply(state: AppState, stream_id: str) -> tuple[LiveReply | None, bool]:
    """The live reply ``stream_id`` (None when not live) and whether its worker holds the lease."""
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hget(live_key(state), stream_id)
        pipe.exists(lease_key(state, stream_id))
        raw, leased = await pipe.execute()
    return (msgspec.json.decode(raw, type=LiveReply) if raw else None), bool(leased)
