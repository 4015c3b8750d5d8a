"""Retrieval indexes per source type: HNSW per (model, source type), counting btrees.

Retrieval searches the asker's notes and the lounge's knowledge files as two
separate parts (``server/domain/knowledge/retrieval.py``). Each part gets its own
partial HNSW index per embedding model, so an over-fetch filters candidates of
one source type only (a lounge's files are most of the file index, where they
were a tenth of the whole model's index), and a partial btree that counts the
part's chunks with an index-only scan. The per-model HNSW indexes they replace
are dropped; backwards restores them.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-30T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Retrieval indexes per source type"

# model → (short name in the index names, dimension); frozen at the time of writing.
MODELS: dict[str, tuple[str, int]] = {
    "all-minilm-l6-v2": ("minilm", 384),
    "text-embedding-3-small": ("te3small", 1536),
    "hashing-384": ("hashing", 384),
}
SOURCE_TYPES = ("note", "file")


def _hnsw(model: str, source_type: str) -> tuple[str, str]:
    short, dim = MODELS[model]
    name = f"knowledge_chunks_{short}_{source_type}_hnsw"
    return name, (
        f"CREATE INDEX IF NOT EXISTS {name} ON knowledge_chunks"
        f' USING hnsw (("embedding"::vector({dim})) vector_cosine_ops)'
        f" WHERE \"embedding_model\" = '{model}' AND \"source_type\" = '{source_type}'"
    )


NEW: dict[str, str] = dict(
    [_hnsw(model, source_type) for model in MODELS for source_type in SOURCE_TYPES]
    + [
        (
            "knowledge_chunks_note_owner_idx",
            "CREATE INDEX IF NOT EXISTS knowledge_chunks_note_owner_idx"
            ' ON knowledge_chunks ("embedding_model", "owner") WHERE "source_type" = \'note\'',
        ),
        (
            "knowledge_chunks_file_lounge_idx",
            "CREATE INDEX IF NOT EXISTS knowledge_chunks_file_lounge_idx"
            ' ON knowledge_chunks ("embedding_model", "lounge", "file") WHERE "source_type" = \'file\'',
        ),
    ]
)

OLD: dict[str, str] = {
    f"knowledge_chunks_embedding_{short}_hnsw": (
        f"CREATE INDEX IF NOT EXISTS knowledge_chunks_embedding_{short}_hnsw ON knowledge_chunks"
        f' USING hnsw (("embedding"::vector({dim})) vector_cosine_ops)'
        f" WHERE \"embedding_model\" = '{model}'"
    )
    for model, (short, dim) in MODELS.items()
}


async def _replace(drop: dict[str, str], create: dict[str, str]) -> None:
    engine = engine_finder()
    for ddl in create.values():
        await engine.run_ddl(ddl)
    for name in drop:
        await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="lounges", description=DESCRIPTION)

    async def split_indexes():
        await _replace(drop=OLD, create=NEW)

    async def restore_indexes():
        await _replace(drop=NEW, create=OLD)

    manager.add_raw(split_indexes)
    manager.add_raw_backwards(restore_indexes)

    return manager
