"""When the coach answers, who may stop it, and what it may spend.

The message store calls :func:`maybe_answer` after every stored user message and
:func:`stop_replies_to` after a deletion (through ``server/domain/chat/coach_link.py``).
A reply is a job for the arq worker (``server/domain/ai/replies.py``), so it is
independent of the socket or the web node that triggered it. While it runs,
its state lives in Redis: the stream's text so far (for ``ai.snapshot``) in
``{prefix}:ai:streams:<channel>``, a cancel flag in
``{prefix}:ai:cancel:<stream id>``, and its worker's lease (``server/domain/ai/streams.py``),
without which the reply is ended as ``worker_lost`` instead of served as streaming.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from server.domain.access.policy import LoungeRow, lounge_context
from server.domain.accounts.services import Principal
from server.domain.ai.streams import (
    StreamState,
    cancel_key,
    end_lost_reply,
    lease_key,
    live_key,
    live_reply,
    process_id,
    reap_dead_replies,
    reply_job_id,
    streams_key,
)
from server.domain.billing.entitlements import AIBudget, enforce
from server.domain.tables.accounts import Role
from server.domain.tables.lounges import AIReplyPolicy
from server.foundation import tracing
from server.foundation.errors import Forbidden, NotFound
from server.foundation.redis import ring_doorbell
from server.foundation.state import AppState

log = logging.getLogger("lounges.coach")

MENTION = re.compile(r"(?<![\w@])@coach\b", re.IGNORECASE)


def wants_reply(kind: str, lounge: LoungeRow | None, text: str) -> bool:
    """Threads: always. Lounges: by the mentor's policy, unless paused."""
    if kind == "thread":
        return True
    if lounge is None or lounge.ai_paused or lounge.archived_at is not None:
        return False
    policy = lounge.ai_reply_policy
    return policy == AIReplyPolicy.always or (policy == AIReplyPolicy.mention and bool(MENTION.search(text)))


def check_budget(state: AppState, budget: AIBudget, prompt_tokens: int) -> None:
    """Refuse before calling a model when prompt + maximum output would pass the plan's allowance."""
    enforce(budget.decide(prompt_tokens + state.settings.ai_max_output_tokens))


async def maybe_answer(
    state: AppState, *, channel: str, kind: str, lounge: LoungeRow | None, asker: uuid.UUID, offset: int, text: str
) -> str | None:
    """Queue a coach reply to the message at ``offset`` if the channel wants one; returns the stream id."""
    if not wants_reply(kind, lounge, text):
        return None
    stream_id = uuid.uuid4().hex
    attributes = {"lounges.channel": channel, "lounges.stream_id": stream_id}
    with tracing.span("coach.enqueue", kind=SpanKind.PRODUCER, attributes=attributes):
        # Tracing on, the job carries this span's traceparent: its coach.reply span continues the trace.
        carrier: dict[str, Any] = {"trace": tracing.inject()} if tracing.TRACING else {}
        await state.redis.enqueue_job(
            "generate_reply", channel, offset, str(asker), stream_id, text, _job_id=reply_job_id(stream_id), **carrier
        )
    await ring_doorbell(state.redis, state.settings)  # the asker is waiting for the first token
    return stream_id


async def active_streams(state: AppState, channel: str) -> list[StreamState]:
    """The channel's replies still streaming, for a subscriber's ``ai.snapshot``. A reply
    whose worker died is ended here (its ``ai.error`` follows) instead of served as streaming."""
    snapshots = await state.redis.hvals(streams_key(state, channel))  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
    streams = [msgspec.json.decode(raw, type=StreamState) for raw in snapshots]
    if not streams:
        return []
    async with state.redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.exists(lease_key(state, stream.stream_id))
            pipe.hexists(live_key(state), stream.stream_id)
        found = await pipe.execute()
    leased, live = found[0::2], found[1::2]
    if not all(leased):
        try:  # best effort: the subscriber is answered either way, and every worker reaps too
            await reap_dead_replies(state, process_id("web"), channel=channel)
            orphans = [s.stream_id for s, is_live in zip(streams, live, strict=True) if not is_live]
            if orphans:  # a snapshot written after its reply ended (by a worker presumed dead)
                await state.redis.hdel(streams_key(state, channel), *orphans)  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
        except Exception:
            log.exception("could not end a coach reply whose worker died", extra={"channel": channel})
    return [stream for stream, has_lease in zip(streams, leased, strict=True) if has_lease]


async def stop_replies_to(state: AppState, channel: str, offsets: list[int]) -> None:
    """The messages at ``offsets`` were deleted: stop the coach's replies to them that are
    still streaming (they may quote them) and drop their snapshots at once. The worker
    notices the cancel flag within ``AI_DELTA_INTERVAL_MS`` and stores what it has as a
    tombstone. Never raises: the deletion is committed."""
    try:
        async with asyncio.timeout(1.0):
            streams = await active_streams(state, channel)
            stopped = [stream.stream_id for stream in streams if stream.reply_to in offsets]
            if not stopped:
                return
            async with state.redis.pipeline(transaction=False) as pipe:
                for stream_id in stopped:
                    pipe.set(cancel_key(state, stream_id), b"1", ex=600)
                pipe.hdel(streams_key(state, channel), *stopped)
                await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("could not stop the coach's replies to deleted messages", extra={"error": repr(exc)})


async def do_cancel(state: AppState, principal: Principal, channel: str, stream_id: str) -> None:
    """Stop a reply: by the asker, the lounge's mentor or an admin, on whichever worker runs it."""
    raw = await state.redis.hget(streams_key(state, channel), stream_id)  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
    if raw is None:
        raise NotFound("no such reply is streaming", code="stream_not_found")
    stream = msgspec.json.decode(raw, type=StreamState)
    allowed = principal.role == Role.admin or str(principal.user_id) == stream.user_id
    if not allowed and channel.startswith("lounge:"):
        context = await lounge_context(principal, uuid.UUID(channel.removeprefix("lounge:")))
        allowed = context.is_mentor
    if not allowed:
        raise Forbidden("only the asker, the mentor or an admin may stop this reply", code="not_allowed_to_cancel")
    live, leased = await live_reply(state, stream_id)
    if live is None:  # its snapshot outlived it
        await state.redis.hdel(streams_key(state, channel), stream_id)  # type: ignore[misc]  # redis-py#2399: asyncio commands typed Awaitable[T] | T
        raise NotFound("no such reply is streaming", code="stream_not_found")
    if not leased:  # no worker will see the flag: end it here
        await end_lost_reply(state, live, process_id("web"))
        return
    await state.redis.set(cancel_key(state, stream_id), b"1", ex=600)
