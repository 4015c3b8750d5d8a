"""What one process holds for its lifetime: settings, the database engine, Redis, the object store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from piccolo.engine.postgres import PostgresEngine

from server.accounts.tokens import TokenKeys
from server.core.ratelimit import RateLimiter
from server.core.storage import Storage
from server.settings import Settings


@dataclass(slots=True)
class AppState:
    """Process-wide resources, opened and closed by the app's (or worker's) lifespan."""

    settings: Settings
    engine: PostgresEngine
    redis: ArqRedis
    token_keys: TokenKeys = field(init=False)
    limiter: RateLimiter = field(init=False)
    # Opens its HTTP session on first use; the lifespan closes it (``await storage.close()``).
    storage: Storage = field(init=False)
    # The web process's realtime node hands its own broadcasts (channel, wire payload) to its
    # sockets here, so they arrive even while Redis is away; None in workers.
    local_delivery: Callable[[str, bytes], None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.token_keys = TokenKeys(self.settings)
        self.limiter = RateLimiter(self.redis, self.settings.redis_prefix)
        self.storage = Storage(self.settings)
