"""Jobs: index uploaded knowledge files, and clean up orphaned uploads.

- ``ingest_knowledge_file(file_id)``: enqueued after a knowledge file's upload
  commits. Reads the object and replaces the file's chunks
  (:func:`server.domain.knowledge.ingest.ingest_file`); a file deleted meanwhile is
  skipped. Store or embedder trouble is retried with backoff.
- ``clean_files()``: every 15 minutes (cron) and on demand. See
  :func:`server.domain.files.services.clean_files`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
from arq import Retry
from arq.worker import func
from miniopy_async.error import S3Error

from server.domain.files import services
from server.domain.knowledge.chunking import UnsupportedContent
from server.domain.knowledge.embeddings import EmbeddingError
from server.domain.knowledge.ingest import ingest_file
from server.domain.tables.files import File, FilePurpose, FileStatus
from server.foundation.errors import Unavailable
from server.foundation.state import AppState

log = logging.getLogger("lounges.files")

TRANSIENT = (Unavailable, EmbeddingError, asyncpg.PostgresConnectionError, OSError, TimeoutError)


async def ingest_knowledge_file(ctx: dict[str, Any], file_id: str) -> str:
    state: AppState = ctx["state"]
    fid = uuid.UUID(file_id)
    row = (
        await File.select(File.bucket, File.object_key, File.content_type, File.status, File.purpose)
        .where(File.id == fid)
        .first()
    )
    if row is None or row["status"] != FileStatus.ready or row["purpose"] != FilePurpose.knowledge:
        return "skipped: no such ready knowledge file"
    try:
        data = await state.storage.get_bytes(
            row["object_key"], bucket=row["bucket"], max_bytes=state.settings.upload_max_bytes
        )
        result = await ingest_file(fid, data, row["content_type"], settings=state.settings)
    except S3Error as exc:  # the object is gone: the file was deleted meanwhile
        return f"skipped: {exc.code}"
    except UnsupportedContent as exc:
        log.warning("knowledge file not indexed: %s", exc, extra={"file_id": file_id})
        return f"unsupported: {exc}"
    except TRANSIENT as exc:
        tries = ctx.get("job_try", 1)
        log.warning("knowledge ingestion will retry: %s", exc, extra={"file_id": file_id, "job_try": tries})
        raise Retry(defer=min(300, 5 * 2 ** (tries - 1))) from exc
    return f"{result.status}: {result.chunks} chunks ({result.embedded} embedded) with {result.model}"


async def clean_files(ctx: dict[str, Any]) -> dict[str, int]:
    state: AppState = ctx["state"]
    report = await services.clean_files(state)
    if any(report.values()):
        log.info("files cleaned", extra=report)
    return report


FILES_FUNCTIONS = [
    func(ingest_knowledge_file, max_tries=6),
    func(clean_files, max_tries=1),
]
