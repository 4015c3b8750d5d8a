"""Job: the coach's reply to one message (``server/domain/ai/replies.py``)."""

from __future__ import annotations

from typing import Any

from server.domain.ai import replies


async def generate_reply(
    ctx: dict[str, Any],
    channel: str,
    reply_to: int,
    asker: str,
    stream_id: str,
    question: str | None = None,
    trace: dict[str, str] | None = None,
) -> str:
    """Answer the message at ``reply_to`` in ``channel``; returns the outcome. A replayed
    job (its worker vanished mid-run) ends the reply as ``worker_lost``. ``trace``: the
    enqueuing span's W3C ``traceparent`` (tracing on), which the reply's span continues."""
    return await replies.generate_reply(
        ctx["state"],
        worker=ctx["worker_id"],
        attempt=ctx.get("job_try", 1),
        channel=channel,
        reply_to=reply_to,
        asker=asker,
        stream_id=stream_id,
        question=question,
        trace=trace,
    )
