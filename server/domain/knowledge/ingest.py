"""Ingestion: cut a note or a knowledge file into chunks, embed them, store them.

Each source's chunks are replaced in one transaction (its chunks of every model
are deleted, the current model's inserted), so running an ingestion twice, or
after a crash half-way, leaves the same rows. A chunk whose embedded text
(title + chunk) did not change keeps its vector: only new or edited chunks are
sent to the embedder, and a source whose chunks all match is left untouched.

Chunks of another model are dropped when a source is re-indexed: a switch of
``EMBEDDINGS_PROVIDER`` is completed by :func:`reindex_targets` (the
``reindex_all`` job), and retrieval only ever reads the current model's chunks,
so vectors of different spaces are never compared.

Races: the embedding happens outside any transaction; the write then locks the
note row and checks that the note still says what was embedded. If it changed,
the write is skipped (``superseded``): the edit enqueued its own job, which
indexes the newer text.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.domain.knowledge.chunking import chunk_text, extract_text
from server.domain.knowledge.embeddings import Embedder, environment_settings, get_embedder
from server.domain.tables.files import File, FileStatus
from server.domain.tables.knowledge import KnowledgeChunk
from server.domain.tables.notes import Note
from server.foundation.settings import Settings

_INSERT = """
INSERT INTO knowledge_chunks (id, source_type, note, file, owner, lounge, chunk_index, content,
    content_hash, embedding, embedding_model, embedding_dim, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())
"""


@dataclass(frozen=True, slots=True)
class IndexResult:
    """What an ingestion did: ``indexed``, ``unchanged``, ``removed`` (the source is
    gone), ``superseded`` (the note changed meanwhile) or ``empty`` (no text)."""

    status: str
    model: str
    chunks: int = 0
    embedded: int = 0
    reused: int = 0


def _embedding_input(title: str, chunk: str) -> str:
    """The text embedded for a chunk: its source's title gives it context."""
    title = title.strip()
    return f"{title}\n\n{chunk}" if title and title != chunk else chunk


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _engine() -> Any:
    return KnowledgeChunk._meta.db


async def _existing(source_column: str, source_id: uuid.UUID, model: str) -> dict[str, Any]:
    """content hash → stored vector of the source's chunks under ``model``."""
    async with _engine().pool.acquire() as connection:
        rows = await connection.fetch(
            f'SELECT content_hash, embedding FROM knowledge_chunks WHERE "{source_column}" = $1'
            " AND embedding_model = $2 ORDER BY chunk_index",
            source_id,
            model,
        )
    return {row["content_hash"]: row["embedding"].to_numpy() for row in rows}


async def _current_hashes(source_column: str, source_id: uuid.UUID) -> list[tuple[str, str]]:
    async with _engine().pool.acquire() as connection:
        rows = await connection.fetch(
            f'SELECT embedding_model, content_hash FROM knowledge_chunks WHERE "{source_column}" = $1'
            " ORDER BY embedding_model, chunk_index",
            source_id,
        )
    return [(row["embedding_model"], row["content_hash"]) for row in rows]


@dataclass(slots=True)
class _Plan:
    chunks: list[str]
    hashes: list[str]
    vectors: list[Any]
    embedded: int
    reused: int


async def _plan(
    source_column: str, source_id: uuid.UUID, title: str, chunks: Sequence[str], embedder: Embedder
) -> _Plan | None:
    """Vectors for ``chunks``, reusing stored ones; None when the stored chunks already match."""
    inputs = [_embedding_input(title, chunk) for chunk in chunks]
    hashes = [_hash(text) for text in inputs]
    if await _current_hashes(source_column, source_id) == [(embedder.model, h) for h in hashes]:
        return None
    stored = await _existing(source_column, source_id, embedder.model)
    missing = [i for i, h in enumerate(hashes) if h not in stored]
    fresh = await embedder.embed([inputs[i] for i in missing]) if missing else []
    if len(fresh) != len(missing):
        raise RuntimeError("the embedder returned the wrong number of vectors")
    by_index = dict(zip(missing, fresh, strict=True))
    vectors = [by_index[i] if i in by_index else stored[h] for i, h in enumerate(hashes)]
    for vector in vectors:
        if len(vector) != embedder.dim:
            raise RuntimeError(f"{embedder.model} returned a vector of {len(vector)} dims, not {embedder.dim}")
    return _Plan(list(chunks), hashes, vectors, len(missing), len(chunks) - len(missing))


async def _write(
    connection: Any,
    *,
    source_type: str,
    source_column: str,
    source_id: uuid.UUID,
    owner: uuid.UUID | None,
    lounge: uuid.UUID | None,
    plan: _Plan,
    embedder: Embedder,
) -> None:
    """Replace the source's chunks (inside the caller's transaction)."""
    await connection.execute(f'DELETE FROM knowledge_chunks WHERE "{source_column}" = $1', source_id)
    await connection.executemany(
        _INSERT,
        [
            (
                uuid.uuid4(),
                source_type,
                source_id if source_type == "note" else None,
                source_id if source_type == "file" else None,
                owner,
                lounge,
                index,
                chunk,
                content_hash,
                np.asarray(vector, dtype=np.float32),
                embedder.model,
                embedder.dim,
            )
            for index, (chunk, content_hash, vector) in enumerate(
                zip(plan.chunks, plan.hashes, plan.vectors, strict=True)
            )
        ],
    )


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else environment_settings()


# -- notes ----------------------------------------------------------------------------------


def note_chunks(title: str, content: str, settings: Settings) -> list[str]:
    """A note's chunks: its content's, or its title alone for a note without content."""
    return chunk_text(
        content or title, max_chars=settings.embeddings_chunk_chars, overlap=settings.embeddings_chunk_overlap
    )


async def index_note(
    note_id: uuid.UUID, *, settings: Settings | None = None, embedder: Embedder | None = None
) -> IndexResult:
    """Bring a note's chunks in line with the note (or remove them when it is gone)."""
    settings = _settings(settings)
    embedder = embedder or get_embedder(settings)
    note = await Note.select(Note.user, Note.title, Note.content).where(Note.id == note_id).first()
    if note is None:
        await KnowledgeChunk.delete().where(KnowledgeChunk.note == note_id)
        return IndexResult("removed", embedder.model)
    chunks = note_chunks(note["title"], note["content"], settings)
    plan = await _plan("note", note_id, note["title"], chunks, embedder)
    if plan is None:
        return IndexResult("unchanged", embedder.model, chunks=len(chunks), reused=len(chunks))
    async with _engine().transaction() as transaction:
        connection = transaction.connection
        locked = await connection.fetchrow('SELECT "user", title, content FROM notes WHERE id = $1 FOR UPDATE', note_id)
        if locked is None:
            await connection.execute("DELETE FROM knowledge_chunks WHERE note = $1", note_id)
            return IndexResult("removed", embedder.model)
        if (locked["title"], locked["content"]) != (note["title"], note["content"]):
            return IndexResult("superseded", embedder.model)
        await _write(
            connection,
            source_type="note",
            source_column="note",
            source_id=note_id,
            owner=locked["user"],
            lounge=None,
            plan=plan,
            embedder=embedder,
        )
    return IndexResult(
        "indexed" if chunks else "empty", embedder.model, chunks=len(chunks), embedded=plan.embedded, reused=plan.reused
    )


# -- files ----------------------------------------------------------------------------------


async def ingest_file(
    file_id: uuid.UUID,
    data: bytes,
    content_type: str,
    *,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
) -> IndexResult:
    """Index a lounge knowledge file from its bytes (text, Markdown or PDF).

    The chunks belong to the file's lounge: members of that lounge retrieve them.
    A deleted file's chunks are removed instead. Raises :class:`~server.domain.knowledge.chunking.UnsupportedContent` for another type
    or unreadable bytes, ``LookupError`` for an unknown file id.
    """
    settings = _settings(settings)
    embedder = embedder or get_embedder(settings)
    row = await File.select(File.filename, File.status).where(File.id == file_id).first()
    if row is None:
        raise LookupError(f"no file {file_id}")
    if row["status"] == FileStatus.deleted:
        await delete_file_chunks(file_id)
        return IndexResult("removed", embedder.model)
    text = extract_text(data, content_type)
    chunks = chunk_text(text, max_chars=settings.embeddings_chunk_chars, overlap=settings.embeddings_chunk_overlap)
    return await _store_file_chunks(file_id, row["filename"], chunks, embedder)


async def _store_file_chunks(file_id: uuid.UUID, filename: str, chunks: list[str], embedder: Embedder) -> IndexResult:
    plan = await _plan("file", file_id, filename, chunks, embedder)
    if plan is None:
        return IndexResult("unchanged", embedder.model, chunks=len(chunks), reused=len(chunks))
    async with _engine().transaction() as transaction:
        connection = transaction.connection
        locked = await connection.fetchrow("SELECT owner, lounge FROM files WHERE id = $1 FOR UPDATE", file_id)
        if locked is None:
            return IndexResult("removed", embedder.model)
        await _write(
            connection,
            source_type="file",
            source_column="file",
            source_id=file_id,
            owner=locked["owner"],
            lounge=locked["lounge"],
            plan=plan,
            embedder=embedder,
        )
    return IndexResult(
        "indexed" if chunks else "empty", embedder.model, chunks=len(chunks), embedded=plan.embedded, reused=plan.reused
    )


async def delete_file_chunks(file_id: uuid.UUID) -> int:
    """Forget a file's chunks (for the file service when a file is deleted)."""
    rows = await KnowledgeChunk.delete().where(KnowledgeChunk.file == file_id).returning(KnowledgeChunk.id)
    return len(rows)


async def reembed_file(
    file_id: uuid.UUID, *, settings: Settings | None = None, embedder: Embedder | None = None
) -> IndexResult:
    """Re-embed a file's stored chunk texts with the current model (after a model switch;
    the file's bytes are not needed). A file already on the current model is left alone."""
    embedder = embedder or get_embedder(_settings(settings))
    async with _engine().pool.acquire() as connection:
        rows = await connection.fetch(
            """
            SELECT c.embedding_model, c.chunk_index, c.content, f.filename
            FROM knowledge_chunks c JOIN files f ON f.id = c.file
            WHERE c.file = $1
            ORDER BY c.embedding_model = $2 DESC, c.created_at DESC, c.embedding_model, c.chunk_index
            """,
            file_id,
            embedder.model,
        )
    if not rows:
        return IndexResult("empty", embedder.model)
    if rows[0]["embedding_model"] == embedder.model:
        count = sum(1 for r in rows if r["embedding_model"] == embedder.model)
        return IndexResult("unchanged", embedder.model, chunks=count, reused=count)
    # The most recently written model's chunks hold the text to re-embed.
    source_model = rows[0]["embedding_model"]
    chunks = [
        r["content"] for r in sorted(rows, key=lambda r: r["chunk_index"]) if r["embedding_model"] == source_model
    ]
    return await _store_file_chunks(file_id, rows[0]["filename"], chunks, embedder)


# -- model switch ---------------------------------------------------------------------------


async def reindex_targets(model: str) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """What a switch to ``model`` must (re)index: every note (unchanged ones cost a
    hash comparison, no embedding), and the files with chunks of another model."""
    notes = await Note.select(Note.id).order_by(Note.id)
    async with _engine().pool.acquire() as connection:
        files = await connection.fetch(
            "SELECT DISTINCT file FROM knowledge_chunks WHERE file IS NOT NULL AND embedding_model <> $1 ORDER BY file",
            model,
        )
    return [n["id"] for n in notes], [f["file"] for f in files]
