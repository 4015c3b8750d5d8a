"""Retrieval: the chunks nearest to a question among those the asker may read.

Eligible chunks are the current embedding model's chunks of

- the asker's own notes, and
- the knowledge files of ``lounge_id``, when the asker is an **active member**
  of that lounge (checked here; for a non-member the lounge's files are simply
  not searched) and the file is not deleted.

The filtered-HNSW pitfall: pgvector 0.6 has no iterative index scan, so an HNSW
scan with a WHERE clause looks at ``hnsw.ef_search`` candidates (40 by default)
and filters those; with a selective filter it returns fewer than k rows, or
not the nearest ones. Two paths avoid it:

- **exact** (the usual case): when the asker has at most
  ``RETRIEVAL_EXACT_MAX_CHUNKS`` eligible chunks, they are picked through the
  owner/lounge indexes and ranked by exact cosine distance (a few thousand
  384-dim distances take a few milliseconds). Recall is 1.
- **ANN** (a very large eligible set): the model's HNSW index is scanned without
  the filter, over-fetching ``LIMIT`` ``max(100, 40·k)`` candidates (at most
  1000, pgvector's maximum ``hnsw.ef_search``) with ``hnsw.ef_search`` as large;
  the filter is applied to those, and if fewer than k survive the exact path
  runs anyway. The eligibility count stops at the exact path's limit.

Either way the answer has exactly ``min(k, eligible)`` chunks. The model's name
is written into the SQL as a literal (from the fixed set of known models), as
the partial HNSW indexes require.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.ai.providers import Passage
from server.knowledge.embeddings import Embedder, EmbeddingError, default_embedder, environment_settings
from server.knowledge.tables import EMBEDDING_DIMENSIONS, EmbeddingModel, KnowledgeChunk
from server.lounges.tables import LoungeMembership, MembershipStatus

log = logging.getLogger("lounges.retrieval")

MAX_K = 100
HNSW_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search


@dataclass(frozen=True, slots=True)
class ChunkHit:
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


def _model_sql(model: str) -> tuple[str, int]:
    """The model as a SQL literal and its dimension; only known models get here."""
    known = EmbeddingModel(model)  # ValueError for anything else
    return f"'{known.value}'", EMBEDDING_DIMENSIONS[known]


# Eligibility of a chunk row aliased ``c``: $1 the asker, $2 the lounge whose files
# they may read (NULL: none).
_ELIGIBLE = """(
    (c.source_type = 'note' AND c.owner = $1)
    OR (c.source_type = 'file' AND c.lounge = $2
        AND EXISTS (SELECT 1 FROM files f WHERE f.id = c.file AND f.status <> 'deleted'))
)"""

_TITLED = """
SELECT h.source_type, coalesce(h.note, h.file) AS source_id, h.chunk_index, h.content, h.distance,
       coalesce(n.title, fl.filename, '') AS title
FROM ({hits}) h
LEFT JOIN notes n ON n.id = h.note
LEFT JOIN files fl ON fl.id = h.file
ORDER BY h.distance, h.id
"""


def exact_sql(model: str) -> str:
    literal, dim = _model_sql(model)
    # OFFSET 0 fences the subquery so the planner picks eligible rows through the
    # owner/lounge indexes instead of the HNSW index; unlike a MATERIALIZED CTE the
    # rows stream into a top-k sort instead of being stored (and spilled) first.
    hits = f"""
        SELECT e.id, e.source_type, e.note, e.file, e.chunk_index, e.content,
               e.embedding::vector({dim}) <=> $3 AS distance
        FROM (
            SELECT c.id, c.source_type, c.note, c.file, c.chunk_index, c.content, c.embedding
            FROM knowledge_chunks c
            WHERE c.embedding_model = {literal} AND {_ELIGIBLE}
            OFFSET 0
        ) e
        ORDER BY distance, e.id
        LIMIT $4
    """
    return _TITLED.format(hits=hits)


def ann_sql(model: str, inner_limit: int) -> str:
    literal, dim = _model_sql(model)
    hits = f"""
        WITH candidates AS MATERIALIZED (
            SELECT c.id, c.source_type, c.note, c.file, c.owner, c.lounge, c.chunk_index, c.content,
                   c.embedding::vector({dim}) <=> $3 AS distance
            FROM knowledge_chunks c
            WHERE c.embedding_model = {literal}
            ORDER BY c.embedding::vector({dim}) <=> $3
            LIMIT {int(inner_limit)}
        )
        SELECT c.id, c.source_type, c.note, c.file, c.chunk_index, c.content, c.distance
        FROM candidates c
        WHERE {_ELIGIBLE}
        ORDER BY c.distance, c.id
        LIMIT $4
    """
    return _TITLED.format(hits=hits)


def _hits(rows: list[Any]) -> list[ChunkHit]:
    return [
        ChunkHit(
            source=row["source_type"],
            source_id=row["source_id"],
            title=row["title"],
            chunk=row["chunk_index"],
            text=row["content"],
            distance=float(row["distance"]),
        )
        for row in rows
    ]


async def count_eligible(
    connection: Any, *, user_id: uuid.UUID, lounge_id: uuid.UUID | None, model: str, up_to: int
) -> int:
    """How many chunks the asker may read, counted no further than ``up_to``."""
    literal, _ = _model_sql(model)
    return await connection.fetchval(
        f"""SELECT count(*) FROM (
                SELECT 1 FROM knowledge_chunks c WHERE c.embedding_model = {literal} AND {_ELIGIBLE} LIMIT $3
            ) eligible""",
        user_id,
        lounge_id,
        up_to,
    )


async def nearest_chunks(
    *,
    user_id: uuid.UUID,
    lounge_id: uuid.UUID | None,
    vector: np.ndarray,
    model: str,
    k: int,
    exact_max_chunks: int | None = None,
) -> list[ChunkHit]:
    """The ``k`` eligible chunks of ``model`` nearest to ``vector`` (see the module doc).

    ``lounge_id`` must already be checked: its files are searched as given.
    """
    if k <= 0:
        return []
    if exact_max_chunks is None:
        exact_max_chunks = environment_settings().retrieval_exact_max_chunks
    vector = np.asarray(vector, dtype=np.float32)
    async with KnowledgeChunk._meta.db.pool.acquire() as connection:
        up_to = max(exact_max_chunks, k) + 1
        eligible = await count_eligible(connection, user_id=user_id, lounge_id=lounge_id, model=model, up_to=up_to)
        if eligible == 0:
            return []
        if eligible >= up_to:  # more than the exact path should rank: over-fetch from the index once
            inner = min(HNSW_MAX_EF_SEARCH, max(100, 40 * k))
            async with connection.transaction():
                # The ANN path exists to use the index; a large table is assumed.
                await connection.execute(f"SET LOCAL hnsw.ef_search = {int(inner)}; SET LOCAL enable_seqscan = off")
                rows = await connection.fetch(ann_sql(model, inner), user_id, lounge_id, vector, k)
            if len(rows) >= k:
                return _hits(rows)
        rows = await connection.fetch(exact_sql(model), user_id, lounge_id, vector, k)
    return _hits(rows)


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


async def retrieve(
    *,
    user_id: uuid.UUID,
    lounge_id: uuid.UUID | None,
    query: str,
    k: int,
    embedder: Embedder | None = None,
    exact_max_chunks: int | None = None,
    vector: np.ndarray | None = None,
) -> list[Passage]:
    """The ``k`` passages nearest to ``query`` that ``user_id`` may read: their own
    notes, and ``lounge_id``'s knowledge files when they are an active member of it
    (checked here). Best first; ``score`` is the cosine similarity.

    ``embedder`` defaults to the process environment's (``EMBEDDINGS_PROVIDER``);
    callers holding an ``AppState`` pass ``get_embedder(state.settings)``. When the
    embedder fails (a provider outage) the answer is empty and a warning is logged:
    the coach answers without passages rather than not at all. The membership check
    and the embedding run side by side, so call it outside a transaction; a caller
    that already embedded ``query`` with ``embedder`` passes it as ``vector``.
    """
    k = min(k, MAX_K)
    if k <= 0 or not query.strip():
        return []
    embedder = embedder or default_embedder()
    if vector is None:
        lounge, vector = await asyncio.gather(readable_lounge(user_id, lounge_id), embed_query(embedder, query))
    else:
        lounge = await readable_lounge(user_id, lounge_id)
    if vector is None or not np.any(vector):
        return []  # nothing the model can represent (e.g. only stop words for the hashing model)
    hits = await nearest_chunks(
        user_id=user_id,
        lounge_id=lounge,
        vector=vector,
        model=embedder.model,
        k=k,
        exact_max_chunks=exact_max_chunks,
    )
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
