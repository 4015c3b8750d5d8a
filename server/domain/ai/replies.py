"""The coach's reply, streamed to everyone in the channel and stored at the end (run by
the arq job ``generate_reply``, ``workers/coach.py``).

Frames on the channel: ``ai.start`` → numbered ``ai.delta`` (coalesced, at most
one every ``AI_DELTA_INTERVAL_MS``) → the reply stored at its offset as
``ai.end`` (complete or cancelled) or ``ai.error`` (failed). Every outcome
writes the tokens spent to the usage ledger.

While it runs, the reply holds a lease (``server/domain/ai/streams.py``): if this worker
dies, any other worker (or the web node) ends the reply as ``worker_lost`` within
about ``AI_STREAM_LEASE_SECONDS``, keeping the text streamed so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import SpanKind, get_current_span
from redis.exceptions import RedisError

from server.domain.ai.coach import check_budget
from server.domain.ai.metrics import prompt_built, reply_refused, reply_timed
from server.domain.ai.prompt import build_prompt
from server.domain.ai.streams import (
    LeaseKeeper,
    LiveReply,
    StreamState,
    acquire_slot,
    begin_reply,
    cancel_key,
    end_lost_reply,
    end_reply,
    forget_reply,
    live_reply,
)
from server.domain.ai.titles import title_thread
from server.domain.billing.entitlements import ai_budget
from server.domain.llm.providers import (
    ProviderError,
    TextDelta,
    Usage,
    estimate_input_tokens,
    estimate_text_tokens,
    stream_reply,
)
from server.domain.llm.registry import build_providers
from server.domain.notifications.services import notify_budget_nearly_used
from server.domain.push.delivery import queue_coach_reply_push, queue_lounge_message_push
from server.domain.tables.chat import MessageStatus
from server.foundation import tracing
from server.foundation.errors import AppError
from server.foundation.state import AppState
from server.streams.broker import broadcast_ephemeral, ephemeral_wire

log = logging.getLogger("lounges.coach")


async def generate_reply(
    state: AppState,
    *,
    worker: str,
    attempt: int,
    channel: str,
    reply_to: int,
    asker: str,
    stream_id: str,
    question: str | None = None,
    trace: Mapping[str, str] | None = None,
) -> str:
    """Answer the message at ``reply_to`` in ``channel`` (whose text is ``question``,
    when the caller had it at hand) as ``worker``, on the job's ``attempt`` (1 first);
    returns the outcome. Tracing on, inside a ``coach.reply`` span continuing ``trace``
    (the enqueuing span's carrier)."""
    if not tracing.TRACING:
        return await _generate_reply(state, worker, attempt, channel, reply_to, asker, stream_id, question)
    attributes: dict[str, str | int] = {
        "lounges.channel": channel,
        "lounges.stream_id": stream_id,
        "lounges.attempt": attempt,
    }
    with tracing.span("coach.reply", kind=SpanKind.CONSUMER, parent=trace, attributes=attributes) as span:
        outcome = await _generate_reply(state, worker, attempt, channel, reply_to, asker, stream_id, question)
        span.set_attribute("lounges.outcome", outcome)
        return outcome


async def _generate_reply(
    state: AppState,
    worker: str,
    attempt: int,
    channel: str,
    reply_to: int,
    asker: str,
    stream_id: str,
    question: str | None,
) -> str:
    started = time.perf_counter()
    live = LiveReply(stream_id=stream_id, channel=channel, user_id=asker, reply_to=reply_to, worker=worker)
    if attempt > 1:
        # arq replays a job whose worker vanished mid-run. A model cannot go on from the
        # middle of its reply, so the reply ends as worker_lost (unless it ended already).
        listed, _ = await live_reply(state, stream_id)
        ended = await end_lost_reply(state, listed or live, live.worker)
        log.warning("coach reply job replayed", extra={"stream_id": stream_id, "ended_now": ended})
        return "worker_lost" if ended else "ended already"
    asker_id = uuid.UUID(asker)
    # The prompt's reads change nothing: they start now, beside the slot and the lease's
    # Redis round trips, and are dropped if the reply is refused.
    prompting = time.perf_counter()
    building = asyncio.ensure_future(
        build_prompt(state, channel=channel, reply_to=reply_to, asker=asker_id, question=question)
    )
    try:
        if not await acquire_slot(state, asker_id, stream_id):
            _drop(building)
            await _refuse(state, channel, stream_id, reply_to, "ai_busy", "too many coach replies are running for you")
            return "refused"
        await begin_reply(state, live)
    except BaseException:
        _drop(building)
        raise
    async with LeaseKeeper(state, live) as lease:
        try:
            prompt, context, budget = await building
            prompt_built(time.perf_counter() - prompting)
            check_budget(state, budget, estimate_input_tokens(prompt))
        except AppError as exc:
            await forget_reply(state, live)
            await _refuse(state, channel, stream_id, reply_to, exc.code, exc.detail)
            return "refused"
        except Exception:  # stored as failed rather than left for the reaper to call it worker_lost
            await end_reply(
                state,
                live,
                text="",
                status=MessageStatus.failed,
                error_code="internal",
                usage=Usage(input_tokens=0, output_tokens=0),
            )
            raise
        live.input_tokens = estimate_input_tokens(prompt)
        live.citations = context.get("citations", [])
        return await _stream(state, live, lease, prompt, context, started)


def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel ``task``, whose result is no longer wanted (its error, if it had one, is not logged)."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _refuse(state: AppState, channel: str, stream_id: str, reply_to: int, code: str, detail: str) -> None:
    reply_refused(code)
    await broadcast_ephemeral(
        state,
        channel,
        {"type": "ai.error", "stream_id": stream_id, "reply_to": reply_to, "code": code, "detail": detail},
    )


async def _stream(
    state: AppState, live: LiveReply, lease: LeaseKeeper, prompt: Any, context: dict[str, Any], started: float
) -> str:
    """Stream the reply, store it; ``started``: the job's start (``time.perf_counter()``), for its timings."""
    settings = state.settings
    interval = settings.ai_delta_interval_ms / 1000
    channel, stream_id, asker = live.channel, live.stream_id, uuid.UUID(live.user_id)
    stream = StreamState(stream_id=stream_id, channel=channel, user_id=live.user_id, reply_to=live.reply_to)
    cancel = cancel_key(state, stream_id)

    text: list[str] = []
    pending: list[str] = []
    usage = Usage(input_tokens=0, output_tokens=0)
    status, error_code = MessageStatus.complete, ""

    first_text = asyncio.Event()
    first_at: float | None = None  # when the first and the latest text arrived (perf_counter)
    last_at = 0.0

    async def consume() -> None:
        nonlocal usage, first_at, last_at
        async with contextlib.aclosing(stream_reply(build_providers(settings), prompt)) as events:
            async for provider, event in events:
                live.provider, live.model = provider.name, provider.model  # the lease keeper saves them
                if isinstance(event, TextDelta):
                    last_at = time.perf_counter()
                    if first_at is None:
                        first_at = last_at
                    text.append(event.text)
                    pending.append(event.text)
                    first_text.set()
                elif isinstance(event, Usage):
                    usage = event

    retry: bytes | None = None  # a delta whose publish was cut off, to go out again as it was

    async def flush() -> None:
        # Cancelled or failed mid-publish (the worker stopping, Redis gone), a delta is sent
        # again by the final flush under the same seq (clients that had it drop it): the
        # stored reply never holds words the room did not get.
        nonlocal retry
        if lease.lost.is_set():
            return
        if retry is not None:
            frame, retry = retry, None
            try:
                await lease.publish(stream, frame)  # the snapshot as it was then: stream is unchanged
            except BaseException:
                retry = frame
                raise
        if not pending:
            return
        stream.seq += 1
        stream.text = "".join(text)
        # The snapshot first, then the delta: a late subscriber's snapshot never lacks a
        # delta it will not receive, and nothing goes out once a reaper took the reply.
        frame = ephemeral_wire(
            {"type": "ai.delta", "stream_id": stream_id, "seq": stream.seq, "text": "".join(pending)}
        )
        pending.clear()
        try:
            sent = await lease.publish(stream, frame)
        except BaseException:
            retry = frame
            raise
        if sent and stream.seq == 1:
            await lease.renew()  # the provider answering is known now: a reaper must not store "none"

    # The provider's request goes out while the stream is announced.
    generation = asyncio.create_task(consume())
    try:
        await lease.publish(
            stream, ephemeral_wire({"type": "ai.start", "stream_id": stream_id, "reply_to": live.reply_to})
        )
        # The first text goes out the moment it arrives (time to first token is what
        # the room feels); then one tick per interval: coalesced deltas out, the cancel
        # flag checked even while the provider is silent between tokens.
        first = asyncio.create_task(first_text.wait())
        try:
            # Tracing on: no Redis span per delta and per cancel check (the provider's task
            # above still records its own); the reply's span counts the deltas instead.
            with tracing.quiet():
                while not generation.done():
                    waiting = {generation} if stream.seq else {generation, first}
                    await asyncio.wait(waiting, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                    await flush()
                    if lease.lost.is_set():  # a reaper ended the reply: going on would answer twice
                        status, error_code = MessageStatus.failed, "worker_lost"
                        generation.cancel()
                    elif not generation.done() and await state.redis.exists(cancel):
                        status = MessageStatus.cancelled
                        generation.cancel()
        finally:
            first.cancel()
        if status == MessageStatus.complete:
            generation.result()
    except asyncio.CancelledError:
        if status != MessageStatus.cancelled:
            status, error_code = MessageStatus.failed, "interrupted"
            generation.cancel()
            raise
    except ProviderError as exc:
        status, error_code = MessageStatus.failed, exc.code
        if exc.usage is not None:
            usage = exc.usage
        if exc.provider:
            live.provider = exc.provider
        log.warning("coach reply failed", extra={"stream_id": stream_id, "code": exc.code, "error": str(exc)})
    except Exception:  # Redis gone mid-stream, say: store what there is as failed
        status, error_code = MessageStatus.failed, "internal"
        generation.cancel()
        raise
    finally:
        with contextlib.suppress(RedisError, OSError):  # the reply is stored even with Redis gone
            await flush()
        full_text = "".join(text)
        if usage.output_tokens == 0 and full_text:
            usage = Usage(
                input_tokens=usage.input_tokens or live.input_tokens,
                output_tokens=estimate_text_tokens(full_text),
            )
        stored = await end_reply(state, live, text=full_text, status=status, error_code=error_code, usage=usage)
        if tracing.TRACING:
            _trace_outcome(live, stream.seq, usage, error_code)
        complete = status == MessageStatus.complete
        reply_timed(live.provider, live.model, started, first_at, last_at if complete else None)
        if stored is not None and (usage.input_tokens or usage.output_tokens):
            # once a month, past AI_BUDGET_WARNING_PERCENT
            budget = await ai_budget(state, asker)
            await notify_budget_nearly_used(state, asker, budget.used, budget.allowance)
    if stored is None:
        return "worker_lost"
    if status == MessageStatus.complete:  # to whoever is away (never raises)
        if channel.startswith("thread:"):
            await queue_coach_reply_push(state, channel, stored.offset)
        elif channel.startswith("lounge:"):
            await queue_lounge_message_push(state, channel, stored.offset)
    if status == MessageStatus.complete and channel.startswith("thread:"):
        title = await title_thread(state, channel, context.get("question", ""), "".join(text))
        if title is not None:
            await broadcast_ephemeral(state, channel, {"type": "thread.title", "title": title})
    return str(status)


def _trace_outcome(live: LiveReply, deltas: int, usage: Usage, error_code: str) -> None:
    """The reply's provider, model, deltas and tokens on its span (``coach.reply``, current here)."""
    span = get_current_span()
    span.set_attributes(
        {
            "gen_ai.provider.name": live.provider,
            "gen_ai.request.model": live.model,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "lounges.deltas": deltas,
        }
    )
    if error_code:
        tracing.failed(error_code, span=span)
