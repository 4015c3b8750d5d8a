"""The Redis client: one connection pool per process, also used to enqueue arq jobs.

Every key, pub/sub channel and queue name of a deployment lives under
``settings.redis_prefix`` so several deployments (or parallel test workers)
can share one server without seeing each other.
"""

from __future__ import annotations

import asyncio

import msgspec
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.foundation.settings import Settings


def _encode_other(value: object) -> str:
    """arq stores a failed job's exception as its result: kept as its repr (msgpack has no
    exceptions), so the failure is on record instead of a serialisation traceback."""
    if isinstance(value, BaseException):
        return repr(value)
    raise NotImplementedError(f"cannot serialise {type(value).__name__}")


serialize_job = msgspec.msgpack.Encoder(enc_hook=_encode_other).encode
deserialize_job = msgspec.msgpack.Decoder().decode


def queue_name(settings: Settings) -> str:
    """The arq queue of this deployment."""
    return f"{settings.redis_prefix}:arq:queue"


def doorbell_channel(settings: Settings) -> str:
    """Pub/sub channel that wakes idle workers as soon as an urgent job is queued."""
    return f"{queue_name(settings)}:doorbell"


async def ring_doorbell(redis: ArqRedis, settings: Settings) -> None:
    """Tell the workers a job is waiting, so they need not wait for their next poll."""
    await redis.publish(doorbell_channel(settings), b"")


def create_redis(settings: Settings) -> ArqRedis:
    """A lazily-connecting client that retries dropped connections by itself."""
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (the dev launcher `python -m server dev` provides one)")
    pool = ConnectionPool.from_url(
        settings.redis_url,
        health_check_interval=15,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return ArqRedis(
        pool_or_conn=pool,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        default_queue_name=queue_name(settings),
    )


async def check_redis(redis: ArqRedis, timeout: float = 2.0) -> None:
    """Raise if Redis does not answer ``PING`` within ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        await redis.ping()
