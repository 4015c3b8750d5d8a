"""push_log's listing index: a user's pushes, newest first (``GET /api/v1/devices/pushes``).

In a migration of its own: Piccolo runs a migration's raw steps before its
``add_table`` steps, so it cannot sit beside the table it indexes.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-07T12:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "push_log user index"

INDEXES: dict[str, str] = {
    "push_log_user_created_at_idx": 'CREATE INDEX push_log_user_created_at_idx ON push_log ("user", "created_at")',
}


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="lounges", description=DESCRIPTION)

    async def create_indexes():
        engine = engine_finder()
        for ddl in INDEXES.values():
            await engine.run_ddl(ddl)

    async def drop_indexes():
        engine = engine_finder()
        for name in reversed(INDEXES):
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_indexes)
    manager.add_raw_backwards(drop_indexes)

    return manager
