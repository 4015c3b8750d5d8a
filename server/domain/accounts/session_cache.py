"""What each process remembers of the sessions it authenticated lately.

Every authenticated request and socket connect presents an access token whose session
and user must still be live: one SQL round trip that, on a read-heavy REST path, cost
more than the read itself. A process keeps each answer for ``AUTH_CACHE_SECONDS``
(5 s by default; 0 turns the cache off) and forgets it as soon as it may be wrong:

- **here**, at once: every write that changes what authenticating reads (a session
  revoked, an account disabled, a role, the verified flag or the profile changed) goes
  through :func:`announce`, which forgets the user's sessions in this process before the
  control event leaves for the others;
- **on every other node**, when that control event arrives (the gateway hands each one to
  :meth:`SessionCache.apply`, through ``server.wiring``);
- **everywhere**, after ``AUTH_CACHE_SECONDS`` at the latest, should the event be lost
  (pub/sub is fire-and-forget, and a node may be between Redis connections).

Expired entries are dropped when read, and by one timer per cache (every
``AUTH_CACHE_SECONDS`` while it holds any), so sessions not seen again (a burst of socket
connects) cost nothing once their time is up.

A read that started before a forget may end after it; its answer is then not kept (a
generation count says so), so a cache never holds what a revocation already removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Generic, TypeVar

from server.foundation.control import ControlEvent, publish_control
from server.foundation.redis import REDIS_ERRORS
from server.foundation.state import AppState

log = logging.getLogger("lounges.auth")

MAX_ENTRIES = 20_000  # sessions kept per process; the oldest go first
T = TypeVar("T")


class SessionCache(Generic[T]):
    """Session id → what authenticating read of it, for ``ttl`` seconds."""

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0  # moves on every forget: a read older than it is not kept
        self._entries: dict[uuid.UUID, tuple[float, uuid.UUID, T]] = {}
        self._by_user: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._sweep: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    def get(self, session_id: uuid.UUID) -> T | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if time.monotonic() - entry[0] >= self.ttl:
            self._drop(session_id)
            return None
        return entry[2]

    def put(self, session_id: uuid.UUID, user_id: uuid.UUID, value: T, *, read_at_generation: int) -> None:
        """Keep ``value``, read when :attr:`generation` was ``read_at_generation``, unless a
        forget came in between (the value may be what it removed)."""
        if self.ttl <= 0 or read_at_generation != self.generation:
            return
        if session_id not in self._entries and len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))
        self._entries[session_id] = (time.monotonic(), user_id, value)
        self._by_user.setdefault(user_id, set()).add(session_id)
        self._sweep_later()

    def forget_user(self, user_id: uuid.UUID) -> None:
        self.generation += 1
        for session_id in self._by_user.pop(user_id, set()):
            self._entries.pop(session_id, None)

    def apply(self, event: ControlEvent) -> None:
        """Forget what ``event`` may have changed: every session of its user (a revocation
        names sessions, but the others' answers carry the same user row)."""
        if event.kind != "channel.access_lost":
            self.forget_user(event.user_id)

    def __len__(self) -> int:
        return len(self._entries)

    def _sweep_later(self) -> None:
        """Have the expired entries dropped in ``ttl`` seconds (once per cache and loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used without a loop (a test of the cache alone): reads drop them
            return
        if self._sweep is None or self._sweep[0] is not loop:
            self._sweep = loop, loop.call_later(self.ttl, self._drop_expired)

    def _drop_expired(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for session_id in [key for key, entry in self._entries.items() if now - entry[0] >= self.ttl]:
            self._drop(session_id)
        if self._entries:
            self._sweep_later()

    def _drop(self, session_id: uuid.UUID) -> None:
        _, user_id, _ = self._entries.pop(session_id)
        sessions = self._by_user.get(user_id)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self._by_user[user_id]


def session_cache_of(state: AppState) -> SessionCache[object]:
    """The process's cache, made on first use and kept on the state."""
    cache = state.extensions.get("accounts.session_cache")
    if cache is None:
        cache = state.extensions["accounts.session_cache"] = SessionCache[object](state.settings.auth_cache_seconds)
    return cache


async def announce(state: AppState, event: ControlEvent) -> None:
    """Act on a committed account change: forget here, then tell every node (their sockets
    and their caches). Run it after the commit (``on_commit``). Without Redis the change
    stands and is logged: other nodes see it within ``AUTH_CACHE_SECONDS``, their sockets
    at the next session sweep."""
    session_cache_of(state).apply(event)
    try:
        await publish_control(state.realtime_redis, state.settings.redis_prefix, event)
    except REDIS_ERRORS as exc:
        log.warning("control event not sent", extra={"kind": event.kind, "error": repr(exc)})
