"""Fixed-window rate limits kept in Redis, so every process shares one count.

The limiter fails open: when Redis does not answer within half a second the
attempt is allowed (and logged). A Redis outage must not stop people from
signing in or posting, which PostgreSQL alone can serve.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from server.foundation.errors import RateLimited
from server.foundation.redis import REDIS_ERRORS, RealtimeRedis, register_script

log = logging.getLogger("lounges.ratelimit")
TIMEOUT = 0.5

# INCR the window's counter; start its expiry on first hit. Returns {count, ttl_ms}.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""

# Give one hit back, never creating the key nor going below zero.
_REFUND = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class RateLimiter:
    """``await limiter.hit(key, limit, window)`` raises :class:`RateLimited` past ``limit``."""

    def __init__(self, redis: RealtimeRedis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:rl:"
        self._script = register_script(redis, _HIT)
        self._refund = register_script(redis, _REFUND)

    async def hit(self, key: str, limit: int, window_seconds: int) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                count, ttl_ms = await self._script(keys=[self._prefix + key], args=[window_seconds * 1000])
        except REDIS_ERRORS as exc:
            log.warning("rate limiter unavailable; allowing", extra={"key": key, "error": repr(exc)})
            return
        if count > limit:
            raise RateLimited(
                retry_after=-(-max(ttl_ms, 1) // 1000),
                detail=f"too many attempts; try again in {-(-max(ttl_ms, 1) // 1000)} s",
            )

    async def refund(self, key: str) -> None:
        """Take back one :meth:`hit` (an attempt that turned out not to count, e.g. a sign-in
        that succeeded); like :meth:`hit`, a Redis failure is logged and ignored."""
        await self._quietly(key, self._refund(keys=[self._prefix + key]))

    async def reset(self, key: str) -> None:
        """Forget every hit of ``key`` (Redis failures logged and ignored)."""
        await self._quietly(key, self._redis.delete(self._prefix + key))

    async def _quietly(self, key: str, command: Awaitable[object]) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await command
        except REDIS_ERRORS as exc:
            log.warning("rate limiter unavailable; count not updated", extra={"key": key, "error": repr(exc)})
