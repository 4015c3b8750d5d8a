"""The PostgreSQL engine: one asyncpg pool per process, shared by every table.

Piccolo binds tables to an engine process-wide, so a process has exactly one
engine: the web app's lifespan and an in-process worker (as in the tests)
share it through :func:`acquire_engine` / :func:`release_engine`, which count
users and close the pool when the last one leaves. Which tables run on it is the
caller's to say (the app and the worker pass every table of ``server.piccolo_app``):
this module knows no table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector
from piccolo.engine.postgres import PostgresEngine
from piccolo.table import Table

from server.foundation import metrics
from server.foundation.settings import Settings

_shared: PostgresEngine | None = None
_users = 0


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Run on every new pooled connection: teach asyncpg the ``vector`` type."""
    await register_vector(connection)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing to undo. asyncpg's default sends ``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release,
    one more round trip per query; this code keeps no session state (only ``SET
    LOCAL`` and transaction-level advisory locks, no ``LISTEN``, no held cursors).
    An open transaction is still rolled back by asyncpg before this is called."""


class _MeteredPool(asyncpg.Pool):
    """asyncpg's pool, timing how long each ``acquire`` waits (``lounges_db_pool_acquire_seconds``).
    ``asyncpg.create_pool`` takes no pool class, so the pool Piccolo creates is given this one
    (the same slots, one method more)."""

    __slots__ = ()

    async def _acquire(self, timeout: float | None) -> Any:
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)
        finally:
            _ACQUIRED.observe(time.perf_counter() - started)


_ACQUIRED = metrics.DB_POOL_ACQUIRE_SECONDS
_IN_USE, _IDLE = metrics.DB_POOL_CONNECTIONS.labels("in_use"), metrics.DB_POOL_CONNECTIONS.labels("idle")


def _sample_pool() -> None:
    """The pool's sizes now (a metrics sampler)."""
    pool = _shared.pool if _shared is not None else None
    if pool is None:
        return
    idle = pool.get_idle_size()
    _IN_USE.set(pool.get_size() - idle)
    _IDLE.set(idle)
    metrics.DB_POOL_MAX_CONNECTIONS.set(pool.get_max_size())


metrics.add_sampler(_sample_pool)


def _bind(engine: PostgresEngine, tables: Iterable[type[Table]]) -> None:
    for table in tables:
        table._meta.db = engine


async def acquire_engine(settings: Settings, tables: Iterable[type[Table]]) -> PostgresEngine:
    """The process's engine for ``settings.database_url``, started on first use; ``tables``
    are bound to it (every acquirer names the tables it uses)."""
    global _shared, _users
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (the dev launcher `python -m server dev` provides one)")
    if _shared is not None:
        if _shared.config["dsn"] != settings.database_url:
            raise RuntimeError("a process serves one database; another engine is already running")
        _users += 1
        _bind(_shared, tables)
        return _shared

    engine = PostgresEngine(
        config={"dsn": settings.database_url, "command_timeout": settings.db_command_timeout},
        extensions=(),
        log_queries=False,
    )
    await engine.start_connection_pool(
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        init=_init_connection,
        reset=_keep_session,
    )
    if metrics.collecting:
        engine.pool.__class__ = _MeteredPool
    _bind(engine, tables)
    _shared, _users = engine, 1
    return engine


async def release_engine(engine: PostgresEngine) -> None:
    """Give back a reference from :func:`acquire_engine`; the last one closes the pool."""
    global _shared, _users
    if engine is not _shared:
        raise RuntimeError("releasing an engine this process does not hold")
    _users -= 1
    if _users == 0:
        _shared = None
        await engine.close_connection_pool()


async def check_database(engine: PostgresEngine, timeout: float = 2.0) -> None:
    """Raise if PostgreSQL does not answer ``SELECT 1`` within ``timeout`` seconds."""
    if engine.pool is None:
        raise ConnectionError("pool not started")
    async with asyncio.timeout(timeout):
        async with engine.pool.acquire() as connection:
            await connection.fetchval("SELECT 1")


# -- reads without the query builder -------------------------------------------------------

_NUMBERED: dict[str, str] = {}
_NUMBERED_MAX = 2048  # distinct statement texts remembered; more are numbered on each call


def _numbered(sql: str) -> str:
    """``sql`` with Piccolo's ``{}`` placeholders as PostgreSQL's ``$1, $2, ...`` (remembered
    per text, so a hot statement is rewritten once per process)."""
    numbered = _NUMBERED.get(sql)
    if numbered is None:
        first, *rest = sql.split("{}")
        numbered = first + "".join(f"${position}{part}" for position, part in enumerate(rest, 1))
        if len(_NUMBERED) < _NUMBERED_MAX:
            _NUMBERED[sql] = numbered
    return numbered


async def fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
    """The rows of ``sql`` (``{}`` placeholders, as ``Table.raw``) as dicts, run on the
    current transaction's connection if one is open, else on a pooled one.

    What ``Table.raw`` returns, for a fraction of its Python: no query-string compile per
    call, no hooks. asyncpg prepares each text once per connection (its statement cache), so a
    hot read is parsed and planned by PostgreSQL once per pooled connection too."""
    engine = _shared
    if engine is None or engine.pool is None:
        raise RuntimeError("no database engine is running in this process")
    statement = _numbered(sql)
    transaction = engine.current_transaction.get()
    if transaction is not None:
        records = await transaction.connection.fetch(statement, *args)
    else:
        async with engine.pool.acquire() as connection:
            records = await connection.fetch(statement, *args)
    return [dict(record) for record in records]
