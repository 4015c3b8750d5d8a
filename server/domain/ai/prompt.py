"""The coach's prompt: persona, pinned notes, retrieved passages, and the recent
conversation trimmed to the token budget (oldest turns go first; the persona
and pinned notes always stay)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np

from server.domain.knowledge.embeddings import get_embedder
from server.domain.knowledge.retrieval import Part, as_passages, eligible_parts, embed_query, search_parts
from server.domain.llm.providers import ChatTurn, Prompt, estimate_input_tokens
from server.domain.tables.chat import Message, SenderType
from server.domain.tables.lounges import Lounge
from server.domain.tables.notes import Note
from server.foundation.errors import Conflict
from server.foundation.state import AppState
from server.streams.channels import ChannelName

BASE_SYSTEM = (
    "You are Coach, the AI coach of Lounges. Be warm, concrete and brief. "
    "Ground your answer in the numbered passages when they are relevant and cite them like [1]. "
    "If they are not relevant, say what you would need to know."
)
RECENT_MESSAGES = 30
PINNED_NOTES = 5
PINNED_NOTE_CHARS = 600


async def build_prompt(
    state: AppState, *, channel: str, reply_to: int, asker: uuid.UUID, question: str | None = None
) -> tuple[Prompt, dict[str, Any]]:
    """The prompt answering the message at ``reply_to`` (its text is ``question``, read
    from the channel when not given), and the reply's context (``lounge_id``,
    ``thread_id``, ``question``, ``citations``).

    The text the coach answers is the message's text now: ``question`` (what it said
    when the reply was queued) only starts the embedding early, and is replaced if the
    message was edited since; a message deleted since is not answered at all
    (``409 message_deleted``), so neither the prompt, the retrieval nor a thread title
    sees a text its author took back.

    Runs on the time to first token, outside any transaction: the question's
    embedding (the slow part with a local model) starts at once; the conversation,
    the pinned notes, the lounge and the parts the asker may search are read
    meanwhile, and only the vector search itself waits for the embedding. With
    nothing to search, the embedding is not waited for.
    """
    name = ChannelName.parse(channel)
    assert name is not None
    embedder = get_embedder(state.settings)
    embedding = asyncio.ensure_future(embed_query(embedder, question)) if question else None

    async def lounge_and_parts() -> tuple[dict[str, Any] | None, list[Part]]:
        lounge = await _lounge_of(name)
        parts = await eligible_parts(user_id=asker, lounge_id=lounge["id"] if lounge else None, model=embedder.model)
        return lounge, parts

    try:
        rows, pinned, (lounge, parts) = await asyncio.gather(
            _recent_messages(channel, reply_to), _pinned_notes(asker), lounge_and_parts()
        )
        if not rows or rows[0]["offset"] != reply_to:
            raise Conflict("the message was deleted before the coach answered", code="message_deleted")
        if question != rows[0]["text"]:  # not given, or edited since the reply was queued
            if embedding is not None:
                embedding.cancel()
            question = rows[0]["text"]
            embedding = asyncio.ensure_future(embed_query(embedder, question)) if question.strip() and parts else None
        vector = await embedding if embedding is not None and parts else None
    finally:
        if embedding is not None and not embedding.done():
            embedding.cancel()
    context: dict[str, Any] = {
        "lounge_id": lounge["id"] if lounge else None,
        "thread_id": name.id if name.kind == "thread" else None,
        "citations": [],
    }
    turns = [
        ChatTurn(role="assistant", content=row["text"])
        if row["sender_type"] == SenderType.ai
        else ChatTurn(role="user", content=f"{row['name']}: {row['text']}" if name.kind == "lounge" else row["text"])
        for row in reversed(rows)
        if row["text"]
    ]
    context["question"] = question
    persona = (
        f'You coach in the lounge "{lounge["title"]}". The mentor\'s instructions: {lounge["ai_persona"]}'
        if lounge
        else ""
    )
    system = "\n\n".join(
        part
        for part in (
            BASE_SYSTEM,
            persona,
            "The user's pinned notes:\n"
            + "\n".join(f"- {n['title']}: {n['content'][:PINNED_NOTE_CHARS]}" for n in pinned)
            if pinned
            else "",
        )
        if part
    )
    passages = (
        as_passages(
            await search_parts(
                parts,
                vector=vector,
                model=embedder.model,
                k=state.settings.ai_rag_passages,
                exact_max_chunks=state.settings.retrieval_exact_max_chunks,
            )
        )
        if vector is not None and np.any(vector)  # None: nothing to search, or the embedder failed (logged)
        else []
    )
    context["citations"] = [
        {"n": i + 1, "source": p.source, "source_id": p.source_id, "title": p.title, "chunk": p.chunk}
        for i, p in enumerate(passages)
    ]
    prompt = Prompt(
        system=system, turns=turns, passages=passages, max_output_tokens=state.settings.ai_max_output_tokens
    )
    return trim(prompt, state.settings.ai_context_tokens), context


async def _recent_messages(channel: str, reply_to: int) -> list[dict[str, Any]]:
    """The last ``RECENT_MESSAGES`` up to ``reply_to``, newest first."""
    return await Message.raw(
        """SELECT m."offset", m.sender_type, m.text, coalesce(u.full_name, '') AS name FROM messages m
           LEFT JOIN users u ON u.id = m.sender
           WHERE m.channel = {} AND m."offset" <= {} AND m.deleted_at IS NULL AND m.status <> 'failed'
           ORDER BY m."offset" DESC LIMIT {}""",
        channel,
        reply_to,
        RECENT_MESSAGES,
    )


async def _pinned_notes(asker: uuid.UUID) -> list[dict[str, Any]]:
    return (
        await Note.select(Note.title, Note.content)
        .where(Note.user == asker, Note.pinned.eq(True))
        .order_by(Note.updated_at, ascending=False)
        .limit(PINNED_NOTES)
    )


async def _lounge_of(name: ChannelName) -> dict[str, Any] | None:
    """The lounge of a lounge channel, or of the lounge a thread was opened from."""
    if name.kind == "lounge":
        rows = await Lounge.raw("SELECT id, title, ai_persona FROM lounges WHERE id = {}", name.id)
    else:
        rows = await Lounge.raw(
            "SELECT l.id, l.title, l.ai_persona FROM chat_threads t JOIN lounges l ON l.id = t.lounge WHERE t.id = {}",
            name.id,
        )
    return rows[0] if rows else None


def trim(prompt: Prompt, budget: int) -> Prompt:
    """Drop the oldest turns until the prompt fits ``budget`` tokens (the last turn always stays)."""
    turns = list(prompt.turns)
    while len(turns) > 1 and estimate_input_tokens(Prompt(prompt.system, turns, prompt.passages)) > budget:
        turns.pop(0)
    while len(turns) > 1 and turns[0].role == "assistant":  # a conversation opens with the user
        turns.pop(0)
    return Prompt(
        system=prompt.system, turns=turns, passages=prompt.passages, max_output_tokens=prompt.max_output_tokens
    )
