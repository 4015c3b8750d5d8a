"""Enable the pgvector extension.

This is a migration of its own because Piccolo runs a migration's raw steps
before its ``add_table`` steps, and the next migration creates a table with a
``vector`` column.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T09:25:50:524585"
VERSION = "1.38.0"
DESCRIPTION = "Enable the pgvector extension"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="lounges", description=DESCRIPTION)

    async def create_extension():
        await engine_finder().run_ddl("CREATE EXTENSION IF NOT EXISTS vector")

    async def drop_extension():
        await engine_finder().run_ddl("DROP EXTENSION IF EXISTS vector")

    manager.add_raw(create_extension)
    manager.add_raw_backwards(drop_extension)

    return manager
