"""What one process holds for its lifetime: settings, the database engine, Redis, the object store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from piccolo.engine.postgres import PostgresEngine

from server.foundation.ratelimit import RateLimiter
from server.foundation.settings import Settings
from server.foundation.storage import Storage


@dataclass(slots=True)
class AppState:
    """Process-wide resources, opened and closed by the app's (or worker's) lifespan."""

    settings: Settings
    engine: PostgresEngine
    redis: ArqRedis
    limiter: RateLimiter = field(init=False)
    # Opens its HTTP session on first use; the lifespan closes it (``await storage.close()``).
    storage: Storage = field(init=False)
    # The web process's realtime node hands its own broadcasts (channel, wire payload) to its
    # sockets here, so they arrive even while Redis is away; None in workers.
    local_delivery: Callable[[str, bytes], None] | None = field(default=None, init=False)
    # What a domain package derives once per process and keeps with it (e.g. accounts' signing
    # keys, ``server.domain.accounts.tokens.keys_of``), keyed by a name the package owns; this layer
    # knows none of them.
    extensions: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.redis, self.settings.redis_prefix)
        self.storage = Storage(self.settings)
