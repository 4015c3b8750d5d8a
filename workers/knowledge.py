"""Jobs: keep the knowledge chunks in line with notes and files, and re-embed after a model switch.

- ``index_note(note_id)``: enqueued by the note services after every text
  change (and delete). Idempotent: it re-reads the note and replaces its chunks.
- ``reembed_file(file_id)``: re-embeds a knowledge file's stored chunk texts with
  the current model (no bytes needed).
- ``reindex_all()``: after ``EMBEDDINGS_PROVIDER`` changed, enqueues
  ``index_note`` for every note and ``reembed_file`` for every file still on
  another model. ``python -m workers.knowledge reindex`` enqueues it.

Transient failures (the embeddings provider, the database) are retried with
backoff, up to each job's ``max_tries``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from typing import Any

import asyncpg
from arq import Retry
from arq.worker import func

from server.domain.knowledge import ingest
from server.domain.knowledge.embeddings import EmbeddingError, get_embedder
from server.foundation.redis import create_redis
from server.foundation.settings import load_settings
from server.foundation.state import AppState

log = logging.getLogger("lounges.knowledge")

TRANSIENT = (EmbeddingError, asyncpg.PostgresConnectionError, asyncpg.DeadlockDetectedError, OSError, TimeoutError)


def _retry(ctx: dict[str, Any], exc: BaseException) -> Retry:
    tries = ctx.get("job_try", 1)
    log.warning("knowledge job will retry: %s", exc, extra={"job_try": tries})
    return Retry(defer=min(300, 5 * 2 ** (tries - 1)))


async def index_note(ctx: dict[str, Any], note_id: str) -> str:
    state: AppState = ctx["state"]
    try:
        result = await ingest.index_note(uuid.UUID(note_id), settings=state.settings)
    except TRANSIENT as exc:
        raise _retry(ctx, exc) from exc
    return f"{result.status}: {result.chunks} chunks ({result.embedded} embedded) with {result.model}"


async def reembed_file(ctx: dict[str, Any], file_id: str) -> str:
    state: AppState = ctx["state"]
    try:
        result = await ingest.reembed_file(uuid.UUID(file_id), settings=state.settings)
    except TRANSIENT as exc:
        raise _retry(ctx, exc) from exc
    return f"{result.status}: {result.chunks} chunks with {result.model}"


async def reindex_all(ctx: dict[str, Any]) -> dict[str, Any]:
    state: AppState = ctx["state"]
    model = get_embedder(state.settings).model
    notes, files = await ingest.reindex_targets(model)
    for note_id in notes:
        await state.redis.enqueue_job("index_note", str(note_id))
    for file_id in files:
        await state.redis.enqueue_job("reembed_file", str(file_id))
    log.info("reindex enqueued", extra={"model": model, "notes": len(notes), "files": len(files)})
    return {"model": model, "notes": len(notes), "files": len(files)}


KNOWLEDGE_FUNCTIONS = [
    func(index_note, max_tries=6),
    func(reembed_file, max_tries=6),
    func(reindex_all, max_tries=3),
]


async def _enqueue_reindex() -> str:
    settings = load_settings()
    redis = create_redis(settings)
    try:
        job = await redis.enqueue_job("reindex_all")
    finally:
        await redis.aclose()
    return job.job_id if job else "(already queued)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.knowledge")
    parser.add_argument("command", choices=["reindex"], help="re-embed every note and file with the current model")
    parser.parse_args(argv)
    job_id = asyncio.run(_enqueue_reindex())
    print(f"reindex_all enqueued ({job_id}); the workers re-embed in the background")


if __name__ == "__main__":
    main(sys.argv[1:])
