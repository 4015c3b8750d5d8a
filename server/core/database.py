"""The PostgreSQL engine: one asyncpg pool per process, shared by every table.

Piccolo finds its engine through ``piccolo_conf.py`` by default; the running
service instead builds the engine from :class:`~server.settings.Settings` and
binds it to every table explicitly, so tests and several apps in one process
can each point at their own database.
"""

from __future__ import annotations

import asyncio

import asyncpg
from pgvector.asyncpg import register_vector
from piccolo.engine.postgres import PostgresEngine

from server.settings import Settings


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Run on every new pooled connection: teach asyncpg the ``vector`` type."""
    await register_vector(connection)


def create_engine(settings: Settings) -> PostgresEngine:
    """Build (but do not connect) the engine for ``settings.database_url``."""
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (the dev launcher `python -m server dev` provides one)")
    return PostgresEngine(
        config={"dsn": settings.database_url, "command_timeout": settings.db_command_timeout},
        extensions=(),
        log_queries=False,
    )


async def start_engine(engine: PostgresEngine, settings: Settings) -> None:
    """Open the pool (with pgvector codecs) and bind every table to ``engine``."""
    from server.piccolo_app import ALL_TABLES

    await engine.start_connection_pool(
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        init=_init_connection,
    )
    for table in ALL_TABLES:
        table._meta.db = engine


async def stop_engine(engine: PostgresEngine) -> None:
    if engine.pool is not None:
        await engine.close_connection_pool()


async def check_database(engine: PostgresEngine, timeout: float = 2.0) -> None:
    """Raise if PostgreSQL does not answer ``SELECT 1`` within ``timeout`` seconds."""
    if engine.pool is None:
        raise ConnectionError("pool not started")
    async with asyncio.timeout(timeout):
        async with engine.pool.acquire() as connection:
            await connection.fetchval("SELECT 1")
