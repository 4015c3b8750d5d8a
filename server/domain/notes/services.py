"""Note actions: CRUD, pinning, tags, listing and hybrid search.

A note belongs to its author alone: every action looks the note up by id *and*
owner, so another user's note answers 404 ``note_not_found`` exactly like a
missing one (its existence is not revealed).

After a note's text changes (create, title/content update, delete) the
``index_note`` job is enqueued, once the write has committed; it re-chunks and
re-embeds the note for retrieval and for the vector half of search. Until it
has run, search finds the note through full text only. Redis being down does
not fail the request: the note is saved and the miss is logged
(``python -m workers.knowledge reindex`` catches up).

Search is hybrid: a vector ranking (the nearest chunk of each note, cosine, the
current embedding model, from a per-model similarity floor up) and a full-text ranking (``to_tsvector('english',
title || ' ' || content)``, the expression of the ``notes_fts_idx`` GIN index,
against the query's words OR-ed, by ``ts_rank_cd``) fused with Reciprocal Rank
Fusion. Highlights come from ``ts_headline`` with per-request random
delimiters; the fragments are HTML-escaped and the delimiters then turned into
``<mark>`` tags, so a note's own markup can never reach a client as markup.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import uuid
from functools import partial
from typing import Any

import msgspec

from server.domain.accounts.services import Principal
from server.domain.knowledge.embeddings import EmbeddingError, get_embedder
from server.domain.knowledge.retrieval import nearest_chunks
from server.domain.notes.schemas import (
    NoteCreate,
    NoteOut,
    NotePage,
    NoteUpdate,
    SearchHit,
    SearchRequest,
    SearchResults,
)
from server.domain.tables.notes import Note
from server.foundation.errors import NotFound, ValidationFailed
from server.foundation.pagination import SortKey, keyset_page
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

log = logging.getLogger("lounges.notes")

RRF_K = 60
# Below this cosine similarity a note is not a vector match (measured with
# all-MiniLM-L6-v2: unrelated short notes score 0.0-0.15, related ones 0.4+).
# The lexical fallback scores 0 without a shared word; hash collisions stay small.
MIN_SIMILARITY = {"all-minilm-l6-v2": 0.2, "text-embedding-3-small": 0.2, "hashing-384": 0.05}
_TAG = re.compile(r"^[\w][\w\- ]*$")
_SPACES = re.compile(r"\s+")

# The query's words, OR-ed: plainto_tsquery AND-s them (and keeps phrases of
# hyphenated words as <-> groups, which stay intact).
_TSQUERY = "(SELECT replace(plainto_tsquery('english', {})::text, ' & ', ' | ')::tsquery AS q) AS query"
_DOCUMENT = "to_tsvector('english', n.title || ' ' || n.content)"


def note_out(row: dict[str, Any]) -> NoteOut:
    return NoteOut(
        id=row["id"],
        title=row["title"],
        content=row["content"],
        tags=list(row["tags"] or []),
        pinned=row["pinned"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def normalise_tags(tags: list[str]) -> list[str]:
    """Trimmed, inner spaces collapsed, lower-cased, duplicates dropped (first kept)."""
    result: list[str] = []
    for tag in tags:
        clean = _SPACES.sub(" ", tag.strip()).lower()
        if not _TAG.match(clean) or len(clean) > 50:
            raise ValidationFailed(f"invalid tag {tag!r}", code="invalid_tag")
        if clean not in result:
            result.append(clean)
    return result


async def _enqueue_index(state: AppState, note_id: uuid.UUID) -> None:
    try:
        await state.redis.enqueue_job("index_note", str(note_id))
    except Exception:  # the note is saved; a reindex catches up
        log.warning("could not enqueue index_note", exc_info=True, extra={"note_id": str(note_id)})


async def _owned(principal: Principal, note_id: uuid.UUID) -> dict[str, Any]:
    row = await Note.select().where(Note.id == note_id, Note.user == principal.user_id).first()
    if row is None:
        raise NotFound("no such note", code="note_not_found")
    return row


async def get_note(principal: Principal, note_id: uuid.UUID) -> NoteOut:
    return note_out(await _owned(principal, note_id))


async def do_create_note(state: AppState, principal: Principal, data: NoteCreate) -> NoteOut:
    title = data.title.strip()
    if not title and not data.content.strip():
        raise ValidationFailed("a note needs a title or some content", code="empty_note")
    note_id = uuid.uuid4()
    await Note.insert(
        Note(
            id=note_id,
            user=principal.user_id,
            title=title,
            content=data.content,
            tags=normalise_tags(data.tags),
            pinned=data.pinned,
        )
    )
    await _enqueue_index(state, note_id)
    return await get_note(principal, note_id)


async def do_update_note(state: AppState, principal: Principal, note_id: uuid.UUID, data: NoteUpdate) -> NoteOut:
    async with unit_of_work(state.engine):
        current = await Note.raw(
            'SELECT * FROM notes WHERE id = {} AND "user" = {} FOR UPDATE', note_id, principal.user_id
        )
        if not current:
            raise NotFound("no such note", code="note_not_found")
        row = current[0]
        values: dict[Any, Any] = {}
        if data.title is not msgspec.UNSET:
            values[Note.title] = data.title.strip()
        if data.content is not msgspec.UNSET:
            values[Note.content] = data.content
        if data.tags is not msgspec.UNSET:
            values[Note.tags] = normalise_tags(data.tags)
        if data.pinned is not msgspec.UNSET:
            values[Note.pinned] = data.pinned
        title = values.get(Note.title, row["title"])
        content = values.get(Note.content, row["content"])
        if not title and not content.strip():
            raise ValidationFailed("a note needs a title or some content", code="empty_note")
        if values:
            await Note.update(values).where(Note.id == note_id)
        if (title, content) != (row["title"], row["content"]):
            await on_commit(partial(_enqueue_index, state, note_id))
    return await get_note(principal, note_id)


async def do_pin_note(principal: Principal, note_id: uuid.UUID, pinned: bool) -> NoteOut:
    """Pin or unpin (idempotent). Pinning is not an edit: ``updated_at`` stays."""
    rows = await Note.raw(
        'UPDATE notes SET pinned = {} WHERE id = {} AND "user" = {} RETURNING *', pinned, note_id, principal.user_id
    )
    if not rows:
        raise NotFound("no such note", code="note_not_found")
    return note_out(rows[0])


async def do_delete_note(state: AppState, principal: Principal, note_id: uuid.UUID) -> None:
    """Delete the note; its knowledge chunks go with it (ON DELETE CASCADE)."""
    rows = await Note.delete().where(Note.id == note_id, Note.user == principal.user_id).returning(Note.id)
    if not rows:
        raise NotFound("no such note", code="note_not_found")
    await _enqueue_index(state, note_id)  # idempotent clean-up of anything indexed meanwhile


async def list_notes(
    principal: Principal, *, pinned: bool | None, tag: str | None, limit: int, cursor: str | None = None
) -> NotePage:
    """The caller's notes: pinned first, then by ``updated_at``, newest first (the key
    ``(pinned, updated_at, id)``, so a page boundary never skips or repeats a note)."""
    sql = (
        'SELECT n.id, n.title, n.content, n.tags, n.pinned, n.created_at, n.updated_at FROM notes n WHERE n."user" = {}'
    )
    args: list[Any] = [principal.user_id]
    if pinned is not None:
        sql += " AND n.pinned = {}"
        args.append(pinned)
    if tag is not None:
        [clean] = normalise_tags([tag])
        sql += " AND {} = ANY(n.tags)"
        args.append(clean)
    rows, next_cursor = await keyset_page(
        sql,
        args,
        leading=[SortKey("n.pinned", "boolean")],
        moment="n.updated_at",
        row_id="n.id",
        cursor=cursor,
        limit=limit,
    )
    return NotePage(items=[note_out(r) for r in rows], next_cursor=next_cursor)


# -- search ---------------------------------------------------------------------------------


async def _text_ranking(user_id: uuid.UUID, query: str, limit: int) -> list[uuid.UUID]:
    rows = await Note.raw(
        f"""
        SELECT n.id FROM notes n, {_TSQUERY}
        WHERE n."user" = {{}} AND {_DOCUMENT} @@ q
        ORDER BY ts_rank_cd({_DOCUMENT}, q, 1) DESC, n.updated_at DESC, n.id
        LIMIT {{}}
        """,
        query,
        user_id,
        limit,
    )
    return [r["id"] for r in rows]


async def _vector_ranking(state: AppState, user_id: uuid.UUID, query: str, limit: int) -> tuple[list[uuid.UUID], Any]:
    """Notes by their nearest chunk; ([], None) when the embedder is unavailable."""
    embedder = get_embedder(state.settings)
    try:
        [vector] = await embedder.embed([query])
    except EmbeddingError as exc:
        log.warning("notes search without vectors: %s", exc)
        return [], None
    if not vector.any():
        return [], embedder
    hits = await nearest_chunks(
        user_id=user_id,
        lounge_id=None,
        vector=vector,
        model=embedder.model,
        k=limit * 3,
        exact_max_chunks=state.settings.retrieval_exact_max_chunks,
    )
    floor = MIN_SIMILARITY.get(embedder.model, 0.0)
    ranking: list[uuid.UUID] = []
    for hit in hits:
        if hit.source == "note" and hit.score >= floor and hit.source_id not in ranking:
            ranking.append(hit.source_id)
    return ranking[:limit], embedder


def _marked(fragment: str, start: str, stop: str) -> str:
    return html.escape(fragment, quote=True).replace(start, "<mark>").replace(stop, "</mark>")


async def search_notes(state: AppState, principal: Principal, data: SearchRequest) -> SearchResults:
    query = data.query.strip()
    if not query:
        raise ValidationFailed("the query is empty", code="empty_query")
    candidates = max(50, data.limit * 3)
    text_ids = await _text_ranking(principal.user_id, query, candidates)
    vector_ids, embedder = await _vector_ranking(state, principal.user_id, query, candidates)

    text_rank = {note_id: i + 1 for i, note_id in enumerate(text_ids)}
    vector_rank = {note_id: i + 1 for i, note_id in enumerate(vector_ids)}
    scores: dict[uuid.UUID, float] = {}
    for ranks in (text_rank, vector_rank):
        for note_id, rank in ranks.items():
            scores[note_id] = scores.get(note_id, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(
        scores, key=lambda n: (-scores[n], text_rank.get(n, candidates + 1), vector_rank.get(n, candidates + 1))
    )[: data.limit]
    if not best:
        return SearchResults(
            items=[],
            embedding_model=embedder.model if embedder else None,
            semantic=bool(embedder and embedder.semantic),
            next_cursor=None,
        )

    # Delimiters no note can contain (random per request), turned into <mark> after escaping.
    token = secrets.token_hex(8)
    start, stop, between = f"hls{token}", f"hle{token}", f"hlf{token}"
    title_options = f"HighlightAll=true, StartSel={start}, StopSel={stop}"
    content_options = (
        f"MaxFragments=3, MaxWords=30, MinWords=12, StartSel={start}, StopSel={stop}, FragmentDelimiter={between}"
    )
    rows = await Note.raw(
        f"""
        SELECT n.*, ts_headline('english', n.title, q, {{}}) AS title_hl,
               ts_headline('english', n.content, q, {{}}) AS content_hl
        FROM notes n, {_TSQUERY}
        WHERE n.id = ANY({{}}) AND n."user" = {{}}
        """,
        title_options,
        content_options,
        query,
        best,
        principal.user_id,
    )
    by_id = {row["id"]: row for row in rows}
    items = []
    for note_id in best:
        row = by_id.get(note_id)
        if row is None:  # deleted meanwhile
            continue
        fragments = [f.strip() for f in (row["content_hl"] or "").split(between) if f.strip()]
        items.append(
            SearchHit(
                note=note_out(row),
                score=round(scores[note_id], 6),
                vector_rank=vector_rank.get(note_id),
                text_rank=text_rank.get(note_id),
                title_highlight=_marked(row["title_hl"] or "", start, stop),
                highlights=[_marked(f, start, stop) for f in fragments],
            )
        )
    return SearchResults(
        items=items,
        embedding_model=embedder.model if embedder else None,
        semantic=bool(embedder and embedder.semantic),
        next_cursor=None,
    )
