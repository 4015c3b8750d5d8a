"""Notes over HTTP: CRUD, pinning, tags, ownership, hybrid search with safe highlights,
and the indexing job behind them (idempotent, re-chunks on edit, gone on delete,
re-embeds on a model switch)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from litestar import Litestar

from server.domain.knowledge import ingest
from server.domain.knowledge.embeddings import HashingEmbedder, get_embedder
from server.domain.tables.knowledge import KnowledgeChunk
from server.domain.tables.notes import Note
from server.foundation.settings import Settings
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.pages import envelope, walk
from tests.support.worker import run_worker_until_idle

NOTES = "/api/v1/notes"


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return client


async def create(api: httpx.AsyncClient, account: Account, **body: Any) -> dict[str, Any]:
    response = await api.post(NOTES, json=body, headers=account.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def search(api: httpx.AsyncClient, account: Account, query: str, limit: int = 10) -> dict[str, Any]:
    response = await api.post(f"{NOTES}/search", json={"query": query, "limit": limit}, headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None  # the best `limit` hits are the whole answer
    return response.json()


async def chunks_of(note_id: str) -> list[dict[str, Any]]:
    return (
        await KnowledgeChunk.select(
            KnowledgeChunk.id,
            KnowledgeChunk.chunk_index,
            KnowledgeChunk.content,
            KnowledgeChunk.content_hash,
            KnowledgeChunk.embedding_model,
            KnowledgeChunk.embedding_dim,
            KnowledgeChunk.owner,
        )
        .where(KnowledgeChunk.note == uuid.UUID(note_id))
        .order_by(KnowledgeChunk.chunk_index)
    )


LONG_NOTE = "\n\n".join(
    f"Paragraph {i}: "
    + " ".join(f"Sentence {i}.{j} about habit number {i * 10 + j} and how it went." for j in range(8))
    for i in range(6)
)


async def test_crud_pin_tags_and_listing(api: httpx.AsyncClient, community: Community) -> None:
    me = await community.user("notes@example.com", verified=False)  # unverified accounts keep notes too
    note = await create(
        api, me, title="  Morning pages ", content="Wrote three pages.", tags=["Journal", " daily  log "]
    )
    assert note["title"] == "Morning pages"
    assert note["tags"] == ["journal", "daily log"]
    assert note["pinned"] is False
    assert (await api.get(f"{NOTES}/{note['id']}", headers=me.headers)).json() == note

    for bad in (
        {"title": "x", "tags": ["no/slash"]},
        {"title": "x", "tags": [""]},
        {"title": "x", "tags": ["t" * 51]},
        {"title": "x", "tags": [f"t{i}" for i in range(21)]},
        {"title": " ", "content": "  "},
        {"title": "x", "colour": "red"},
        {"title": "t" * 201},
    ):
        response = await api.post(NOTES, json=bad, headers=me.headers)
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")

    updated = await api.put(
        f"{NOTES}/{note['id']}", json={"content": "Wrote four pages.", "tags": ["journal"]}, headers=me.headers
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["title"], updated.json()["content"], updated.json()["tags"]) == (
        "Morning pages",
        "Wrote four pages.",
        ["journal"],
    )
    patched = await api.patch(f"{NOTES}/{note['id']}", json={"title": "Evening pages"}, headers=me.headers)
    assert patched.json()["title"] == "Evening pages" and patched.json()["content"] == "Wrote four pages."
    assert patched.json()["updated_at"] > note["updated_at"]
    emptied = await api.patch(f"{NOTES}/{note['id']}", json={"title": "", "content": ""}, headers=me.headers)
    assert emptied.status_code == 422 and emptied.json()["code"] == "empty_note"

    pinned = await api.patch(f"{NOTES}/{note['id']}/pin", json={"pinned": True}, headers=me.headers)
    assert pinned.status_code == 200 and pinned.json()["pinned"] is True
    assert pinned.json()["updated_at"] == patched.json()["updated_at"]  # pinning is not an edit
    again = await api.patch(f"{NOTES}/{note['id']}/pin", json={"pinned": True}, headers=me.headers)
    assert again.json()["pinned"] is True

    others = [await create(api, me, title=f"Note {i}", tags=["work"] if i % 2 else []) for i in range(5)]
    listing = envelope(await api.get(NOTES, headers=me.headers))
    assert len(listing["items"]) == 6 and listing["next_cursor"] is None
    assert listing["items"][0]["id"] == note["id"]  # pinned first
    assert [n["id"] for n in listing["items"][1:]] == [n["id"] for n in reversed(others)]  # then newest edit
    assert [n["id"] for n in (await api.get(NOTES, params={"pinned": "true"}, headers=me.headers)).json()["items"]] == [
        note["id"]
    ]
    unpinned = await walk(api, NOTES, params={"pinned": "false"}, headers=me.headers, limit=2)
    assert unpinned == listing["items"][1:]
    work = await walk(api, NOTES, params={"tag": "WORK"}, headers=me.headers, limit=1)
    assert [n["id"] for n in work] == [others[3]["id"], others[1]["id"]]
    # Page by page, across the pinned/unpinned boundary: every note once, in the same order.
    for limit in (1, 2, 4):
        assert await walk(api, NOTES, headers=me.headers, limit=limit) == listing["items"]
    # A note edited meanwhile moves to the front; the pages already read are not read again.
    first = envelope(await api.get(NOTES, params={"limit": 3}, headers=me.headers))
    await api.patch(f"{NOTES}/{others[0]['id']}", json={"title": "Edited"}, headers=me.headers)
    rest = await walk(api, NOTES, params={"cursor": first["next_cursor"]}, headers=me.headers, limit=3)
    assert [n["id"] for n in first["items"] + rest] == [n["id"] for n in listing["items"][:-1]]
    assert (await api.get(NOTES, params={"cursor": "bogus"}, headers=me.headers)).json()["code"] == "invalid_cursor"
    assert (await api.get(NOTES, params={"limit": 0}, headers=me.headers)).status_code == 422
    assert (await api.get(NOTES, params={"tag": "a/b"}, headers=me.headers)).status_code == 422

    unpin = await api.patch(f"{NOTES}/{note['id']}/pin", json={"pinned": False}, headers=me.headers)
    assert unpin.json()["pinned"] is False
    assert (await api.delete(f"{NOTES}/{note['id']}", headers=me.headers)).status_code == 204
    gone = await api.get(f"{NOTES}/{note['id']}", headers=me.headers)
    assert gone.status_code == 404 and gone.json()["code"] == "note_not_found"
    assert (await api.delete(f"{NOTES}/{note['id']}", headers=me.headers)).status_code == 404


async def test_a_stranger_gets_404_on_every_route(api: httpx.AsyncClient, community: Community, run_jobs) -> None:
    owner = await community.user("owner@example.com")
    stranger = await community.user("stranger@example.com")
    note = await create(api, owner, title="Private plans", content="Quit the job in spring.", tags=["secret"])
    await run_jobs()
    path = f"{NOTES}/{note['id']}"
    for method, url, body in (
        ("GET", path, None),
        ("PUT", path, {"title": "mine now"}),
        ("PATCH", path, {"title": "mine now"}),
        ("PATCH", f"{path}/pin", {"pinned": True}),
        ("DELETE", path, None),
    ):
        response = await api.request(method, url, json=body, headers=stranger.headers)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["code"] == "note_not_found"
    assert (await api.get(NOTES, headers=stranger.headers)).json() == {"items": [], "next_cursor": None}
    assert (await api.get(NOTES, params={"tag": "secret"}, headers=stranger.headers)).json()["items"] == []
    assert (await search(api, stranger, "quit the job in spring"))["items"] == []
    unchanged = (await api.get(path, headers=owner.headers)).json()
    assert unchanged == note
    for method, url in (("GET", NOTES), ("GET", path), ("POST", f"{NOTES}/search"), ("DELETE", path)):
        assert (await api.request(method, url)).status_code == 401


async def test_search_ranks_the_note_matching_words_and_meaning_first(
    api: httpx.AsyncClient, community: Community, run_jobs
) -> None:
    me = await community.user("search@example.com")
    both = await create(
        api, me, title="Sleep routine", content="To improve my sleep quality I stop screens at ten and read a book."
    )
    meaning = await create(
        api, me, title="Evenings", content="Winding down before bed helps me rest: dim lights, no phone, a warm shower."
    )
    words = await create(api, me, title="Release checklist", content="Quality gates: tests pass, changelog written.")
    budget = await create(api, me, title="Budget", content="Groceries 300, rent 900, savings 200.")
    await run_jobs()

    result = await search(api, me, "improve sleep quality")
    assert result["embedding_model"] == "all-minilm-l6-v2" and result["semantic"] is True
    items = result["items"]
    assert items[0]["note"]["id"] == both["id"]
    assert items[0]["vector_rank"] == 1 and items[0]["text_rank"] == 1
    by_id = {item["note"]["id"]: item for item in items}
    # Found by meaning alone (no shared word), second nearest by vector.
    assert (by_id[meaning["id"]]["text_rank"], by_id[meaning["id"]]["vector_rank"]) == (None, 2)
    assert by_id[words["id"]]["text_rank"] == 2
    assert budget["id"] not in by_id  # neither a shared word nor a similar meaning
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(items))
    top = items[0]
    assert "<mark>sleep</mark>" in top["highlights"][0].lower()
    assert "<mark>quality</mark>" in top["highlights"][0]
    assert "<mark>improve</mark>" in top["highlights"][0]
    assert top["title_highlight"] == "<mark>Sleep</mark> routine"

    limited = await search(api, me, "improve sleep quality", limit=1)
    assert [item["note"]["id"] for item in limited["items"]] == [both["id"]]
    too_long = await api.post(f"{NOTES}/search", json={"query": "x" * 501}, headers=me.headers)
    assert too_long.status_code == 422
    assert (await api.post(f"{NOTES}/search", json={"query": ""}, headers=me.headers)).status_code == 422


async def test_highlights_are_escaped_except_the_marks(api: httpx.AsyncClient, community: Community, run_jobs) -> None:
    me = await community.user("xss@example.com")
    await create(
        api,
        me,
        title="<img src=x onerror=alert(1)> sleep",
        content='Before <script>alert("sleep")</script> and <b onclick="x()">sleep</b> & "quotes" after.',
    )
    await run_jobs()
    [hit] = (await search(api, me, "sleep"))["items"]
    rendered = hit["title_highlight"] + "".join(hit["highlights"])
    assert "<mark>sleep</mark>" in rendered
    stripped = rendered.replace("<mark>", "").replace("</mark>", "")
    assert "<" not in stripped and ">" not in stripped
    assert "script" not in stripped.replace("&lt;script&gt;", "")  # shown escaped, or dropped by ts_headline
    assert "&amp; &quot;quotes&quot;" in rendered
    assert hit["title_highlight"] == "&lt;img src=x onerror=alert(1)&gt; <mark>sleep</mark>"
    # The note itself comes back as it was written (JSON, not HTML).
    assert hit["note"]["content"].startswith("Before <script>")


async def test_search_finds_a_note_by_its_words_before_it_is_indexed(
    api: httpx.AsyncClient, community: Community
) -> None:
    me = await community.user("fresh@example.com")
    note = await create(api, me, title="Marathon plan", content="Long run on Sundays, intervals on Tuesdays.")
    [hit] = (await search(api, me, "intervals"))["items"]
    assert hit["note"]["id"] == note["id"]
    assert (hit["text_rank"], hit["vector_rank"]) == (1, None)
    assert "<mark>intervals</mark>" in hit["highlights"][0]


async def test_indexing_is_idempotent_rechunks_on_edit_and_goes_with_the_note(
    app: Litestar, api: httpx.AsyncClient, community: Community, run_jobs, settings: Settings
) -> None:
    me = await community.user("index@example.com")
    note = await create(api, me, title="Habits", content=LONG_NOTE)
    await run_jobs()
    first = await chunks_of(note["id"])
    assert len(first) >= 4
    assert [c["chunk_index"] for c in first] == list(range(len(first)))
    assert {(c["embedding_model"], c["embedding_dim"], str(c["owner"])) for c in first} == {
        ("all-minilm-l6-v2", 384, me.id)
    }
    assert all(len(c["content"]) <= settings.embeddings_chunk_chars for c in first)
    # Consecutive chunks overlap: each starts with the end of the previous one.
    assert all(b["content"][:20] in a["content"] for a, b in itertools.pairwise(first))

    # Running the job again (queued twice, or retried) changes nothing.
    await app.state.app_state.redis.enqueue_job("index_note", note["id"])
    await run_jobs()
    assert await chunks_of(note["id"]) == first
    again = await ingest.index_note(uuid.UUID(note["id"]), settings=settings)
    assert (again.status, again.embedded) == ("unchanged", 0)

    # An edit re-chunks; chunks whose text did not change keep their vectors.
    edited = LONG_NOTE.replace("Paragraph 5:", "Paragraph five, rewritten:")
    response = await api.patch(f"{NOTES}/{note['id']}", json={"content": edited}, headers=me.headers)
    assert response.status_code == 200
    await run_jobs()
    second = await chunks_of(note["id"])
    assert "Paragraph five, rewritten:" in " ".join(c["content"] for c in second)
    assert "Paragraph 5:" not in " ".join(c["content"] for c in second)
    assert {c["content_hash"] for c in first} & {c["content_hash"] for c in second}
    assert {c["content_hash"] for c in first} != {c["content_hash"] for c in second}
    reindexed = await ingest.index_note(uuid.UUID(note["id"]), settings=settings)
    assert reindexed.status == "unchanged"

    # Tags and pins do not touch the chunks.
    await api.patch(f"{NOTES}/{note['id']}", json={"tags": ["x"]}, headers=me.headers)
    await api.patch(f"{NOTES}/{note['id']}/pin", json={"pinned": True}, headers=me.headers)
    await run_jobs()
    assert await chunks_of(note["id"]) == second

    assert (await api.delete(f"{NOTES}/{note['id']}", headers=me.headers)).status_code == 204
    assert await chunks_of(note["id"]) == []
    await run_jobs()  # the clean-up job finds nothing left to do
    assert await KnowledgeChunk.count() == 0


class _EditingEmbedder:
    """Edits the note while "embedding", as a concurrent request would."""

    model, dim, semantic = "hashing-384", 384, False

    def __init__(self, note_id: uuid.UUID) -> None:
        self.note_id = note_id
        self.inner = HashingEmbedder()

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        await Note.update({Note.content: "Edited meanwhile."}).where(Note.id == self.note_id)
        return await self.inner.embed(texts)


async def test_a_job_that_embedded_stale_text_does_not_write_it(
    api: httpx.AsyncClient, community: Community, settings: Settings
) -> None:
    me = await community.user("race@example.com")
    note = await create(api, me, title="Race", content="Original text.")
    note_id = uuid.UUID(note["id"])
    stale = await ingest.index_note(note_id, settings=settings, embedder=_EditingEmbedder(note_id))
    assert stale.status == "superseded"
    assert await chunks_of(note["id"]) == []
    fresh = await ingest.index_note(note_id, settings=settings, embedder=HashingEmbedder())
    assert fresh.status == "indexed"
    assert [c["content"] for c in await chunks_of(note["id"])] == ["Edited meanwhile."]


async def test_a_model_switch_reembeds_everything_and_never_mixes_models(
    app: Litestar, api: httpx.AsyncClient, community: Community, run_jobs, settings: Settings
) -> None:
    me = await community.user("switch@example.com")
    hashing = msgspec.structs.replace(settings, embeddings_provider="hashing")
    notes = [
        await create(api, me, title="Sleep routine", content="Screens off at ten, read a book."),
        await create(api, me, title="Habits", content=LONG_NOTE),
    ]
    await run_worker_until_idle(hashing)  # indexed by the lexical fallback
    assert {c["embedding_model"] for n in notes for c in await chunks_of(n["id"])} == {"hashing-384"}

    # The app searches with the current model (minilm): hashing chunks are not used.
    assert all(item["vector_rank"] is None for item in (await search(api, me, "bedtime reading"))["items"])

    await app.state.app_state.redis.enqueue_job("reindex_all")
    await run_jobs()
    after = [c for n in notes for c in await chunks_of(n["id"])]
    assert {(c["embedding_model"], c["embedding_dim"]) for c in after} == {("all-minilm-l6-v2", 384)}
    assert await KnowledgeChunk.count().where(KnowledgeChunk.embedding_model != "all-minilm-l6-v2") == 0
    top = (await search(api, me, "bedtime reading"))["items"][0]
    assert top["note"]["id"] == notes[0]["id"] and top["vector_rank"] == 1

    # And back: the hashing settings' reindex replaces every chunk again.
    await run_worker_until_idle(hashing)
    assert get_embedder(hashing).model == "hashing-384"
    for note in notes:
        result = await ingest.index_note(uuid.UUID(note["id"]), settings=hashing)
        assert result.status == "indexed" and result.model == "hashing-384"
    assert {c["embedding_model"] for n in notes for c in await chunks_of(n["id"])} == {"hashing-384"}
