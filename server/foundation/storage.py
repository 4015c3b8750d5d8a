"""The object store: an S3-compatible server (MinIO in production) through ``miniopy-async``.

One :class:`Storage` per process, on :class:`~server.foundation.state.AppState`. It
opens its HTTP session on first use (inside the running event loop) and is
closed by the process's lifespan. Without ``S3_ENDPOINT`` every call raises
:class:`~server.foundation.errors.Unavailable` (``storage_not_configured``).

Uploads are streamed: :class:`ChunkReader` turns an async iterator of byte
chunks (a request body, an export being written) into the ``read(n)`` file
object miniopy-async wants, counting and hashing what it hands out, and
:meth:`Storage.put_stream` sends it as one PUT (small objects) or a multipart
upload of ``UPLOAD_PART_BYTES`` parts, one part at a time: at most one part is
in memory. A failure mid-way aborts the multipart upload (miniopy-async does),
so no partial object is left behind.

Presigned links are signed locally (no request to the store) for
``S3_PUBLIC_ENDPOINT``, the address clients reach, which may differ from the
one the servers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from miniopy_async.api import Minio
from miniopy_async.error import MinioException, S3Error

from server.foundation.errors import Unavailable
from server.foundation.settings import Settings

log = logging.getLogger("lounges.storage")

MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NoSuchUpload"})
_BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


class StorageError(Unavailable):
    """The object store failed or could not be reached."""

    code = "storage_unavailable"


def _endpoint(url: str) -> tuple[str, bool]:
    parts = urlsplit(url)
    return parts.netloc, parts.scheme == "https"


class ChunkReader:
    """A ``read(n)`` view of an async iterator of byte chunks, for ``put_object``.

    Counts every byte that arrives (``max_bytes``: ``too_large()`` is raised
    past it, before the excess is handed on), hashes what it hands out, and
    passes it to ``inspect`` (e.g. a UTF-8 check). :meth:`peek` looks at the
    first bytes without consuming them. Holds at most ``n`` bytes plus one
    chunk at a time.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int | None = None,
        too_large: Callable[[], Exception] | None = None,
        inspect: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._eof = False
        self._max_bytes = max_bytes
        self._too_large = too_large or (lambda: ValueError("the stream is longer than allowed"))
        self._sha256 = hashlib.sha256()
        self.inspect = inspect
        self.received = 0
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def exhausted(self) -> bool:
        """Everything was read and handed out."""
        return self._eof and not self._buffer

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._eof:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                self._eof = True
                break
            self.received += len(chunk)
            if self._max_bytes is not None and self.received > self._max_bytes:
                raise self._too_large()
            self._buffer += chunk

    async def peek(self, n: int) -> bytes:
        """Up to ``n`` first bytes (fewer only at the end of the stream), not consumed."""
        await self._fill(n)
        return bytes(self._buffer[:n])

    @property
    def at_end_after_peek(self) -> bool:
        """The whole stream is in the buffer (known after :meth:`peek`)."""
        return self._eof

    async def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("ChunkReader reads a bounded number of bytes")
        await self._fill(n)
        if len(self._buffer) <= n:
            out = bytes(self._buffer)
            self._buffer.clear()
        else:
            with memoryview(self._buffer) as view:
                out = bytes(view[:n])  # one copy, not a slice and then a copy
            del self._buffer[:n]
        self._sha256.update(out)
        self.size += len(out)
        if self.inspect is not None:
            self.inspect(out, self.exhausted)
        return out

    async def drain(self) -> None:
        """Read to the end (checks the limit and ``inspect`` on what is left)."""
        while not self.exhausted:
            if not await self.read(64 * 1024) and self._eof:
                break


class Storage:
    """The process's client of the object store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._client: Minio | None = None
        self._signer: Minio | None = None
        self._session: aiohttp.ClientSession | None = None
        self._buckets_ready: set[str] = set()
        self._bucket_lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.settings.s3_endpoint)

    def _make(self, url: str, session: aiohttp.ClientSession | None) -> Minio:
        netloc, secure = _endpoint(url)
        return Minio(
            netloc,
            access_key=self.settings.s3_access_key or None,
            secret_key=self.settings.s3_secret_key or None,
            secure=secure,
            region=self.settings.s3_region,  # fixed region: presigning needs no round trip
            session=session,
        )

    def client(self) -> Minio:
        """The miniopy-async client (its session is created in the running loop)."""
        if not self.configured:
            raise Unavailable("object storage is not configured (S3_ENDPOINT)", code="storage_not_configured")
        if self._client is None:
            timeout = self.settings.s3_timeout
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout),
                connector=aiohttp.TCPConnector(limit=32),
            )
            self._client = self._make(self.settings.s3_endpoint or "", self._session)
        return self._client

    def _presigner(self) -> Minio:
        if self._signer is None:
            url = self.settings.s3_public_endpoint or self.settings.s3_endpoint or ""
            self._signer = self._make(url, None)  # never sends a request
        return self._signer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._client = None

    async def _call(self, operation: str, coroutine: Any, *, expected: frozenset[str] = frozenset()) -> Any:
        """Await a client call; S3 errors whose code is in ``expected`` pass through, any
        other failure of the store becomes :class:`StorageError` (503)."""
        try:
            return await coroutine
        except S3Error as exc:
            if exc.code in expected:
                raise
            log.warning("object store %s failed: %s %s", operation, exc.code, exc.message)
            raise StorageError(f"the object store refused {operation} ({exc.code})") from exc
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("object store %s failed: %r", operation, exc)
            raise StorageError(f"the object store is unreachable ({type(exc).__name__})") from exc

    async def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create the bucket when missing (once per process)."""
        bucket = bucket or self.bucket
        if bucket in self._buckets_ready:
            return
        client = self.client()
        async with self._bucket_lock:
            if bucket in self._buckets_ready:
                return
            if not await self._call("bucket_exists", client.bucket_exists(bucket)):
                with contextlib.suppress(S3Error):  # created meanwhile by another process
                    await self._call("make_bucket", client.make_bucket(bucket), expected=_BUCKET_EXISTS)
            self._buckets_ready.add(bucket)

    async def ping(self) -> None:
        """Raise unless the store answers with our credentials (for ``/ready``)."""
        async with asyncio.timeout(min(5.0, self.settings.s3_timeout)):
            await self._call("bucket_exists", self.client().bucket_exists(self.bucket))

    async def put_stream(self, key: str, reader: ChunkReader, *, content_type: str, bucket: str | None = None) -> None:
        """Store everything ``reader`` yields under ``key``, one part in memory at a time."""
        bucket = bucket or self.bucket
        await self.ensure_bucket(bucket)
        await self._call(
            "put_object",
            self.client().put_object(
                bucket,
                key,
                # miniopy-async awaits ``read(n)`` of any object but annotates ``data`` as BinaryIO.
                reader,  # type: ignore[arg-type]
                length=-1,
                content_type=content_type,
                part_size=self.settings.upload_part_bytes,
                num_parallel_uploads=1,  # sequential parts: the reader is never more than one part ahead
            ),
        )

    async def get_bytes(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        """An object's bytes (for objects known to be small enough, e.g. knowledge files).
        A missing object raises :class:`S3Error` (``NoSuchKey``)."""
        response = await self._call(
            "get_object", self.client().get_object(bucket or self.bucket, key), expected=MISSING
        )
        try:
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if max_bytes is not None and len(data) > max_bytes:
                    raise ValueError(f"object {key} is larger than {max_bytes} bytes")
            return bytes(data)
        finally:
            response.release()

    async def remove(self, key: str, *, bucket: str | None = None) -> None:
        """Delete an object; a missing object (or bucket) is not an error."""
        with contextlib.suppress(S3Error):
            await self._call("remove_object", self.client().remove_object(bucket or self.bucket, key), expected=MISSING)

    async def exists(self, key: str, *, bucket: str | None = None) -> bool:
        try:
            await self._call("stat_object", self.client().stat_object(bucket or self.bucket, key), expected=MISSING)
        except S3Error:
            return False
        return True

    async def list_objects(
        self, prefix: str, *, bucket: str | None = None
    ) -> AsyncIterator[tuple[str, datetime | None]]:
        """``(key, last_modified)`` of every object under ``prefix``."""
        bucket = bucket or self.bucket
        try:
            async for item in self.client().list_objects(bucket, prefix=prefix, recursive=True):
                if item.object_name and not item.is_dir:
                    yield item.object_name, item.last_modified
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise StorageError(f"the object store refused list_objects ({exc.code})") from exc
        except (MinioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageError(f"the object store is unreachable ({type(exc).__name__})") from exc

    async def presigned_get(
        self,
        key: str,
        *,
        filename: str,
        content_type: str,
        ttl: int | None = None,
        bucket: str | None = None,
    ) -> tuple[str, int]:
        """A link that downloads the object for ``ttl`` seconds (``PRESIGNED_URL_TTL``);
        returns it and its lifetime. The response is served as an attachment named
        ``filename``, with ``content_type``."""
        if not self.configured:
            raise Unavailable("object storage is not configured (S3_ENDPOINT)", code="storage_not_configured")
        ttl = ttl or self.settings.presigned_url_ttl
        url = await self._presigner().presigned_get_object(
            bucket or self.bucket,
            key,
            expires=timedelta(seconds=ttl),
            response_headers={
                "response-content-type": content_type,
                "response-content-disposition": content_disposition(filename),
            },
        )
        return url, ttl


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the UTF-8 one (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
