"""What one process holds for its lifetime: settings, the database engine, Redis."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from piccolo.engine.postgres import PostgresEngine

from server.settings import Settings


@dataclass(slots=True)
class AppState:
    """Process-wide resources, opened and closed by the app's lifespan."""

    settings: Settings
    engine: PostgresEngine
    redis: ArqRedis
