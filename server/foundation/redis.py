"""The Redis clients of a process: the queue Redis and the realtime Redis.

- The **queue Redis** (``REDIS_URL``, one server): arq's jobs, the coach's reply leases
  beside them, sign-in flows, node heartbeats. arq has no cluster support (its queue,
  job, retry and result keys meet in one MULTI without hash tags), so it is one server.
- The **realtime Redis** (``REALTIME_REDIS_URL``, default the same server): what grows
  with traffic: channel publications, history caches, presence, online records, rate
  limits, the control bus. It may be a Redis Cluster (``redis+cluster://``): each
  channel's keys share a hash tag and its publications use sharded pub/sub, so a
  channel lives on one shard and channels spread over all of them.

Every key, pub/sub channel and queue name of a deployment lives under
``settings.redis_prefix`` so several deployments (or parallel test workers)
can share one server without seeing each other.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.jobs import Job
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.foundation import metrics
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


# What a Redis call may raise when Redis is away, slow, or its cluster is reshaping itself
# (redis-py's cluster errors are not all ``RedisError``s).
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

RealtimeRedis = Redis | RedisCluster
"""The realtime Redis: one server or a cluster (see the module's docstring)."""
RealtimePipeline = Pipeline | ClusterPipeline


def _connection_options() -> dict[str, Any]:
    return {
        "health_check_interval": 15,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


# How long a command waits for a free pooled connection before it fails (callers on a
# socket's path give up sooner, after their own ``REDIS_TIMEOUT``).
POOL_WAIT_SECONDS = 10.0


def _bounded_pool(url: str, settings: Settings) -> BlockingConnectionPool:
    """At most ``REDIS_MAX_CONNECTIONS`` connections to the server at ``url``; a command finding
    them all busy waits for one (its own timeout still bounds it). redis-py's default pool
    opens one more connection for every command that finds none free: a storm of 10,000
    sockets connecting or leaving at once opened ~10,000 and reached Redis's ``maxclients``,
    refusing every other node and worker too."""
    return BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections, timeout=POOL_WAIT_SECONDS, **_connection_options()
    )


class QueueRedis(ArqRedis):
    """arq's client, counting the jobs this process queues (``lounges_jobs_enqueued_total``)."""

    async def enqueue_job(self, function: str, *args: Any, **kwargs: Any) -> Job | None:
        job = await super().enqueue_job(function, *args, **kwargs)
        if metrics.collecting:
            metrics.JOBS_ENQUEUED.labels(function, "queued" if job is not None else "duplicate").inc()
        return job


def create_redis(settings: Settings) -> ArqRedis:
    """The queue Redis: a lazily-connecting client that retries dropped connections by itself."""
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (the dev launcher `python -m server dev` provides one)")
    pool = _bounded_pool(settings.redis_url, settings)
    return QueueRedis(
        pool_or_conn=pool,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        default_queue_name=queue_name(settings),
    )


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].endswith("+cluster")


def create_realtime_redis(settings: Settings, queue: ArqRedis) -> RealtimeRedis:
    """The realtime Redis: ``queue`` itself unless ``REALTIME_REDIS_URL`` names another
    server or a cluster."""
    url = settings.realtime_redis_url
    if not url or url == settings.redis_url:
        return queue
    if is_cluster_url(url):
        scheme, _, rest = url.partition("://")
        return RedisCluster.from_url(
            f"{scheme.removesuffix('+cluster')}://{rest}",
            # A failover or a slot move: find the new owner at once, then retry the command.
            reinitialize_steps=1,
            cluster_error_retry_attempts=3,
            **_connection_options(),
        )
    return Redis(connection_pool=_bounded_pool(url, settings))


def register_script(redis: RealtimeRedis, source: str) -> AsyncScript:
    """``redis.register_script(source)`` for a server or a cluster: redis-py types it for
    ``Redis`` only, yet it runs on both (``EVALSHA`` goes to the shard of the keys it is given)."""
    return AsyncScript(redis, source)  # type: ignore[arg-type]


async def check_redis(redis: RealtimeRedis, timeout: float = 2.0) -> None:
    """Raise if Redis does not answer ``PING`` within ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        await redis.ping()
