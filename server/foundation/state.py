"""What one process holds for its lifetime: settings, the database engine, the Redis clients, the object store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from piccolo.engine.postgres import PostgresEngine

from server.foundation.ratelimit import RateLimiter
from server.foundation.redis import RealtimeRedis, create_realtime_redis
from server.foundation.settings import Settings
from server.foundation.storage import Storage


class AppState:
    """Process-wide resources, opened and closed by the app's (or worker's) lifespan.

    A plain class, not a dataclass: Litestar hands it to handlers as a dependency and would
    otherwise try to model its fields (a union of two client classes it cannot validate)."""

    __slots__ = ("engine", "extensions", "limiter", "local_delivery", "realtime_redis", "redis", "settings", "storage")

    def __init__(self, *, settings: Settings, engine: PostgresEngine, redis: ArqRedis) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis  # the queue Redis (``server.foundation.redis``)
        # The realtime Redis: ``redis`` itself unless REALTIME_REDIS_URL names another server or a cluster.
        self.realtime_redis: RealtimeRedis = create_realtime_redis(settings, redis)
        self.limiter = RateLimiter(self.realtime_redis, settings.redis_prefix)
        # Opens its HTTP session on first use; the lifespan closes it (``await storage.close()``).
        self.storage = Storage(settings)
        # The web process's realtime node hands its own broadcasts (channel, wire payload) to its
        # sockets here, so they arrive even while Redis is away; None in workers.
        self.local_delivery: Callable[[str, bytes], None] | None = None
        # What a domain package derives once per process and keeps with it (e.g. accounts' signing
        # keys, ``server.domain.accounts.tokens.keys_of``), keyed by a name the package owns; this
        # layer knows none of them.
        self.extensions: dict[str, Any] = {}

    async def close_realtime_redis(self) -> None:
        """Close the realtime Redis's connections if it is not the queue Redis (whose owner closes it)."""
        if self.realtime_redis is not self.redis:
            await self.realtime_redis.aclose()
