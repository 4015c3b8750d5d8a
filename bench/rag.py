"""RAG over real pgvector: recall@k of the coach's retrieval against an exact ranking, and its latency.

``python -m bench rag`` (defaults) or ``python -m bench.rag --sizes 20000,100000 --queries 200 ...``.

For each corpus size (default 20,000 and 100,000 chunks) the harness

1. starts embedded PostgreSQL 16 + pgvector 0.6 (as ``./scripts/dev`` does,
   :class:`bench.stack.BenchStack`), runs the real migrations (so the partial
   HNSW index of every embedding model exists exactly as in production);
2. generates a corpus of **clustered unit vectors** (384 dims, stored under
   one model name, ``all-minilm-l6-v2`` by default, or ``hashing-384``):
   users whose chunk counts are skewed like real life (log-normal: most have a
   few dozen chunks, a few have thousands, plus "power users" around the
   ``RETRIEVAL_EXACT_MAX_CHUNKS`` threshold when they fit), each chunk cut from
   a ``notes`` row of its owner (1-6 chunks per note); and one lounge whose
   **knowledge files** hold 10 % of the corpus (plus one *deleted* file that
   must never come back), with active, removed and no memberships. Rows go
   straight into ``users``/``notes``/``files``/``lounges``/``knowledge_chunks``
   with ``COPY``. The model's partial HNSW index is dropped before and
   recreated after with its own DDL (``--index-build bulk``, the default: about
   a minute at 100,000 chunks) or kept in place (``incremental``, as production
   inserts: about 400 chunks/s here, four minutes at 100,000);
3. runs ~200 queries per size through the real
   :func:`server.domain.knowledge.retrieval.retrieve` in this process (with an
   embedder stub returning the query vector chosen here: a point near one of
   the user's topics, a lounge topic or a random one), and compares each answer
   with an exact numpy ranking (float64) of the same user's eligible chunks.

Variants per query (their order rotates from query to query):

- ``default``  — ``retrieve()`` as the coach calls it (each part — the
  asker's notes, the lounge's files — searched exactly up to
  ``RETRIEVAL_EXACT_MAX_CHUNKS`` chunks, by an HNSW over-fetch sized by its
  selectivity above);
- ``hnsw``     — ``retrieve(..., exact_max_chunks=0)``: the HNSW over-fetch
  path forced for every part (it still falls back to the exact scan when fewer
  than k candidates survive the filter; those fall-backs are counted);
- ``exact``    — ``retrieve(..., exact_max_chunks=10**9)``: the exact scan
  forced for everyone (latency reference);
- ``naive``    — the filtered HNSW queries a developer would write on the same
  indexes (per source type ``WHERE <eligible> ORDER BY embedding <=> q LIMIT
  k``, merged; sequential and bitmap scans off so the planner takes the HNSW
  indexes, as it does on a big table; ``hnsw.ef_search`` at its default 40),
  for contrast: pgvector 0.6 filters the 40 candidates an index returns.

Reported per size and variant: recall@k (mean, min), answers with exactly
``min(k, eligible)`` results, chunks returned that the asker may not read (must
be 0), latency p50/p95/p99 (wall time of the call, one query at a time), which
path answered per part (``note exact``, ``file ann``, ``>exact`` for a
fall-back), the same by asker, by where the query lies and by
path, and how much worse the answer's k-th hit is than the exact k-th (cosine
similarity). A profile times each step of ``nearest_chunks`` alone for one
asker of each kind (wall time here, and PostgreSQL's execution time from
``EXPLAIN (ANALYZE, BUFFERS)``). A table is printed; JSON + PNG go to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.loadgen import percentile
from bench.procfs import available_cpus, machine_busy_percent, wait_for_quiet
from bench.results import fmt, format_table, machine_info, output_paths, pyplot, save_json
from bench.stack import BenchStack

log = logging.getLogger("bench")

DIM = 384
MODELS = ("all-minilm-l6-v2", "hashing-384")
DEFAULT_SIZES = (20_000, 100_000)
DEFAULT_QUERIES = 200
QUICK_QUERIES = 60
WARMUP_QUERIES = 20
K = 10
TOPICS = 256
FILE_SHARE = 0.10  # of the corpus: the lounge's knowledge files
DELETED_SHARE = 0.01  # one deleted file of the lounge (never eligible)
MEMBER_SHARE = 0.30  # users who are active members of the lounge
REMOVED_SHARE = 0.05  # users removed from it (ask with its id, must not see its files)
POWER_FACTORS = (0.8, 1.2, 1.6)  # x RETRIEVAL_EXACT_MAX_CHUNKS, while they fit in 25 % of the corpus
VARIANTS = ("default", "hnsw", "exact", "naive")
TARGET_RECALL = 0.95
TARGET_P95_MS = 20.0
BUSY_WARNING = 15.0


# -- the corpus -------------------------------------------------------------------------------


@dataclass
class BenchUser:
    id: uuid.UUID
    rows: np.ndarray  # indexes of this user's note chunks in Corpus.vectors
    topics: np.ndarray
    membership: str | None  # "active", "removed" or None
    power: bool = False


@dataclass
class Corpus:
    size: int
    model: str
    vectors: np.ndarray  # float32, unit rows
    source_ids: list[uuid.UUID]  # note or file id per row
    chunk_index: np.ndarray
    topics: np.ndarray
    users: list[BenchUser]
    mentor_user: uuid.UUID
    mentor: uuid.UUID
    lounge: uuid.UUID
    lounge_rows: np.ndarray  # chunks of the lounge's ready files
    deleted_rows: np.ndarray  # chunks of its deleted file
    lounge_topics: np.ndarray
    notes: list[tuple[uuid.UUID, uuid.UUID, int]] = field(default_factory=list)  # (note, user, chunks)
    files: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)  # (file, status, chunks)

    def key_index(self) -> dict[tuple[str, int], int]:
        return {(str(s), int(c)): i for i, (s, c) in enumerate(zip(self.source_ids, self.chunk_index, strict=True))}

    def eligible(self, user: BenchUser, lounge: uuid.UUID | None) -> np.ndarray:
        if lounge == self.lounge and user.membership == "active":
            return np.concatenate([user.rows, self.lounge_rows])
        return user.rows


def _unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)).astype(np.float32)


def _around(rng: np.random.Generator, center: np.ndarray, count: int, spread: float) -> np.ndarray:
    """``count`` unit vectors scattered around ``center`` (per-dimension sd ``spread / sqrt(DIM)``)."""
    return _unit(center + spread * rng.normal(size=(count, DIM)) / np.sqrt(DIM))


def query_vector(rng: np.random.Generator, topic: np.ndarray) -> np.ndarray:
    return _around(rng, topic, 1, 0.9)[0]


def user_counts(rng: np.random.Generator, budget: int) -> list[int]:
    """Per-user chunk counts summing to ``budget``: log-normal (median ~30, long tail), at least 1."""
    counts: list[int] = []
    total = 0
    while total < budget:
        count = max(1, int(rng.lognormal(mean=np.log(30), sigma=1.3)))
        count = min(count, budget - total)
        counts.append(count)
        total += count
    return counts


def generate(size: int, model: str, exact_max: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    topics = _unit(rng.normal(size=(TOPICS, DIM)))
    lounge_topics = rng.choice(TOPICS, size=16, replace=False)
    file_budget = round(FILE_SHARE * size)
    deleted_budget = round(DELETED_SHARE * size)
    note_budget = size - file_budget - deleted_budget
    power: list[int] = []
    for factor in POWER_FACTORS:
        count = int(factor * exact_max)
        if sum(power) + count <= 0.25 * size:
            power.append(count)
    counts = power + user_counts(rng, note_budget - sum(power))

    vectors: list[np.ndarray] = []
    source_ids: list[uuid.UUID] = []
    chunk_index: list[int] = []
    users: list[BenchUser] = []
    notes: list[tuple[uuid.UUID, uuid.UUID, int]] = []
    row = 0
    for number, count in enumerate(counts):
        favourite = rng.choice(TOPICS, size=int(rng.integers(1, 5)), replace=False)
        user_id = uuid.uuid4()
        start = row
        left = count
        while left:
            chunks = min(left, int(rng.integers(1, 7)))
            topic = int(rng.choice(favourite)) if rng.random() < 0.85 else int(rng.integers(TOPICS))
            center = _around(rng, topics[topic], 1, 0.6)[0]
            vectors.append(_around(rng, center, chunks, 0.6))
            note_id = uuid.uuid4()
            notes.append((note_id, user_id, chunks))
            source_ids += [note_id] * chunks
            chunk_index += range(chunks)
            row += chunks
            left -= chunks
        draw = rng.random()
        membership = "active" if draw < MEMBER_SHARE else "removed" if draw < MEMBER_SHARE + REMOVED_SHARE else None
        if number == len(power) - 1 and power:
            membership = "active"  # the biggest power user also reads the lounge's files
        users.append(
            BenchUser(
                id=user_id,
                rows=np.arange(start, row),
                topics=favourite,
                membership=membership,
                power=number < len(power),
            )
        )

    files: list[tuple[uuid.UUID, str, int]] = []
    lounge_start = row
    left = file_budget
    while left:
        chunks = min(left, int(rng.integers(50, 401)))
        file_id = uuid.uuid4()
        topic = int(rng.choice(lounge_topics))
        center = _around(rng, topics[topic], 1, 0.4)[0]
        vectors.append(_around(rng, center, chunks, 0.7))
        files.append((file_id, "ready", chunks))
        source_ids += [file_id] * chunks
        chunk_index += range(chunks)
        row += chunks
        left -= chunks
    lounge_end = row
    if deleted_budget:
        file_id = uuid.uuid4()
        vectors.append(_around(rng, topics[int(rng.choice(lounge_topics))], deleted_budget, 0.8))
        files.append((file_id, "deleted", deleted_budget))
        source_ids += [file_id] * deleted_budget
        chunk_index += range(deleted_budget)
        row += deleted_budget
    return Corpus(
        size=row,
        model=model,
        vectors=np.concatenate(vectors),
        source_ids=source_ids,
        chunk_index=np.asarray(chunk_index),
        topics=topics,
        users=users,
        mentor_user=uuid.uuid4(),
        mentor=uuid.uuid4(),
        lounge=uuid.uuid4(),
        lounge_rows=np.arange(lounge_start, lounge_end),
        deleted_rows=np.arange(lounge_end, row),
        lounge_topics=lounge_topics,
        notes=notes,
        files=files,
    )


# -- loading it into PostgreSQL ---------------------------------------------------------------


async def load(connection: Any, corpus: Corpus, *, bulk_index: bool, batch: int = 5000) -> dict[str, Any]:
    """Insert the corpus (users, notes, a mentor, a lounge, files, memberships, chunks)."""
    started = time.perf_counter()
    tag = uuid.uuid4().hex[:6]
    users = [(u.id, f"rag-{tag}-{i}@example.com", f"Rag User {i}") for i, u in enumerate(corpus.users)]
    users.append((corpus.mentor_user, f"rag-{tag}-mentor@example.com", "Rag Mentor"))
    await connection.copy_records_to_table("users", records=users, columns=["id", "email", "full_name"])
    await connection.execute(
        "INSERT INTO mentors (id, \"user\", headline, bio, status) VALUES ($1, $2, 'Rag', '', 'approved')",
        corpus.mentor,
        corpus.mentor_user,
    )
    await connection.execute(
        "INSERT INTO lounges (id, mentor, title, channel, ai_reply_policy) VALUES ($1, $2, 'Rag lounge', $3, 'always')",
        corpus.lounge,
        corpus.mentor,
        f"lounge:{corpus.lounge}",
    )
    await connection.copy_records_to_table(
        "lounge_memberships",
        records=[
            (uuid.uuid4(), corpus.lounge, u.id, "member", u.membership)
            for u in corpus.users
            if u.membership is not None
        ],
        columns=["id", "lounge", "user", "role", "status"],
    )
    await connection.copy_records_to_table(
        "notes",
        records=[(n, u, f"Note {i}", "synthetic", []) for i, (n, u, _) in enumerate(corpus.notes)],
        columns=["id", "user", "title", "content", "tags"],
    )
    await connection.copy_records_to_table(
        "files",
        records=[
            (
                f,
                corpus.mentor_user,
                "knowledge",
                f"knowledge/{f}",
                f"guide-{i}.md",
                "text/markdown",
                1,
                "0" * 64,
                "knowledge",
                corpus.lounge,
                status,
            )
            for i, (f, status, _) in enumerate(corpus.files)
        ],
        columns=[
            "id",
            "owner",
            "bucket",
            "object_key",
            "filename",
            "content_type",
            "size",
            "sha256",
            "purpose",
            "lounge",
            "status",
        ],
    )
    index_ddl = None
    if bulk_index:
        # Bulk build: drop the model's HNSW indexes, COPY, recreate them with the very same DDL
        # (pg_indexes.indexdef) and enough maintenance_work_mem for an in-memory build.
        index_ddl = [
            await connection.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = $1", name)
            for name in hnsw_index_names(corpus.model)
        ]
        for name in hnsw_index_names(corpus.model):
            await connection.execute(f"DROP INDEX {name}")
    owner_of_note = {n: u for n, u, _ in corpus.notes}
    file_ids = {f for f, _, _ in corpus.files}
    inserted = 0
    chunk_started = time.perf_counter()
    for start in range(0, corpus.size, batch):
        records = []
        for i in range(start, min(start + batch, corpus.size)):
            source = corpus.source_ids[i]
            is_file = source in file_ids
            content = f"synthetic chunk {i}"
            records.append(
                (
                    uuid.uuid4(),
                    "file" if is_file else "note",
                    None if is_file else source,
                    source if is_file else None,
                    corpus.mentor_user if is_file else owner_of_note[source],
                    corpus.lounge if is_file else None,
                    int(corpus.chunk_index[i]),
                    content,
                    hashlib.sha256(content.encode()).hexdigest(),
                    corpus.vectors[i],
                    corpus.model,
                    DIM,
                )
            )
        await connection.copy_records_to_table(
            "knowledge_chunks",
            records=records,
            columns=[
                "id",
                "source_type",
                "note",
                "file",
                "owner",
                "lounge",
                "chunk_index",
                "content",
                "content_hash",
                "embedding",
                "embedding_model",
                "embedding_dim",
            ],
            timeout=600,  # HNSW inserts: a batch may outlast the pool's 30 s command timeout
        )
        inserted += len(records)
    index_seconds = None
    if index_ddl is not None:
        index_started = time.perf_counter()
        await connection.execute("SET maintenance_work_mem = '1GB'")
        for ddl in index_ddl:
            await connection.execute(ddl, timeout=3600)  # the pool's command timeout is 30 s
        await connection.execute("RESET maintenance_work_mem")
        index_seconds = time.perf_counter() - index_started
    chunk_seconds = time.perf_counter() - chunk_started
    # The steady state autovacuum keeps: statistics (and the HNSW indexes' row estimates, which
    # size retrieval's over-fetch) current, the visibility map set for index-only counts.
    await connection.execute("VACUUM ANALYZE", timeout=600)
    return {
        "load_s": round(time.perf_counter() - started, 2),
        "chunk_insert_s": round(chunk_seconds, 2),
        "chunks_per_s": round(inserted / chunk_seconds, 1),
        "index_build": "bulk" if bulk_index else "incremental",
        "index_build_s": round(index_seconds, 2) if index_seconds is not None else None,
    }


def hnsw_index_names(model: str) -> list[str]:
    """The model's partial HNSW indexes, one per source type."""
    from server.domain.tables.knowledge import EmbeddingModel, KnowledgeSourceType, hnsw_index

    return [hnsw_index(EmbeddingModel(model), source) for source in KnowledgeSourceType]


async def wipe(connection: Any) -> None:
    await connection.execute("TRUNCATE users, knowledge_chunks, notes, files, lounges, mentors CASCADE")


# -- queries ----------------------------------------------------------------------------------


@dataclass
class Query:
    user: BenchUser
    lounge: uuid.UUID | None
    vector: np.ndarray
    group: str
    kind: str  # where the query vector lies: near one of the asker's topics, a lounge topic, or anywhere
    eligible: int
    truth: list[int]  # row indexes, best first


def plan_queries(corpus: Corpus, count: int, seed: int) -> list[Query]:
    """Half typical users, a quarter lounge members, a quarter power users (when there are any)."""
    rng = np.random.default_rng(seed + 1)
    power = [u for u in corpus.users if u.power]
    typical = [u for u in corpus.users if not u.power]
    members = [u for u in corpus.users if u.membership == "active"]
    queries: list[Query] = []
    for n in range(count):
        pick = n % 4
        if pick == 3 and power:
            group, user = "power user", power[int(rng.integers(len(power)))]
        elif pick == 2:
            group, user = "lounge member", members[int(rng.integers(len(members)))]
        else:
            group, user = "typical user", typical[int(rng.integers(len(typical)))]
        # Members (removed ones too: retrieve() must leave its files out) ask with the lounge's id.
        lounge = corpus.lounge if user.membership is not None or rng.random() < 0.5 else None
        draw = rng.random()
        if draw < 0.7:
            kind, topic = "own topic", int(rng.choice(user.topics))
        elif draw < 0.85 and user.membership == "active":
            kind, topic = "lounge topic", int(rng.choice(corpus.lounge_topics))
        else:
            kind, topic = "random topic", int(rng.integers(TOPICS))
        vector = query_vector(rng, corpus.topics[topic])
        rows = corpus.eligible(user, lounge)
        distances = 1.0 - corpus.vectors[rows].astype(np.float64) @ vector.astype(np.float64)
        order = np.argsort(distances, kind="stable")[:K]
        queries.append(
            Query(
                user=user,
                lounge=lounge,
                vector=vector,
                group=group,
                kind=kind,
                eligible=len(rows),
                truth=[int(rows[i]) for i in order],
            )
        )
    return queries


class FixedEmbedder:
    """An embedder stub: ``embed`` answers the vector the benchmark chose for the next query."""

    dim = DIM
    semantic = True

    def __init__(self, model: str) -> None:
        self.model = model
        self.vector = np.zeros(DIM, np.float32)

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        return [self.vector for _ in texts]


class SqlCounter:
    """Counts which statements ``nearest_chunks`` built (wraps the module's SQL builders)."""

    def __init__(self) -> None:
        from server.domain.knowledge import retrieval

        self.module = retrieval
        self.counts: Counter = Counter()
        self._exact, self._ann = retrieval.exact_sql, retrieval.ann_sql

    def __enter__(self) -> SqlCounter:
        def exact(model: str, source: Any) -> str:
            self.counts[(source.value, "exact")] += 1
            return self._exact(model, source)

        def ann(model: str, source: Any, inner: int) -> str:
            self.counts[(source.value, "ann")] += 1
            return self._ann(model, source, inner)

        self.module.exact_sql, self.module.ann_sql = exact, ann
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.exact_sql, self.module.ann_sql = self._exact, self._ann

    def take(self) -> str:
        """The paths of the last call per part, e.g. ``note exact + file ann``; ``ann>exact`` is a fall-back."""
        counts, self.counts = self.counts, Counter()
        paths = []
        for source in ("note", "file"):
            if counts[(source, "ann")]:
                paths.append(f"{source} ann" + (">exact" if counts[(source, "exact")] else ""))
            elif counts[(source, "exact")]:
                paths.append(f"{source} exact")
        return " + ".join(paths) or "none"


def naive_sql(model: str) -> str:
    """Each source type's filtered HNSW scan (its partial index), merged."""
    return f"""
        SELECT source_id, chunk_index FROM (
            (SELECT coalesce(c.note, c.file) AS source_id, c.chunk_index, c.embedding::vector({DIM}) <=> $3 AS d
             FROM knowledge_chunks c
             WHERE c.embedding_model = '{model}' AND c.source_type = 'note' AND c.owner = $1
             ORDER BY c.embedding::vector({DIM}) <=> $3 LIMIT $4)
            UNION ALL
            (SELECT coalesce(c.note, c.file) AS source_id, c.chunk_index, c.embedding::vector({DIM}) <=> $3 AS d
             FROM knowledge_chunks c
             WHERE c.embedding_model = '{model}' AND c.source_type = 'file' AND c.lounge = $2
               AND EXISTS (SELECT 1 FROM files f WHERE f.id = c.file AND f.status <> 'deleted')
             ORDER BY c.embedding::vector({DIM}) <=> $3 LIMIT $4)
        ) both_parts
        ORDER BY d
        LIMIT $4
    """


async def naive(pool: Any, model: str, user: uuid.UUID, lounge: uuid.UUID | None, vector: np.ndarray) -> list:
    async with pool.acquire() as connection, connection.transaction():
        # What the planner does when told the index is the way (a big table): scan HNSW, filter after.
        await connection.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        return await connection.fetch(naive_sql(model), user, lounge, vector, K)


async def explain_naive(pool: Any, corpus: Corpus) -> str:
    user = max(corpus.users, key=lambda u: len(u.rows))
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        rows = await connection.fetch(
            "EXPLAIN " + naive_sql(corpus.model), user.id, corpus.lounge, corpus.vectors[0], K
        )
    return "\n".join(r[0] for r in rows)


async def measure(corpus: Corpus, queries: list[Query], exact_max: int) -> dict[str, list[dict[str, Any]]]:
    from server.domain.knowledge.retrieval import retrieve
    from server.domain.tables.knowledge import KnowledgeChunk

    pool = KnowledgeChunk._meta.db.pool
    embedder = FixedEmbedder(corpus.model)
    keys = corpus.key_index()
    limits = {"default": exact_max, "hnsw": 0, "exact": 10**9}
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    clock = time.perf_counter

    async def one(variant: str, query: Query) -> dict[str, Any]:
        embedder.vector = query.vector
        if variant == "naive":
            started = clock()
            rows = await naive(pool, corpus.model, query.user.id, query.lounge, query.vector)
            elapsed = clock() - started
            found = [keys[(str(r["source_id"]), r["chunk_index"])] for r in rows]
            path = "hnsw+filter"
        else:
            started = clock()
            passages = await retrieve(
                user_id=query.user.id,
                lounge_id=query.lounge,
                query="q",
                k=K,
                embedder=embedder,
                exact_max_chunks=limits[variant],
            )
            elapsed = clock() - started
            path = counter.take()
            found = [keys[(p.source_id, p.chunk)] for p in passages]
        wanted = min(K, query.eligible)
        allowed = set(corpus.eligible(query.user, query.lounge).tolist())
        # How much worse the answer's last (k-th) hit is than the exact k-th, in cosine similarity.
        gap = 0.0
        if found and query.truth:
            vector = query.vector.astype(np.float64)
            worst_found = float(np.min(corpus.vectors[found].astype(np.float64) @ vector))
            worst_true = float(np.min(corpus.vectors[query.truth].astype(np.float64) @ vector))
            gap = max(0.0, worst_true - worst_found)
        return {
            "group": query.group,
            "kind": query.kind,
            "eligible": query.eligible,
            "similarity_gap": gap,
            "ms": elapsed * 1000,
            "returned": len(found),
            "complete": len(found) == wanted,
            "recall": len(set(found) & set(query.truth)) / wanted if wanted else 1.0,
            "ineligible": sum(1 for f in found if f not in allowed),
            "duplicates": len(found) - len(set(found)),
            "path": path,
        }

    with SqlCounter() as counter:
        for query in queries[:WARMUP_QUERIES]:  # warm the caches and the pool; not counted
            for variant in VARIANTS:
                await one(variant, query)
        for n, query in enumerate(queries):
            order = VARIANTS[n % len(VARIANTS) :] + VARIANTS[: n % len(VARIANTS)]
            for variant in order:
                out[variant].append(await one(variant, query))
    return out


async def profile_steps(corpus: Corpus, queries: list[Query], repeats: int = 5) -> list[dict[str, Any]]:
    """Each step of ``nearest_chunks`` on its own for one asker per group: wall time in this
    process (median of ``repeats``) and PostgreSQL's own execution time and buffers
    (``EXPLAIN (ANALYZE, BUFFERS)``)."""
    import re

    from server.domain.knowledge import retrieval
    from server.domain.tables.knowledge import KnowledgeChunk

    pool = KnowledgeChunk._meta.db.pool
    picks: dict[str, Query] = {}
    for query in queries:
        name = query.group + (
            " (member)" if query.lounge == corpus.lounge and query.user.membership == "active" else ""
        )
        picks.setdefault(name, query)
    out = []
    for name, query in sorted(picks.items()):
        lounge = query.lounge if query.user.membership == "active" else None
        scopes = [(retrieval.NOTE, query.user.id)] + ([(retrieval.FILE, lounge)] if lounge else [])
        steps: list[tuple[str, str, tuple, int | None]] = []
        for source, scope in scopes:
            async with pool.acquire() as connection:
                part = await retrieval.count_part(connection, source, scope, model=corpus.model)
            arguments = (*part.arguments, query.vector, K)
            inner = part.overfetch(K)
            steps.append(
                (f"{source} count", retrieval.count_sql(corpus.model, source), (scope, retrieval.COUNT_CAP), None)
            )
            steps.append((f"{source} exact", retrieval.exact_sql(corpus.model, source), arguments, None))
            steps.append((f"{source} HNSW", retrieval.ann_sql(corpus.model, source, inner), arguments, inner))
        row: dict[str, Any] = {"asker": name, "eligible": query.eligible, "steps": {}}
        wall = []
        for _ in range(repeats):
            started = time.perf_counter()
            await retrieval.readable_lounge(query.user.id, query.lounge)
            wall.append(time.perf_counter() - started)
        row["steps"]["membership check"] = {"wall_ms": statistics.median(wall) * 1000}
        async with pool.acquire() as connection:
            for label, sql, params, inner in steps:
                wall, executed, buffers, returned = [], [], "", 0
                for _ in range(repeats):
                    async with connection.transaction():
                        if inner:
                            await connection.execute(
                                f"SET LOCAL hnsw.ef_search = {inner}; SET LOCAL enable_seqscan = off"
                            )
                        started = time.perf_counter()
                        rows = await connection.fetch(sql, *params)
                        wall.append(time.perf_counter() - started)
                        returned = rows[0]["count"] if label.endswith("count") else len(rows)
                        plan = [r[0] for r in await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)]
                    for line in plan:
                        if line.startswith("Execution Time"):
                            executed.append(float(re.findall(r"[\d.]+", line)[0]))
                    buffers = next((line.strip() for line in plan if "Buffers:" in line), "")
                row["steps"][label] = {
                    "wall_ms": statistics.median(wall) * 1000,
                    "pg_execution_ms": statistics.median(executed) if executed else None,
                    "buffers": buffers,
                    "returned": returned,
                    "ef_search": inner,
                }
        out.append(row)
    return out


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = sorted(r["ms"] for r in results)
    recalls = [r["recall"] for r in results]
    return {
        "queries": len(results),
        "recall_mean": statistics.fmean(recalls) if recalls else None,
        "recall_min": min(recalls) if recalls else None,
        "recall_1_share": sum(1 for r in recalls if r == 1.0) / len(recalls) if recalls else None,
        "similarity_gap_mean": statistics.fmean(r["similarity_gap"] for r in results) if results else None,
        "similarity_gap_max": max((r["similarity_gap"] for r in results), default=None),
        "complete": sum(1 for r in results if r["complete"]),
        "ineligible": sum(r["ineligible"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "paths": dict(Counter(r["path"] for r in results)),
    }


def by_key(results: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r[key], []).append(r)
    return {name: summarize(rows) for name, rows in groups.items()}


def corpus_stats(corpus: Corpus, exact_max: int) -> dict[str, Any]:
    counts = sorted(len(u.rows) for u in corpus.users)
    members = [u for u in corpus.users if u.membership == "active"]
    return {
        "chunks": corpus.size,
        "model": corpus.model,
        "users": len(corpus.users),
        "notes": len(corpus.notes),
        "user_chunks": {
            "p50": percentile(counts, 50),
            "p90": percentile(counts, 90),
            "p99": percentile(counts, 99),
            "max": counts[-1],
            "power_users": [len(u.rows) for u in corpus.users if u.power],
        },
        "lounge_file_chunks": len(corpus.lounge_rows),
        "deleted_file_chunks": len(corpus.deleted_rows),
        "files": len(corpus.files),
        "active_members": len(members),
        "removed_members": sum(1 for u in corpus.users if u.membership == "removed"),
        # Askers with a part (own notes, or the lounge's files as an active member) past the exact path.
        "users_above_exact_max": sum(
            1
            for u in corpus.users
            if len(u.rows) > exact_max or (u.membership == "active" and len(corpus.lounge_rows) > exact_max)
        ),
        "topics": TOPICS,
    }


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpu: int | None):
    """Pin this process to ``cpu`` for the block (the measuring client), then restore."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def run_sizes(env: dict[str, str], options: argparse.Namespace) -> list[dict[str, Any]]:
    from server.foundation.database import acquire_engine, release_engine
    from server.foundation.settings import load_settings
    from server.piccolo_app import ALL_TABLES

    settings = load_settings({**env, "DB_POOL_MIN_SIZE": "2", "DB_POOL_MAX_SIZE": "4"})
    exact_max = options.exact_max
    engine = await acquire_engine(settings, ALL_TABLES)
    sizes: list[dict[str, Any]] = []
    try:
        for number, size in enumerate(options.sizes):
            async with engine.pool.acquire() as connection:
                if number:
                    await wipe(connection)
                started = time.perf_counter()
                corpus = generate(size, options.model, exact_max, options.seed + number)
                generated = time.perf_counter() - started
                log.info(
                    "rag: %s chunks generated in %.1f s; inserting (%s HNSW build) ...",
                    f"{size:,}",
                    generated,
                    options.index_build,
                )
                loading = await load(connection, corpus, bulk_index=options.index_build == "bulk")
                log.info(
                    "rag: %s chunks inserted in %.1f s (%.0f chunks/s)",
                    f"{size:,}",
                    loading["chunk_insert_s"],
                    loading["chunks_per_s"],
                )
                table_mib = await connection.fetchval("SELECT pg_total_relation_size('knowledge_chunks') / 1048576.0")
                indexes = hnsw_index_names(corpus.model)
                index_mib = await connection.fetchval(
                    "SELECT sum(pg_relation_size(name::regclass)) / 1048576.0 FROM unnest($1::text[]) name", indexes
                )
            plan = await explain_naive(engine.pool, corpus)
            queries = plan_queries(corpus, options.queries, options.seed + number)
            busy = wait_for_quiet(options.quiet_wait, BUSY_WARNING) if options.quiet_wait > 0 else None
            if busy is not None and busy >= BUSY_WARNING:
                log.warning("machine still busy (%.0f%% of one CPU) before measuring; running anyway", busy)
            log.info("rag: %d queries x %d variants at %s chunks ...", len(queries), len(VARIANTS), f"{size:,}")
            with pinned(options.client_cpu):
                measured_at = time.perf_counter()
                results = await measure(corpus, queries, exact_max)
                seconds = time.perf_counter() - measured_at
                profile = await profile_steps(corpus, queries)
            sizes.append(
                {
                    "size": size,
                    "corpus": corpus_stats(corpus, exact_max),
                    "load": {**loading, "generate_s": round(generated, 2)},
                    "table_mib": float(table_mib),
                    "hnsw_indexes": indexes,
                    "hnsw_index_mib": float(index_mib),
                    "naive_plan_uses_hnsw": all(index in plan for index in indexes),
                    "naive_plan": plan,
                    "machine_busy_before_percent": busy,
                    "measure_s": round(seconds, 1),
                    "summary": {variant: summarize(rows) for variant, rows in results.items()},
                    "groups": {variant: by_key(rows, "group") for variant, rows in results.items()},
                    "kinds": {variant: by_key(rows, "kind") for variant, rows in results.items()},
                    "paths": {variant: by_key(rows, "path") for variant, rows in results.items()},
                    "profile": profile,
                    "queries": results,
                }
            )
    finally:
        await release_engine(engine)
    return sizes


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m bench rag``."""
    from server.foundation.settings import load_settings

    options = argparse.Namespace(
        sizes=list(getattr(args, "rag_sizes", None) or DEFAULT_SIZES),
        queries=getattr(args, "rag_queries", None)
        or (QUICK_QUERIES if getattr(args, "quick", False) else DEFAULT_QUERIES),
        model=getattr(args, "rag_model", None) or MODELS[0],
        exact_max=getattr(args, "rag_exact_max", None) or load_settings().retrieval_exact_max_chunks,
        seed=getattr(args, "rag_seed", None) or 2026,
        index_build=getattr(args, "rag_index_build", None) or "bulk",
        client_cpu=args.loadgen_cpu if args.loadgen_cpu in available_cpus() else None,
        quiet_wait=args.quiet_wait,
    )
    json_path, png_path = output_paths("rag")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with BenchStack(keep_logs=args.keep_logs) as stack:
        env = stack.start_services()
        busy_before = machine_busy_percent(1.0)
        sizes = asyncio.run(run_sizes(env, options))
    config = {
        "sizes": options.sizes,
        "queries_per_size": options.queries,
        "warmup_queries": WARMUP_QUERIES,
        "k": K,
        "model": options.model,
        "dim": DIM,
        "exact_max_chunks": options.exact_max,
        "client_cpu": options.client_cpu,
        "seed": options.seed,
        "index_build": options.index_build,
        "machine_busy_before_percent": round(busy_before, 1),
    }
    verdict = verdicts(sizes)
    print()
    print(render(sizes, config, verdict))
    payload = {
        "benchmark": "rag",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "verdicts": verdict,
        "sizes": sizes,
    }
    save_json(json_path, payload)
    plot(png_path, sizes, config, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    bad = [s for s in sizes for v in ("default", "hnsw", "exact") if s["summary"][v]["ineligible"]]
    if bad:
        print("ERROR: retrieve() returned chunks the asker may not read; see the JSON", file=sys.stderr)
        return 1
    return 0


def verdicts(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in sizes:
        default = s["summary"]["default"]
        out[str(s["size"])] = {
            "recall_at_10": default["recall_mean"],
            "recall_target_met": default["recall_mean"] is not None and default["recall_mean"] >= TARGET_RECALL,
            "all_complete": default["complete"] == default["queries"],
            "p95_ms": default["p95_ms"],
            "p95_target_met": default["p95_ms"] <= TARGET_P95_MS if s["size"] >= 100_000 else None,
        }
    return out


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def render(sizes: list[dict[str, Any]], config: dict[str, Any], verdict: dict[str, Any]) -> str:
    rows = []
    for s in sizes:
        for variant in VARIANTS:
            m = s["summary"][variant]
            paths = ", ".join(f"{k} {v}" for k, v in sorted(m["paths"].items(), key=lambda kv: -kv[1]))
            rows.append(
                [
                    f"{s['size']:,}",
                    variant,
                    fmt(m["recall_mean"], 3),
                    fmt(m["recall_min"], 2),
                    f"{m['complete']}/{m['queries']}",
                    fmt(m["p50_ms"], 2),
                    fmt(m["p95_ms"], 2),
                    fmt(m["p99_ms"], 2),
                    fmt(m["max_ms"], 1),
                    paths,
                ]
            )
    head = (
        f"RAG over pgvector: {config['queries_per_size']} queries per size (+{config['warmup_queries']} warm-up), "
        f"k={config['k']}, model {config['model']} ({config['dim']} dims), "
        f"RETRIEVAL_EXACT_MAX_CHUNKS={config['exact_max_chunks']:,}; one query at a time, client on CPU "
        f"{config['client_cpu']}, PostgreSQL unpinned"
    )
    table = format_table(
        ["chunks", "variant", "recall@10", "min", "complete", "p50 ms", "p95 ms", "p99 ms", "max ms", "paths"],
        rows,
        align="rlrrrrrrrl",
    )
    group_rows = []
    for s in sizes:
        for variant in ("default", "hnsw", "naive"):
            for group, m in sorted(s["groups"][variant].items()):
                group_rows.append(
                    [
                        f"{s['size']:,}",
                        variant,
                        group,
                        str(m["queries"]),
                        fmt(m["recall_mean"], 3),
                        f"{m['complete']}/{m['queries']}",
                        fmt(m["p50_ms"], 2),
                        fmt(m["p95_ms"], 2),
                    ]
                )
    groups = format_table(
        ["chunks", "variant", "asker", "queries", "recall@10", "complete", "p50 ms", "p95 ms"],
        group_rows,
        align="rllrrrrr",
    )
    corpus_rows = []
    for s in sizes:
        c = s["corpus"]
        corpus_rows.append(
            [
                f"{c['chunks']:,}",
                f"{c['users']:,}",
                f"{c['notes']:,}",
                f"{c['user_chunks']['p50']:.0f}/{c['user_chunks']['p90']:.0f}/{c['user_chunks']['p99']:.0f}",
                ", ".join(f"{n:,}" for n in c["user_chunks"]["power_users"]) or "-",
                f"{c['lounge_file_chunks']:,} + {c['deleted_file_chunks']:,} deleted",
                f"{c['active_members']}/{c['removed_members']}",
                str(c["users_above_exact_max"]),
                f"{s['load']['chunks_per_s']:,.0f}",
                f"{s['hnsw_index_mib']:.0f}",
                _yes(s["naive_plan_uses_hnsw"]),
            ]
        )
    corpus = format_table(
        [
            "chunks",
            "users",
            "notes",
            "chunks/user p50/p90/p99",
            "power users",
            "lounge file chunks",
            "members active/removed",
            "askers with a part > exact max",
            "insert chunks/s",
            "HNSW MiB",
            "naive uses HNSW",
        ],
        corpus_rows,
    )
    verdict_rows = [
        [
            f"{int(size):,}",
            fmt(v["recall_at_10"], 3),
            _yes(v["recall_target_met"]),
            _yes(v["all_complete"]),
            fmt(v["p95_ms"], 2),
            _yes(v["p95_target_met"]),
        ]
        for size, v in verdict.items()
    ]
    verdict_table = format_table(
        ["chunks", "recall@10 (default)", ">= 0.95", "all min(k, eligible)", "p95 ms", "p95 <= 20 ms at 100k"],
        verdict_rows,
    )
    note = (
        "recall@10: |answer & exact top-10| / min(10, eligible), exact ranking in numpy (float64) over the asker's\n"
        "eligible chunks (own notes + the lounge's ready files when an active member). 'complete': answers with\n"
        "exactly min(10, eligible) chunks. Paths, per part (note: the asker's notes, file: the lounge's files): exact =\n"
        "exact scan; ann = HNSW over-fetch sized by the part's selectivity; >exact = fell back to the exact scan.\n"
        "Latency: wall time of one retrieve() call in this process (membership check, counts, searches and titles;\n"
        "the two parts side by side), or of the naive SQL."
    )
    kind_rows = []
    for s in sizes:
        for variant in ("default", "hnsw"):
            for kind, m in sorted(s["kinds"][variant].items()):
                kind_rows.append(
                    [
                        f"{s['size']:,}",
                        variant,
                        kind,
                        str(m["queries"]),
                        fmt(m["recall_mean"], 3),
                        fmt(m["recall_min"], 2),
                        fmt(m["similarity_gap_mean"], 4),
                        fmt(m["similarity_gap_max"], 4),
                    ]
                )
    kinds = format_table(
        ["chunks", "variant", "query near", "queries", "recall@10", "min", "sim. gap mean", "sim. gap max"],
        kind_rows,
        align="rllrrrrr",
    )
    path_rows = []
    for s in sizes:
        for variant in ("default", "hnsw"):
            for path, m in sorted(s["paths"][variant].items(), key=lambda kv: -kv[1]["queries"]):
                path_rows.append(
                    [
                        f"{s['size']:,}",
                        variant,
                        path,
                        str(m["queries"]),
                        fmt(m["recall_mean"], 3),
                        fmt(m["p50_ms"], 2),
                        fmt(m["p95_ms"], 2),
                        fmt(m["max_ms"], 1),
                    ]
                )
    paths = format_table(
        ["chunks", "variant", "path", "queries", "recall@10", "p50 ms", "p95 ms", "max ms"], path_rows, align="rllrrrrr"
    )
    step_names = ["membership check", "note count", "note exact", "note HNSW", "file count", "file exact", "file HNSW"]
    profile_rows = []
    for s in sizes:
        for asker in s["profile"]:
            cells = [f"{s['size']:,}", asker["asker"], f"{asker['eligible']:,}"]
            for step in step_names:
                st = asker["steps"].get(step, {})
                pg = st.get("pg_execution_ms")
                ef = st.get("ef_search")
                cells.append(
                    fmt(st.get("wall_ms"), 1)
                    + (f" ({pg:.1f})" if pg is not None else "")
                    + (f" ef {ef}" if ef is not None else "")
                )
            profile_rows.append(cells)
    profile = format_table(["chunks", "asker", "eligible", *step_names], profile_rows, align="rlrrrrrrrr")
    return (
        f"{head}\n\n{corpus}\n\n{table}\n{note}\n\nby asker:\n{groups}\n\nby query (answer's k-th hit vs the exact "
        f"k-th, cosine similarity):\n{kinds}\n\nby path taken:\n{paths}\n\nprofile: each step of nearest_chunks() "
        f"alone (retrieve() runs the two parts side by side), median ms in this process (PostgreSQL's "
        f"execution time):\n{profile}\n\ntargets:\n{verdict_table}"
    )


def plot(path, sizes: list[dict[str, Any]], config: dict[str, Any], machine: dict[str, Any]) -> None:
    from bench.results import bar_panel

    plt = pyplot()
    labels = [f"{s['size']:,} chunks" for s in sizes]
    fig, (ax_recall, ax_latency, ax_scatter) = plt.subplots(
        1, 3, figsize=(20, 5.6), gridspec_kw={"width_ratios": [1, 1.9, 1.2]}
    )
    bar_panel(
        ax_recall,
        labels,
        {v: [s["summary"][v]["recall_mean"] for s in sizes] for v in VARIANTS},
        title=f"recall@{config['k']} vs exact ranking (mean)",
        ylabel="recall",
        value_format="{:.3f}",
    )
    ax_recall.axhline(TARGET_RECALL, color="red", linestyle="--", linewidth=1)
    ax_recall.legend(fontsize=8, loc="lower right")
    ax_recall.set_ylim(0, 1.15)
    bar_panel(
        ax_latency,
        [f"{s['size'] // 1000}k {q}" for s in sizes for q in ("p50", "p95", "p99")],
        {v: [s["summary"][v][f"{q}_ms"] for s in sizes for q in ("p50", "p95", "p99")] for v in VARIANTS},
        title="latency per query (log scale)",
        ylabel="ms",
        value_format="{:.1f}",
        log=True,
    )
    ax_latency.axhline(TARGET_P95_MS, color="red", linestyle="--", linewidth=1)
    for s, marker in zip(sizes, ("o", "s", "^", "D"), strict=False):
        for variant, color in zip(("default", "hnsw", "exact"), ("C0", "C1", "C2"), strict=True):
            rows = s["queries"][variant]
            ax_scatter.scatter(
                [r["eligible"] for r in rows],
                [r["ms"] for r in rows],
                s=8,
                marker=marker,
                color=color,
                alpha=0.5,
                label=f"{s['size'] // 1000}k {variant}",
            )
    ax_scatter.set_xscale("log")
    ax_scatter.set_yscale("log")
    ax_scatter.axvline(config["exact_max_chunks"], color="grey", linestyle=":", linewidth=1)
    ax_scatter.set_xlabel("eligible chunks of the asker")
    ax_scatter.set_ylabel("ms")
    ax_scatter.set_title("latency vs eligible chunks", fontsize=11)
    ax_scatter.legend(fontsize=7, ncol=2)
    ax_scatter.grid(alpha=0.3)
    fig.suptitle(
        f"RAG over pgvector {config['model']} ({config['dim']} dims), k={config['k']}, "
        f"{config['queries_per_size']} queries per size, exact scan up to {config['exact_max_chunks']:,} eligible chunks\n"
        f"{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- standalone CLI ---------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers, e.g. 20000,100000") from None
    if not sizes or any(s < 1000 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be >= 1000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", dest="rag_sizes", type=_sizes, help="corpus sizes (default 20000,100000)")
    parser.add_argument("--queries", dest="rag_queries", type=int, help=f"queries per size (default {DEFAULT_QUERIES})")
    parser.add_argument(
        "--model", dest="rag_model", choices=MODELS, help=f"model name of the corpus (default {MODELS[0]})"
    )
    parser.add_argument(
        "--exact-max", dest="rag_exact_max", type=int, help="RETRIEVAL_EXACT_MAX_CHUNKS (default: the setting's)"
    )
    parser.add_argument(
        "--index-build",
        dest="rag_index_build",
        choices=("bulk", "incremental"),
        help="bulk (default): drop the model's HNSW index, COPY, recreate it with the same DDL; "
        "incremental: COPY with the index in place, as production inserts (several minutes at 100k)",
    )
    parser.add_argument("--seed", dest="rag_seed", type=int, help="random seed (default 2026)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_QUERIES} queries per size")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="CPU for this process while measuring (default 1)")
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="wait up to this many s for idle CPUs (0: don't)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    from bench.__main__ import _terminate

    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\nbench: interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
