"""Retrieval: the chunks nearest to a question among those the asker may read.

Eligible chunks are the current embedding model's chunks of two **parts**:

- ``note``: the asker's own notes;
- ``file``: the knowledge files of ``lounge_id`` that are not deleted, when the
  asker is an **active member** of that lounge (checked here; for a non-member
  the lounge's files are simply not searched).

Each part is counted and searched on its own connection, the two side by side,
and the two top-k lists are merged (the top k of a union is among the top k of
its parts). Every model has a partial HNSW index per source type, and each part
a partial btree that finds (and counts, index-only) its chunks (the
per-source-type index migration).

The filtered-HNSW pitfall: pgvector 0.6 has no iterative index scan, so an HNSW
scan with a WHERE clause looks at ``hnsw.ef_search`` candidates (40 by default)
and filters those; with a selective filter it returns fewer than k rows, or
not the nearest ones. So, per part, once counted (no further than ``COUNT_CAP``):

- **exact** when the part has at most ``RETRIEVAL_EXACT_MAX_CHUNKS`` chunks:
  they are picked through the part's btree and ranked by exact cosine distance
  (~0.7 µs a chunk on the benchmark host). Recall is 1.
- **ANN** above that: the part's HNSW index is scanned without the filter,
  over-fetching ``inner`` candidates (also ``hnsw.ef_search``) sized by the
  part's **selectivity**: ``OVERFETCH · k · population / count``, where the
  population is the index's row estimate (``pg_class.reltuples``, kept by
  ANALYZE), within ``[HNSW_MIN_EF_SEARCH, 1000]`` (1000 is pgvector's maximum
  ``ef_search``): a part that is most of its index asks for the floor, a part
  that is a few percent of it for a few hundred. The filter is applied to
  those; if fewer than ``min(k, count)`` survive, the part is searched exactly
  after all.

Either way the answer has exactly ``min(k, eligible)`` chunks. The coach counts the
parts, and searches the exact ones when its vector is at hand, inside its prompt's one
statement (``server/domain/ai/prompt.py``), built from the same SQL pieces as here. The model's name
and the source type are written into the SQL as literals (from the fixed sets
of known values), as the partial indexes require.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from piccolo.engine.postgres import PostgresEngine

from server.domain.knowledge.embeddings import Embedder, EmbeddingError, default_embedder, environment_settings
from server.domain.knowledge.metrics import searched
from server.domain.llm.providers import Passage
from server.domain.tables.knowledge import (
    EMBEDDING_DIMENSIONS,
    EmbeddingModel,
    KnowledgeChunk,
    KnowledgeSourceType,
    hnsw_index,
)
from server.domain.tables.lounges import LoungeMembership, MembershipStatus

log = logging.getLogger("lounges.retrieval")

MAX_K = 100
HNSW_MIN_EF_SEARCH = 100  # below it the graph search misses neighbours of queries far from the part
HNSW_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
OVERFETCH = 3  # candidates asked for per eligible chunk expected among them
COUNT_CAP = 20_000  # a part counted this far is known to be at least this big: enough to size the over-fetch

NOTE = KnowledgeSourceType.note
FILE = KnowledgeSourceType.file


@dataclass(frozen=True, slots=True)
class ChunkHit:
    id: uuid.UUID
    source: str
    source_id: uuid.UUID
    title: str
    chunk: int
    text: str
    distance: float

    @property
    def score(self) -> float:
        """Cosine similarity (1 - cosine distance)."""
        return 1.0 - self.distance


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the eligible chunks: its source type, size and the SQL arguments that select it."""

    source: KnowledgeSourceType
    count: int  # no further than COUNT_CAP
    population: float  # the part's HNSW index's row estimate (0 when unknown)
    arguments: tuple[Any, ...]  # note: (owner,); file: (lounge, live file ids)

    def overfetch(self, k: int) -> int:
        """How many candidates an HNSW over-fetch asks for to find ``k`` of this part's chunks."""
        population = max(self.population, self.count)
        wanted = math.ceil(OVERFETCH * k * population / max(self.count, 1))
        return max(min(k, HNSW_MAX_EF_SEARCH), HNSW_MIN_EF_SEARCH, min(wanted, HNSW_MAX_EF_SEARCH))


def _model_sql(model: str) -> tuple[EmbeddingModel, str, int]:
    """The model, as a SQL literal and its dimension; only known models get here."""
    known = EmbeddingModel(model)  # ValueError for anything else
    return known, f"'{known.value}'", EMBEDDING_DIMENSIONS[known]


# What selects a part's chunks (rows aliased ``c``), and how many arguments it takes.
_FILTERS: dict[KnowledgeSourceType, tuple[str, int]] = {
    NOTE: ("c.owner = {scope}", 1),
    FILE: ("c.lounge = {scope} AND c.file = ANY({files}::uuid[])", 2),
}

_TITLED = """
SELECT h.id, h.source_type, coalesce(h.note, h.file) AS source_id, h.chunk_index, h.content, h.distance,
       coalesce(n.title, fl.filename, '') AS title
FROM ({hits}) h
LEFT JOIN notes n ON n.id = h.note
LEFT JOIN files fl ON fl.id = h.file
ORDER BY h.distance, h.id
"""


def _part_sql(model: str, source: KnowledgeSourceType) -> tuple[str, str, str, str, str]:
    """``model`` as a literal, the vector type, the part's filter and the placeholders of the vector and k."""
    _, literal, dim = _model_sql(model)
    where, arguments = _FILTERS[source]
    return literal, f"vector({dim})", where.format(scope="$1", files="$2"), f"${arguments + 1}", f"${arguments + 2}"


def exact_sql(model: str, source: KnowledgeSourceType) -> str:
    """The part's k nearest chunks by exact distance; arguments: the part's, the vector, k."""
    literal, vector, where, query, k = _part_sql(model, source)
    return _TITLED.format(hits=_exact_hits(literal, vector, source, where, query, k))


def exact_hits_json(model: str, source: KnowledgeSourceType, *, scope: str, files: str, vector: str, k: str) -> str:
    """A JSON array (``[]`` when none) of the part's k nearest chunks by exact distance, as
    :func:`exact_sql` finds them, for use as a scalar inside a bigger statement: ``scope``,
    ``files`` (for files), ``vector`` and ``k`` are SQL expressions (placeholders, subqueries)."""
    literal, vector_type, _, _, _ = _part_sql(model, source)
    where = _FILTERS[source][0].format(scope=scope, files=files)
    titled = _TITLED.format(hits=_exact_hits(literal, vector_type, source, where, vector, k))
    return f"(SELECT coalesce(json_agg(t ORDER BY t.distance, t.id), '[]') FROM ({titled}) t)"


def _exact_hits(literal: str, vector: str, source: KnowledgeSourceType, where: str, query: str, k: str) -> str:
    # OFFSET 0 fences the subquery so the planner picks the part's rows through its btree
    # instead of the HNSW index; unlike a MATERIALIZED CTE the rows stream into a top-k sort.
    return f"""
        SELECT e.id, e.source_type, e.note, e.file, e.chunk_index, e.content,
               e.embedding::{vector} <=> {query} AS distance
        FROM (
            SELECT c.id, c.source_type, c.note, c.file, c.chunk_index, c.content, c.embedding
            FROM knowledge_chunks c
            WHERE c.embedding_model = {literal} AND c.source_type = '{source.value}' AND {where}
            OFFSET 0
        ) e
        ORDER BY distance, e.id
        LIMIT {k}
    """


def ann_sql(model: str, source: KnowledgeSourceType, inner: int) -> str:
    """The part's k nearest among the ``inner`` nearest chunks of its source type (HNSW)."""
    literal, vector, where, query, k = _part_sql(model, source)
    hits = f"""
        WITH candidates AS MATERIALIZED (
            SELECT c.id, c.source_type, c.note, c.file, c.owner, c.lounge, c.chunk_index, c.content,
                   c.embedding::{vector} <=> {query} AS distance
            FROM knowledge_chunks c
            WHERE c.embedding_model = {literal} AND c.source_type = '{source.value}'
            ORDER BY c.embedding::{vector} <=> {query}
            LIMIT {int(inner)}
        )
        SELECT c.id, c.source_type, c.note, c.file, c.chunk_index, c.content, c.distance
        FROM candidates c
        WHERE {where}
        ORDER BY c.distance, c.id
        LIMIT {k}
    """
    return _TITLED.format(hits=hits)


def count_sql(model: str, source: KnowledgeSourceType) -> str:
    """The part's size (up to $2), its HNSW index's row estimate and, for files, the lounge's live files.

    Arguments: the asker (notes) or the lounge (files), the cap.
    """
    population = population_sql(model, source)
    if source is NOTE:
        return f"SELECT NULL::uuid[] AS files, {population} AS population, {part_count_sql(model, NOTE, '$1', '', '$2')} AS count"
    return f"""
        WITH live AS ({live_files_sql("$1")})
        SELECT live.ids AS files, {population} AS population, {part_count_sql(model, FILE, "$1", "live.ids", "$2")} AS count
        FROM live
    """


def population_sql(model: str, source: KnowledgeSourceType) -> str:
    """The row estimate of the HNSW index of ``model``'s chunks of ``source`` (a scalar)."""
    return f"(SELECT reltuples FROM pg_class WHERE oid = '{hnsw_index(EmbeddingModel(model), source)}'::regclass)"


def live_files_sql(lounge: str) -> str:
    """One row, ``ids``: the files of the lounge ``lounge`` (an SQL expression) that are not deleted."""
    return f"""
        SELECT coalesce(array_agg(f.id), '{{}}'::uuid[]) AS ids
        FROM files f WHERE f.lounge = {lounge} AND f.status <> 'deleted'
    """


def part_count_sql(model: str, source: KnowledgeSourceType, scope: str, files: str, cap: str) -> str:
    """The size of a part (a scalar, counted no further than ``cap``): ``scope`` is the asker
    (notes) or the lounge (files), ``files`` the lounge's live files; all SQL expressions."""
    _, literal, _ = _model_sql(model)
    where = _FILTERS[source][0].format(scope=scope, files=files)
    return f"""(
        SELECT count(*) FROM (
            SELECT 1 FROM knowledge_chunks c
            WHERE c.embedding_model = {literal} AND c.source_type = '{source.value}' AND {where} LIMIT {cap}
        ) p
    )"""


async def count_part(connection: Any, source: KnowledgeSourceType, scope: uuid.UUID, *, model: str) -> Part:
    """The part of ``source`` for ``scope`` (the asker for notes, the lounge for files), counted
    no further than COUNT_CAP."""
    row = await connection.fetchrow(count_sql(model, source), scope, COUNT_CAP)
    arguments = (scope,) if source is NOTE else (scope, row["files"])
    return Part(source, row["count"], max(row["population"], 0.0), arguments)


async def search_part(
    connection: Any, part: Part, *, vector: np.ndarray, model: str, k: int, exact_max_chunks: int
) -> list[ChunkHit]:
    """The ``min(k, part.count)`` chunks of ``part`` nearest to ``vector`` (see the module doc)."""
    if part.count == 0:
        return []
    if part.count > exact_max_chunks:
        inner = part.overfetch(k)
        async with connection.transaction():
            # The ANN path exists to use the index; a large table is assumed.
            await connection.execute(f"SET LOCAL hnsw.ef_search = {inner}; SET LOCAL enable_seqscan = off")
            rows = await connection.fetch(ann_sql(model, part.source, inner), *part.arguments, vector, k)
        if len(rows) >= min(k, part.count):
            return _hits(rows)
    return _hits(await connection.fetch(exact_sql(model, part.source), *part.arguments, vector, k))


def _hits(rows: list[Any]) -> list[ChunkHit]:
    return [
        ChunkHit(
            id=row["id"],
            source=row["source_type"],
            source_id=row["source_id"],
            title=row["title"],
            chunk=row["chunk_index"],
            text=row["content"],
            distance=float(row["distance"]),
        )
        for row in rows
    ]


def hits_from_json(items: list[dict[str, Any]]) -> list[ChunkHit]:
    """The hits of an :func:`exact_hits_json` array, decoded."""
    return [
        ChunkHit(
            id=uuid.UUID(item["id"]),
            source=item["source_type"],
            source_id=uuid.UUID(item["source_id"]),
            title=item["title"],
            chunk=item["chunk_index"],
            text=item["content"],
            distance=float(item["distance"]),
        )
        for item in items
    ]


def _pool() -> Any:
    """The asyncpg pool of the engine the knowledge tables are bound to."""
    engine = KnowledgeChunk._meta.db
    assert isinstance(engine, PostgresEngine) and engine.pool is not None
    return engine.pool


async def _part(source: KnowledgeSourceType, scope: uuid.UUID, model: str) -> Part:
    async with _pool().acquire() as connection:
        return await count_part(connection, source, scope, model=model)


async def _search(part: Part, *, vector: np.ndarray, model: str, k: int, exact_max_chunks: int) -> list[ChunkHit]:
    async with _pool().acquire() as connection:
        return await search_part(connection, part, vector=vector, model=model, k=k, exact_max_chunks=exact_max_chunks)


async def eligible_parts(*, user_id: uuid.UUID, lounge_id: uuid.UUID | None, model: str) -> list[Part]:
    """The non-empty parts ``user_id`` may search: their notes, and ``lounge_id``'s files when
    they are an active member of it (checked here). Needs no vector: it can run while the
    question is embedded. Each part is counted on its own connection, side by side."""

    async def files() -> Part | None:
        lounge = await readable_lounge(user_id, lounge_id)
        return await _part(FILE, lounge, model) if lounge is not None else None

    parts = await asyncio.gather(_part(NOTE, user_id, model), files())
    return [part for part in parts if part is not None and part.count]


async def search_parts(
    parts: list[Part],
    *,
    vector: np.ndarray,
    model: str,
    k: int,
    exact_max_chunks: int | None = None,
    observe: bool = True,
) -> list[ChunkHit]:
    """The ``k`` chunks of ``parts`` nearest to ``vector``: each part searched on its own
    connection, side by side (so not inside a transaction), the lists merged. ``observe``:
    record the search in the retrieval series (off when the caller records a search it
    did partly elsewhere)."""
    if k <= 0 or not parts:
        return []
    if exact_max_chunks is None:
        exact_max_chunks = environment_settings().retrieval_exact_max_chunks
    vector = np.asarray(vector, dtype=np.float32)
    started = time.perf_counter()
    found = await asyncio.gather(
        *(_search(part, vector=vector, model=model, k=k, exact_max_chunks=exact_max_chunks) for part in parts)
    )
    hits = sorted((hit for part_hits in found for hit in part_hits), key=lambda hit: (hit.distance, hit.id))
    if observe:
        searched(time.perf_counter() - started, sum(part.count for part in parts))
    return hits[:k]


async def nearest_chunks(
    *,
    user_id: uuid.UUID,
    lounge_id: uuid.UUID | None,
    vector: np.ndarray,
    model: str,
    k: int,
    exact_max_chunks: int | None = None,
) -> list[ChunkHit]:
    """The ``k`` chunks of ``model`` nearest to ``vector`` among the asker's notes and, when
    they are an active member, ``lounge_id``'s files (see the module doc)."""
    if k <= 0:
        return []
    parts = await eligible_parts(user_id=user_id, lounge_id=lounge_id, model=model)
    return await search_parts(parts, vector=vector, model=model, k=k, exact_max_chunks=exact_max_chunks)


async def readable_lounge(user_id: uuid.UUID, lounge_id: uuid.UUID | None) -> uuid.UUID | None:
    """``lounge_id`` when ``user_id`` is an active member of it, else None."""
    if lounge_id is None:
        return None
    member = await LoungeMembership.exists().where(
        LoungeMembership.lounge == lounge_id,
        LoungeMembership.user == user_id,
        LoungeMembership.status == MembershipStatus.active,
    )
    return lounge_id if member else None


async def embed_query(embedder: Embedder, query: str) -> np.ndarray | None:
    """``query``'s embedding, or None when the embedder fails (logged)."""
    try:
        [vector] = await embedder.embed([query])
    except EmbeddingError as exc:
        log.warning("retrieval skipped: %s", exc, extra={"model": embedder.model})
        return None
    return vector


def as_passages(hits: list[ChunkHit]) -> list[Passage]:
    """Hits as the prompt's passages (``score`` = cosine similarity), best first."""
    return [
        Passage(
            source="note" if hit.source == "note" else "file",
            source_id=str(hit.source_id),
            title=hit.title,
            chunk=hit.chunk,
            text=hit.text,
            score=round(hit.score, 6),
        )
        for hit in hits
    ]


async def retrieve(
    *,
    user_id: uuid.UUID,
    lounge_id: uuid.UUID | None,
    query: str,
    k: int,
    embedder: Embedder | None = None,
    exact_max_chunks: int | None = None,
) -> list[Passage]:
    """The ``k`` passages nearest to ``query`` that ``user_id`` may read: their own
    notes, and ``lounge_id``'s knowledge files when they are an active member of it
    (checked here). Best first.

    ``embedder`` defaults to the process environment's (``EMBEDDINGS_PROVIDER``);
    callers holding an ``AppState`` pass ``get_embedder(state.settings)``. The
    question is embedded while the parts are counted; with nothing to search the
    embedding is not waited for. When the embedder fails (a provider outage) the
    answer is empty and a warning is logged: the coach answers without passages
    rather than not at all. Call it outside a transaction.
    """
    k = min(k, MAX_K)
    if k <= 0 or not query.strip():
        return []
    embedder = embedder or default_embedder()
    embedding = asyncio.ensure_future(embed_query(embedder, query))
    try:
        parts = await eligible_parts(user_id=user_id, lounge_id=lounge_id, model=embedder.model)
        vector = await embedding if parts else None
    finally:
        if not embedding.done():
            embedding.cancel()
    if vector is None or not np.any(vector):
        return []  # nothing to search, the embedder failed, or nothing the model can represent
    return as_passages(
        await search_parts(parts, vector=vector, model=embedder.model, k=k, exact_max_chunks=exact_max_chunks)
    )
