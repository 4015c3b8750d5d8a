"""Piccolo configuration: the database engine and the registered apps."""

import os

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/lounges"

DB = PostgresEngine(
    config={"dsn": os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL},
    extensions=(),
)

APP_REGISTRY = AppRegistry(apps=["server.piccolo_app"])
