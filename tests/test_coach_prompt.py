"""The coach's prompt, built in one statement: it reads the persona, the notes, the lounge's
files and the budget as they are when the reply starts (nothing is cached), never a
deleted note or file, and its in-statement exact search finds what the separate search
(a slow embedder's vector, a part searched through its HNSW index) finds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec
import numpy as np
from litestar import Litestar

from server.domain.ai import prompt as prompt_module
from server.domain.ai.prompt import build_prompt
from server.domain.billing.entitlements import ai_budget, ai_tokens_used_this_month, limits_for
from server.domain.knowledge import embeddings, ingest
from server.domain.knowledge.embeddings import HashingEmbedder
from server.domain.knowledge.retrieval import ChunkHit, Part
from server.domain.tables.ai import AIUsage
from server.domain.tables.files import File
from server.foundation.errors import Conflict
from server.foundation.settings import Settings
from server.foundation.state import AppState
from tests.support.community import Account, Community
from tests.test_retrieval import knowledge_file, note

API = "/api/v1"
QUESTION = "why do I sleep badly after coffee?"


def _state(app: Litestar, settings: Settings, **changes: object) -> AppState:
    hashing = msgspec.structs.replace(settings, embeddings_provider="hashing", **changes)
    return AppState(settings=hashing, engine=app.state.app_state.engine, redis=app.state.app_state.redis)


async def _room(community: Community, client: httpx.AsyncClient) -> tuple[Account, Account, dict]:
    mentor = await community.mentor(f"mentor-{uuid.uuid4().hex[:8]}@example.com")
    member = await community.user(f"member-{uuid.uuid4().hex[:8]}@example.com")
    lounge = await community.lounge(mentor, ai_reply_policy="off", ai_persona="Answer like a running coach.")
    assert (await community.join(member, lounge)).status_code == 200
    return mentor, member, lounge


async def _ask(community: Community, member: Account, lounge: dict, text: str = QUESTION) -> int:
    posted = await community.post(member, f"{API}/lounges/{lounge['id']}", text)
    assert posted.status_code == 201, posted.text
    return int(posted.json()["offset"])


def _cited(context: dict) -> list[tuple[str, str]]:
    return [(c["source"], c["source_id"]) for c in context["citations"]]


async def test_the_persona_pinned_notes_and_budget_are_read_as_they_are_now(
    app: Litestar, community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    state = _state(app, settings)
    mentor, member, lounge = await _room(community, client)
    pinned = (
        await client.post(
            f"{API}/notes", json={"title": "Shoes", "content": "Size 44, wide fit."}, headers=member.headers
        )
    ).json()
    assert (
        await client.patch(f"{API}/notes/{pinned['id']}/pin", json={"pinned": True}, headers=member.headers)
    ).is_success
    offset = await _ask(community, member, lounge)
    asker = uuid.UUID(member.id)

    prompt, context, budget = await build_prompt(state, channel=lounge["channel"], reply_to=offset, asker=asker)
    assert "Answer like a running coach." in prompt.system and "Size 44, wide fit." in prompt.system
    assert context["lounge_id"] == uuid.UUID(lounge["id"]) and context["question"] == QUESTION
    assert (budget.allowance, budget.used) == (settings.ai_free_monthly_tokens, 0)

    # The mentor edits the persona, the member unpins the note, the ledger grows: the next prompt shows it all.
    edited = await client.put(
        f"{API}/lounges/{lounge['id']}", json={"ai_persona": "Answer like a swim coach."}, headers=mentor.headers
    )
    assert edited.status_code == 200, edited.text
    assert (
        await client.patch(f"{API}/notes/{pinned['id']}/pin", json={"pinned": False}, headers=member.headers)
    ).is_success
    await AIUsage.insert(
        AIUsage(user=asker, provider="openai", model="m", input_tokens=700, output_tokens=5, outcome="complete")
    )
    prompt, _, budget = await build_prompt(state, channel=lounge["channel"], reply_to=offset, asker=asker)
    assert "Answer like a swim coach." in prompt.system and "running coach" not in prompt.system
    assert "Size 44" not in prompt.system
    assert budget.used == 705 == await ai_tokens_used_this_month(asker)
    assert budget.allowance == (await limits_for(state, asker)).ai_tokens_per_month
    assert await ai_budget(state, asker) == budget


async def test_deleted_notes_files_and_messages_never_reach_the_prompt(
    app: Litestar, community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    state = _state(app, settings)
    mentor, member, lounge = await _room(community, client)
    asker = uuid.UUID(member.id)
    created = await client.post(
        f"{API}/notes",
        json={"title": "Sleep", "content": "I sleep badly when I drink coffee after noon."},
        headers=member.headers,
    )
    mine = created.json()["id"]
    assert (await ingest.index_note(uuid.UUID(mine), settings=state.settings)).status == "indexed"
    guide = await knowledge_file(lounge["id"], mentor.id, "sleep-guide.md", "text/markdown")
    markdown = b"# Sleep guide\n\nCaffeine stays in the body for hours: no coffee after lunch."
    result = await ingest.ingest_file(guide, markdown, "text/markdown; charset=utf-8", settings=state.settings)
    assert result.status == "indexed"
    offset = await _ask(community, member, lounge)

    prompt, context, _ = await build_prompt(
        state, channel=lounge["channel"], reply_to=offset, asker=asker, question=QUESTION
    )
    assert sorted(_cited(context)) == [("file", str(guide)), ("note", mine)]
    assert any("coffee after noon" in p.text for p in prompt.passages)

    # The file deleted, the note deleted through the API: neither is cited nor sent.
    await File.update({File.status: "deleted"}).where(File.id == guide)
    assert (await client.delete(f"{API}/notes/{mine}", headers=member.headers)).status_code == 204
    prompt, context, _ = await build_prompt(
        state, channel=lounge["channel"], reply_to=offset, asker=asker, question=QUESTION
    )
    assert context["citations"] == [] and prompt.passages == []

    # A removed member loses the lounge's files; a deleted question is not answered.
    await File.update({File.status: "ready"}).where(File.id == guide)
    _, context, _ = await build_prompt(state, channel=lounge["channel"], reply_to=offset, asker=asker)
    assert _cited(context) == [("file", str(guide))]
    removed = await client.delete(f"{API}/lounges/{lounge['id']}/members/{member.id}", headers=mentor.headers)
    assert removed.status_code == 204
    _, context, _ = await build_prompt(state, channel=lounge["channel"], reply_to=offset, asker=asker)
    assert context["citations"] == []
    deleted = await client.delete(f"{API}/lounges/{lounge['id']}/messages/{offset}", headers=mentor.headers)
    assert deleted.status_code == 204, deleted.text
    try:
        await build_prompt(state, channel=lounge["channel"], reply_to=offset, asker=asker, question=QUESTION)
    except Conflict as exc:
        assert exc.code == "message_deleted"
    else:
        raise AssertionError("a deleted message was answered")


class SlowHashing(HashingEmbedder):
    """The lexical embedder, answering after a pause (as a model or an API does)."""

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        await asyncio.sleep(0.05)
        return await super().embed(texts)


async def test_the_search_inside_the_reads_finds_what_the_separate_search_finds(
    app: Litestar, community: Community, client: httpx.AsyncClient, settings: Settings, monkeypatch
) -> None:
    mentor, member, lounge = await _room(community, client)
    asker = uuid.UUID(member.id)
    fast = _state(app, settings)
    for i in range(12):
        note_id = await note(member.id, f"Note {i}", f"Coffee after noon, sleep and running, entry {i} of {i * 7}.")
        assert (await ingest.index_note(note_id, settings=fast.settings)).status == "indexed"
    guide = await knowledge_file(lounge["id"], mentor.id, "sleep-guide.md", "text/markdown")
    markdown = b"# Sleep guide\n\nCaffeine stays in the body for hours: no coffee after lunch."
    assert (await ingest.ingest_file(guide, markdown, "text/markdown", settings=fast.settings)).status == "indexed"
    offset = await _ask(community, member, lounge)

    searched: list[int] = []  # the parts each separate search (a round trip of its own) was given
    separate_search = prompt_module.search_parts

    async def spy(parts: list[Part], **options: Any) -> list[ChunkHit]:
        if parts:
            searched.append(len(parts))
        return await separate_search(parts, **options)

    monkeypatch.setattr(prompt_module, "search_parts", spy)

    async def citations(state: AppState, question: str | None = QUESTION) -> tuple[list[tuple[str, str]], list[int]]:
        searched.clear()
        _, context, _ = await build_prompt(
            state, channel=lounge["channel"], reply_to=offset, asker=asker, question=question
        )
        return _cited(context), list(searched)

    exact_in_the_reads, separately = await citations(fast)  # one round trip: the search rode with the reads
    assert separately == [] and len(exact_in_the_reads) == fast.settings.ai_rag_passages
    assert ("file", str(guide)) in exact_in_the_reads
    assert await citations(fast, question=None) == (exact_in_the_reads, [2])  # embedded after the reads
    assert await citations(fast, question="an older text") == (exact_in_the_reads, [2])  # edited: embedded again
    hnsw = _state(app, settings, retrieval_exact_max_chunks=0)
    assert await citations(hnsw) == (exact_in_the_reads, [2])
    notes_by_hnsw = _state(app, settings, retrieval_exact_max_chunks=5)  # the file's 1 chunk in the reads
    assert await citations(notes_by_hnsw) == (exact_in_the_reads, [1])
    monkeypatch.setitem(embeddings._embedders, ("hashing",), SlowHashing())
    assert await citations(fast) == (exact_in_the_reads, [2])  # the vector came after the reads
