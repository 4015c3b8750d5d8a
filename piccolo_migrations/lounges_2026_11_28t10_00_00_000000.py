"""HNSW index for the lexical fallback embeddings (``hashing-384``).

Like the other models' indexes (see the index migration), it is partial: the
model name is a literal in its WHERE clause, so a query must name the model as
a SQL literal for the planner to use it.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "HNSW index for hashing-384 embeddings"

INDEX = "knowledge_chunks_embedding_hashing_hnsw"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="lounges", description=DESCRIPTION)

    async def create_index():
        await engine_finder().run_ddl(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON knowledge_chunks"
            ' USING hnsw (("embedding"::vector(384)) vector_cosine_ops)'
            " WHERE \"embedding_model\" = 'hashing-384'"
        )

    async def drop_index():
        await engine_finder().run_ddl(f"DROP INDEX IF EXISTS {INDEX}")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)

    return manager
