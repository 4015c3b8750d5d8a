"""The coach's prompt: persona, pinned notes, retrieved passages, and the recent
conversation trimmed to the token budget (oldest turns go first; the persona
and pinned notes always stay)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec
import numpy as np

from server.domain.billing.entitlements import AIBudget, ai_budget_sql, month_start
from server.domain.knowledge.embeddings import get_embedder
from server.domain.knowledge.metrics import searched
from server.domain.knowledge.retrieval import (
    COUNT_CAP,
    FILE,
    NOTE,
    ChunkHit,
    Part,
    as_passages,
    embed_query,
    exact_hits_json,
    hits_from_json,
    live_files_sql,
    part_count_sql,
    population_sql,
    search_parts,
)
from server.domain.llm.providers import ChatTurn, Prompt, estimate_input_tokens
from server.domain.tables.chat import SenderType
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


@dataclass(frozen=True, slots=True)
class PromptReads:
    """What the prompt's one statement read (:func:`read_for_prompt`)."""

    messages: list[dict[str, Any]]  # the last RECENT_MESSAGES up to the one answered, newest first
    pinned: list[dict[str, Any]]
    lounge: dict[str, Any] | None  # id, title, ai_persona
    parts: list[Part]  # the non-empty parts the asker may search
    hits: list[ChunkHit] | None  # the parts searched exactly with the vector sent along; None: not searched
    budget: AIBudget


async def build_prompt(
    state: AppState, *, channel: str, reply_to: int, asker: uuid.UUID, question: str | None = None
) -> tuple[Prompt, dict[str, Any], AIBudget]:
    """The prompt answering the message at ``reply_to`` (its text is ``question``, read
    from the channel when not given), the reply's context (``lounge_id``, ``thread_id``,
    ``question``, ``citations``) and the asker's AI budget, read with it.

    The text the coach answers is the message's text now: ``question`` (what it said
    when the reply was queued) only starts the embedding early, and is replaced if the
    message was edited since; a message deleted since is not answered at all
    (``409 message_deleted``), so neither the prompt, the retrieval nor a thread title
    sees a text its author took back.

    Runs on the time to first token, outside any transaction, in one round trip to
    PostgreSQL when it can: the question's embedding starts at once and everything
    else the prompt needs — the conversation, the pinned notes, the lounge and its
    persona, the parts the asker may search, the budget — is one statement
    (:func:`read_for_prompt`). An embedder that answers at once (the lexical one) has
    its vector ride along, and the parts small enough to be searched exactly
    (``RETRIEVAL_EXACT_MAX_CHUNKS``) are searched in that same statement. A slower
    embedder's vector, an edited question's, or a part searched through its HNSW
    index costs one more round trip (``search_parts``). Nothing is cached: every
    reply reads the persona, the notes and the budget as they are now. With nothing
    to search, the embedding is not waited for.
    """
    name = ChannelName.parse(channel)
    assert name is not None
    embedder = get_embedder(state.settings)
    embedding = asyncio.ensure_future(embed_query(embedder, question)) if question else None
    try:
        if embedding is not None:
            await asyncio.sleep(0)  # one turn of the loop: an embedder that needs no wait has answered
        early = embedding.result() if embedding is not None and embedding.done() else None
        read_started = time.perf_counter()
        reads = await read_for_prompt(
            state,
            name,
            reply_to,
            asker,
            model=embedder.model,
            vector=early if early is not None and np.any(early) else None,
        )
        read_seconds = time.perf_counter() - read_started
        rows, parts = reads.messages, reads.parts
        if not rows or rows[0]["offset"] != reply_to:
            raise Conflict("the message was deleted before the coach answered", code="message_deleted")
        hits = reads.hits
        if question != rows[0]["text"]:  # not given, or edited since the reply was queued
            if embedding is not None:
                embedding.cancel()
            question, hits = rows[0]["text"], None
            embedding = asyncio.ensure_future(embed_query(embedder, question)) if question.strip() and parts else None
        vector = await embedding if embedding is not None and parts else None
    finally:
        if embedding is not None and not embedding.done():
            embedding.cancel()
    lounge = reads.lounge
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
            + "\n".join(f"- {n['title']}: {n['content'][:PINNED_NOTE_CHARS]}" for n in reads.pinned)
            if reads.pinned
            else "",
        )
        if part
    )
    k = state.settings.ai_rag_passages
    exact_max_chunks = state.settings.retrieval_exact_max_chunks
    if vector is None or not np.any(vector):  # nothing to search, or the embedder failed (logged)
        found: list[ChunkHit] = []
    elif hits is None:
        found = await search_parts(parts, vector=vector, model=embedder.model, k=k, exact_max_chunks=exact_max_chunks)
    else:  # the exact parts were searched with the reads; the others through their index
        larger = [part for part in parts if part.count > exact_max_chunks]
        search_started = time.perf_counter()
        found = hits + await search_parts(
            larger, vector=vector, model=embedder.model, k=k, exact_max_chunks=exact_max_chunks, observe=False
        )
        found = sorted(found, key=lambda hit: (hit.distance, hit.id))[:k]
        # One retrieval observed, as search_parts does: here its time is the statement's (the
        # search ran inside it) plus any part searched through its index.
        searched(read_seconds + time.perf_counter() - search_started, sum(part.count for part in parts))
    passages = as_passages(found)
    context["citations"] = [
        {"n": i + 1, "source": p.source, "source_id": p.source_id, "title": p.title, "chunk": p.chunk}
        for i, p in enumerate(passages)
    ]
    prompt = Prompt(
        system=system, turns=turns, passages=passages, max_output_tokens=state.settings.ai_max_output_tokens
    )
    return trim(prompt, state.settings.ai_context_tokens), context, reads.budget


async def read_for_prompt(
    state: AppState, name: ChannelName, reply_to: int, asker: uuid.UUID, *, model: str, vector: np.ndarray | None
) -> PromptReads:
    """Everything the prompt reads, in one statement (:func:`prompt_sql`): with ``vector``,
    the parts of at most ``RETRIEVAL_EXACT_MAX_CHUNKS`` chunks are searched in it too."""
    settings = state.settings
    arguments: list[Any] = [
        str(name),
        reply_to,
        asker,
        name.id,
        RECENT_MESSAGES,
        PINNED_NOTES,
        COUNT_CAP,
        settings.ai_free_monthly_tokens,
        month_start(),
    ]
    if vector is not None:
        arguments += [
            np.asarray(vector, dtype=np.float32),
            settings.ai_rag_passages,
            settings.retrieval_exact_max_chunks,
        ]
    pool = state.engine.pool
    assert pool is not None  # started by acquire_engine before any job runs
    async with pool.acquire() as connection:
        row = await connection.fetchrow(prompt_sql(model, name.kind, vector is not None), *arguments)
    lounge = (
        {"id": row["lounge_id"], "title": row["lounge_title"], "ai_persona": row["ai_persona"]}
        if row["lounge_id"] is not None
        else None
    )
    parts = [
        part
        for part in (
            Part(NOTE, row["note_count"], max(row["note_population"], 0.0), (asker,)),
            Part(FILE, row["file_count"], max(row["file_population"], 0.0), (row["readable_lounge"], row["files"]))
            if row["readable_lounge"] is not None
            else None,
        )
        if part is not None and part.count
    ]
    hits = hits_from_json(_decode(row["note_hits"]) + _decode(row["file_hits"])) if vector is not None else None
    return PromptReads(
        messages=_decode(row["messages"]),
        pinned=_decode(row["pinned"]),
        lounge=lounge,
        parts=parts,
        hits=hits,
        budget=AIBudget(allowance=int(row["allowance"]), used=int(row["used"])),
    )


def _decode(text: str) -> list[dict[str, Any]]:
    return msgspec.json.decode(text)


@cache
def prompt_sql(model: str, kind: str, with_vector: bool) -> str:
    """The prompt's one statement for a ``kind`` (lounge, thread) channel and ``model``'s chunks.

    Arguments: $1 the channel, $2 the offset answered, $3 the asker, $4 the lounge's or
    thread's id, $5 RECENT_MESSAGES, $6 PINNED_NOTES, $7 COUNT_CAP, $8 the free tier's
    tokens, $9 the month's start; ``with_vector``: $10 the vector, $11 k, $12 the exact
    search's limit. One row (see :func:`read_for_prompt`).
    """
    lounge = (
        "SELECT l.id, l.title, l.ai_persona FROM lounges l WHERE l.id = $4"
        if kind == "lounge"
        else "SELECT l.id, l.title, l.ai_persona FROM chat_threads t JOIN lounges l ON l.id = t.lounge WHERE t.id = $4"
    )
    allowance, used = ai_budget_sql("$3", "$8", "$9")
    hits = (
        f""",
        CASE WHEN p.notes BETWEEN 1 AND $12
             THEN {exact_hits_json(model, NOTE, scope="$3", files="", vector="$10", k="$11")} ELSE '[]' END AS note_hits,
        CASE WHEN p.lounge IS NOT NULL AND p.file_count BETWEEN 1 AND $12
             THEN {exact_hits_json(model, FILE, scope="p.lounge", files="p.files", vector="$10", k="$11")}
             ELSE '[]' END AS file_hits"""
        if with_vector
        else ""
    )
    return f"""
        WITH lounge AS ({lounge}),
        readable AS (
            SELECT lounge.id FROM lounge JOIN lounge_memberships m ON m.lounge = lounge.id
            WHERE m."user" = $3 AND m.status = 'active'
        ),
        live AS ({live_files_sql("(SELECT id FROM readable)")}),
        p AS (
            SELECT (SELECT id FROM readable) AS lounge, live.ids AS files,
                   {part_count_sql(model, NOTE, "$3", "", "$7")} AS notes,
                   {part_count_sql(model, FILE, "(SELECT id FROM readable)", "live.ids", "$7")} AS file_count
            FROM live
        )
        SELECT
            (SELECT coalesce(json_agg(r ORDER BY r."offset" DESC), '[]') FROM (
                SELECT m."offset", m.sender_type, m.text, coalesce(u.full_name, '') AS name FROM messages m
                LEFT JOIN users u ON u.id = m.sender
                WHERE m.channel = $1 AND m."offset" <= $2 AND m.deleted_at IS NULL AND m.status <> 'failed'
                ORDER BY m."offset" DESC LIMIT $5
            ) r) AS messages,
            (SELECT coalesce(json_agg(json_build_object('title', n.title, 'content', n.content)
                                      ORDER BY n.updated_at DESC), '[]') FROM (
                SELECT n.title, n.content, n.updated_at FROM notes n
                WHERE n."user" = $3 AND n.pinned ORDER BY n.updated_at DESC LIMIT $6
            ) n) AS pinned,
            (SELECT id FROM lounge) AS lounge_id,
            (SELECT title FROM lounge) AS lounge_title,
            (SELECT ai_persona FROM lounge) AS ai_persona,
            p.lounge AS readable_lounge, p.files, p.notes AS note_count, p.file_count,
            {population_sql(model, NOTE)} AS note_population,
            {population_sql(model, FILE)} AS file_population,
            {allowance} AS allowance,
            {used} AS used{hits}
        FROM p
    """


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
