"""channels.rewrites: how many stored publications of the channel were rewritten.

An edit, a deletion or an account's erasure rewrites publications in place; the
Redis history cache and every node's ring compare this count with their own to
notice a rewrite whose broadcast they missed (server/streams/channels.py).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import BigInt
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-06T21:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "channels.rewrites"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="lounges", description=DESCRIPTION)

    manager.add_column(
        table_class_name="Channel",
        tablename="channels",
        column_name="rewrites",
        db_column_name="rewrites",
        column_class_name="BigInt",
        column_class=BigInt,
        params={
            "default": 0,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
