"""Job: the coach's reply, streamed to everyone in the channel and stored at the end.

Frames on the channel: ``ai.start`` → numbered ``ai.delta`` (coalesced, at most
one every ``AI_DELTA_INTERVAL_MS``) → the reply stored at its offset as
``ai.end`` (complete or cancelled) or ``ai.error`` (failed). Every outcome
writes the tokens spent to the usage ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import msgspec

from server.ai.coach import (
    StreamState,
    acquire_slot,
    cancel_key,
    check_budget,
    release_slot,
    streams_key,
)
from server.ai.prompt import build_prompt
from server.ai.providers import (
    ProviderError,
    TextDelta,
    Usage,
    build_providers,
    estimate_input_tokens,
    estimate_text_tokens,
    stream_reply,
)
from server.ai.tables import AIUsage
from server.ai.titles import title_thread
from server.billing.entitlements import ai_budget
from server.chat.messages import do_store_ai_reply
from server.chat.tables import MessageStatus
from server.core.errors import AppError
from server.core.state import AppState
from server.notifications.services import notify_budget_nearly_used
from server.realtime.channels import broadcast, broadcast_ephemeral, ephemeral_wire, pubsub_channel

log = logging.getLogger("lounges.coach")


async def generate_reply(
    ctx: dict[str, Any], channel: str, reply_to: int, asker: str, stream_id: str, question: str | None = None
) -> str:
    """Answer the message at ``reply_to`` in ``channel`` (whose text is ``question``,
    when the caller had it at hand); returns the outcome."""
    state: AppState = ctx["state"]
    asker_id = uuid.UUID(asker)
    if not await acquire_slot(state, asker_id):
        await _refuse(state, channel, stream_id, reply_to, "ai_busy", "too many coach replies are running for you")
        return "refused"
    try:
        (prompt, context), budget = await asyncio.gather(
            build_prompt(state, channel=channel, reply_to=reply_to, asker=asker_id, question=question),
            ai_budget(state, asker_id),
        )
        try:
            check_budget(state, budget, estimate_input_tokens(prompt))
        except AppError as exc:
            await _refuse(state, channel, stream_id, reply_to, exc.code, exc.detail)
            return "refused"
        return await _stream(state, channel, reply_to, asker_id, stream_id, prompt, context)
    finally:
        await release_slot(state, asker_id)


async def _refuse(state: AppState, channel: str, stream_id: str, reply_to: int, code: str, detail: str) -> None:
    await broadcast_ephemeral(
        state,
        channel,
        {"type": "ai.error", "stream_id": stream_id, "reply_to": reply_to, "code": code, "detail": detail},
    )


async def _stream(
    state: AppState,
    channel: str,
    reply_to: int,
    asker: uuid.UUID,
    stream_id: str,
    prompt: Any,
    context: dict[str, Any],
) -> str:
    settings = state.settings
    interval = settings.ai_delta_interval_ms / 1000
    stream = StreamState(stream_id=stream_id, channel=channel, user_id=str(asker), reply_to=reply_to)
    key, cancel = streams_key(state, channel), cancel_key(state, stream_id)
    wire = pubsub_channel(settings.redis_prefix, channel)

    text: list[str] = []
    pending: list[str] = []
    provider_name, model = "none", "none"
    usage = Usage(input_tokens=0, output_tokens=0)
    status, error_code = MessageStatus.complete, ""

    first_text = asyncio.Event()

    async def consume() -> None:
        nonlocal provider_name, model, usage
        async with contextlib.aclosing(stream_reply(build_providers(settings), prompt)) as events:
            async for provider, event in events:
                provider_name, model = provider.name, provider.model
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    pending.append(event.text)
                    first_text.set()
                elif isinstance(event, Usage):
                    usage = event

    async def flush() -> None:
        if not pending:
            return
        stream.seq += 1
        delta = "".join(pending)
        pending.clear()
        stream.text = "".join(text)
        # The snapshot first, then the delta, in one round trip: a late subscriber's
        # snapshot never lacks a delta it will not receive.
        async with state.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, stream_id, msgspec.json.encode(stream))
            pipe.publish(
                wire,
                ephemeral_wire({"type": "ai.delta", "stream_id": stream_id, "seq": stream.seq, "text": delta}),
            )
            await pipe.execute()

    # The provider's request goes out while the stream is announced.
    generation = asyncio.create_task(consume())
    try:
        async with state.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, stream_id, msgspec.json.encode(stream))
            pipe.expire(key, 3600)
            pipe.publish(wire, ephemeral_wire({"type": "ai.start", "stream_id": stream_id, "reply_to": reply_to}))
            await pipe.execute()
        # The first text goes out the moment it arrives (time to first token is what
        # the room feels); then one tick per interval: coalesced deltas out, the cancel
        # flag checked even while the provider is silent between tokens.
        first = asyncio.create_task(first_text.wait())
        try:
            while not generation.done():
                waiting = {generation} if stream.seq else {generation, first}
                await asyncio.wait(waiting, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                await flush()
                if not generation.done() and await state.redis.exists(cancel):
                    status = MessageStatus.cancelled
                    generation.cancel()
        finally:
            first.cancel()
        if status != MessageStatus.cancelled:
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
            provider_name = exc.provider
        log.warning("coach reply failed", extra={"stream_id": stream_id, "code": exc.code, "error": str(exc)})
    except Exception:  # Redis gone mid-stream, say: store what there is as failed
        status, error_code = MessageStatus.failed, "internal"
        generation.cancel()
        raise
    finally:
        await flush()
        full_text = "".join(text)
        if usage.output_tokens == 0 and full_text:
            usage = Usage(
                input_tokens=usage.input_tokens or estimate_input_tokens(prompt),
                output_tokens=estimate_text_tokens(full_text),
            )
        publication, message_id = await do_store_ai_reply(
            state,
            channel=channel,
            reply_to=reply_to,
            stream_id=stream_id,
            text=full_text,
            status=status,
            provider=provider_name,
            model=model,
            usage=usage,
            meta={"citations": context.get("citations", []), "provider": provider_name, "error": error_code or None},
        )
        await AIUsage.insert(
            AIUsage(
                user=asker,
                lounge=context.get("lounge_id"),
                thread=context.get("thread_id"),
                message=message_id,
                provider=provider_name,
                model=model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                outcome=str(status),
            )
        )
        await state.redis.hdel(key, stream_id)
        await state.redis.delete(cancel)
        await broadcast(state, [publication])
        if usage.input_tokens or usage.output_tokens:  # once a month, past AI_BUDGET_WARNING_PERCENT
            budget = await ai_budget(state, asker)
            await notify_budget_nearly_used(state, asker, budget.used, budget.allowance)
    if status == MessageStatus.complete and channel.startswith("thread:"):
        title = await title_thread(state, channel, context.get("question", ""), "".join(text))
        if title is not None:
            await broadcast_ephemeral(state, channel, {"type": "thread.title", "title": title})
    return str(status)
