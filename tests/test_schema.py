"""The database schema: migrations build exactly the declared tables, tables and
migrations agree, and vector columns round-trip through asyncpg."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

import asyncpg
from pgvector.asyncpg import register_vector
from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.apps.migrations.auto.schema_snapshot import SchemaSnapshot
from piccolo.apps.migrations.auto.serialisation import serialise_params
from piccolo.apps.migrations.commands.new import AutoMigrationManager
from piccolo.columns import (
    JSONB,
    UUID,
    Array,
    BigInt,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.conf.apps import AppConfig
from piccolo.constraints import Check
from piccolo.table import Table, create_table_class

from server.domain.tables.accounts import User
from server.domain.tables.chat import Message
from server.domain.tables.knowledge import EMBEDDING_DIMENSIONS, KnowledgeSourceType, hnsw_index
from server.foundation.db_columns import Vector
from server.piccolo_app import ALL_TABLES, APP_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]

# Indexes created by raw SQL in the index migration, which Piccolo does not track.
RAW_INDEXES = {
    "users_email_lower_key",
    "security_events_user_created_at_idx",
    "mentors_status_created_at_idx",
    "lounge_memberships_user_status_idx",
    "chat_threads_user_updated_at_idx",
    "messages_sender_client_id_key",
    "files_owner_created_at_idx",
    "notes_user_pinned_updated_at_idx",
    "notes_fts_idx",
    "knowledge_chunks_note_chunk_key",
    "knowledge_chunks_file_chunk_key",
    "knowledge_chunks_fts_idx",
    "knowledge_chunks_minilm_note_hnsw",
    "knowledge_chunks_minilm_file_hnsw",
    "knowledge_chunks_te3small_note_hnsw",
    "knowledge_chunks_te3small_file_hnsw",
    "knowledge_chunks_hashing_note_hnsw",
    "knowledge_chunks_hashing_file_hnsw",
    "knowledge_chunks_note_owner_idx",
    "knowledge_chunks_file_lounge_idx",
    "time_capsules_status_unlock_at_idx",
    "subscriptions_user_status_idx",
    "payments_user_created_at_idx",
    "ai_usage_user_created_at_idx",
    "notifications_user_created_at_idx",
    "notifications_user_unread_idx",
    "compliance_requests_status_requested_at_idx",
    "push_log_user_created_at_idx",
}

# information_schema.columns.udt_name for each Piccolo column class.
UDT_NAMES: dict[type[Column], str] = {
    UUID: "uuid",
    Varchar: "varchar",
    Text: "text",
    Boolean: "bool",
    Integer: "int4",
    BigInt: "int8",
    Timestamptz: "timestamptz",
    JSONB: "jsonb",
    Vector: "vector",
}


# pg_constraint.confdeltype for each ON DELETE action.
DELETE_RULES = {
    OnDelete.cascade: "c",
    OnDelete.set_null: "n",
    OnDelete.restrict: "r",
    OnDelete.no_action: "a",
    OnDelete.set_default: "d",
}


async def _piccolo(database_url: str, *args: str) -> None:
    """Run the Piccolo CLI against ``database_url`` and fail with its output if it fails."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PICCOLO_CONF": "piccolo_conf",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "piccolo.main",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"piccolo {' '.join(args)} failed:\n{output.decode()}"


async def _migrate(database_url: str) -> None:
    await _piccolo(database_url, "migrations", "forwards", "lounges")


def _udt_name(column: Column) -> str:
    if isinstance(column, ForeignKey):
        return _udt_name(column._foreign_key_meta.resolved_target_column)
    if isinstance(column, Array):
        return "_" + _udt_name(column.base_column)
    return UDT_NAMES[type(column)]


async def _pending_migration_statements(table_classes: list[type[Table]]) -> list[str]:
    """What ``piccolo migrations new lounges --auto`` would write for these tables.

    Replays every migration's ``MigrationManager`` into a ``SchemaSnapshot`` and
    diffs it against the tables with ``SchemaDiffer`` -- Piccolo's own code path.
    """
    app_config = AppConfig(
        app_name=APP_CONFIG.app_name,
        migrations_folder_path=APP_CONFIG.migrations_folder_path,
        table_classes=table_classes,
    )
    alter_statements = await AutoMigrationManager(auto_input="n").get_alter_statements(app_config=app_config)
    return [statement for group in alter_statements for statement in group.statements]


async def _changed_constraints(table_classes: list[type[Table]]) -> list[str]:
    """Constraints whose definition differs between the tables and the migrations.

    ``SchemaDiffer`` matches constraints by name only, so a CHECK whose
    condition changed (e.g. a value added to an enum) is not reported by it.
    """
    managers = await AutoMigrationManager().get_migration_managers(app_config=APP_CONFIG)
    migrated = {
        table.class_name: {constraint._meta.name: constraint._meta.params for constraint in table.constraints}
        for table in SchemaSnapshot(managers=managers).get_snapshot()
    }
    changed = []
    for table in table_classes:
        for constraint in table._meta.constraints:
            old_params = migrated.get(table.__name__, {}).get(constraint._meta.name)
            if old_params is not None and old_params != constraint._meta.params:
                changed.append(
                    f"{table.__name__}.{constraint._meta.name}: migrations have {old_params},"
                    f" the table has {constraint._meta.params}"
                )
    return changed


async def test_migrations_build_the_declared_schema(empty_database_url: str) -> None:
    await _migrate(empty_database_url)

    conn = await asyncpg.connect(empty_database_url)
    try:
        column_rows = await conn.fetch(
            """
            SELECT table_name, column_name, is_nullable, udt_name, character_maximum_length
            FROM information_schema.columns
            WHERE table_schema = 'public'
            """
        )
        constraint_rows = await conn.fetch(
            """
            SELECT con.conname, rel.relname, con.contype::text, con.confdeltype::text, att.attname
            FROM pg_constraint con
            JOIN pg_class rel ON rel.oid = con.conrelid
            JOIN pg_namespace nsp ON nsp.oid = rel.relnamespace
            LEFT JOIN pg_attribute att
                ON con.contype = 'f' AND att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
            WHERE nsp.nspname = 'public'
            """
        )
        index_rows = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        has_vector = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")
    finally:
        await conn.close()

    actual_columns: dict[str, dict[str, tuple[bool, str, int | None]]] = {}
    for row in column_rows:
        actual_columns.setdefault(row["table_name"], {})[row["column_name"]] = (
            row["is_nullable"] == "YES",
            row["udt_name"],
            row["character_maximum_length"],
        )

    assert set(actual_columns) == {table._meta.tablename for table in ALL_TABLES} | {"migration"}
    for table in ALL_TABLES:
        expected = {
            column._meta.db_column_name: (
                column._meta.null,
                _udt_name(column),
                column.length if isinstance(column, Varchar) else None,
            )
            for column in table._meta.columns
        }
        assert actual_columns[table._meta.tablename] == expected, table.__name__

    constraints = {row["conname"]: row for row in constraint_rows}
    for table in ALL_TABLES:
        for constraint in table._meta.constraints:
            assert constraint._meta.name in constraints, constraint._meta.name
        foreign_keys = {
            row["attname"]: row["confdeltype"]
            for row in constraint_rows
            if row["relname"] == table._meta.tablename and row["contype"] == "f"
        }
        assert foreign_keys == {
            column._meta.db_column_name: DELETE_RULES[column._foreign_key_meta.on_delete]
            for column in table._meta.foreign_key_columns
        }, table.__name__

    assert has_vector
    indexes = {row["indexname"]: row["indexdef"] for row in index_rows}
    assert set(indexes) >= RAW_INDEXES, RAW_INDEXES - set(indexes)
    hnsw = {name: definition for name, definition in indexes.items() if "USING hnsw" in definition}
    # One partial HNSW index per model and source type: retrieval searches notes and files apart.
    assert len(hnsw) == len(EMBEDDING_DIMENSIONS) * len(KnowledgeSourceType)
    for model, dimensions in EMBEDDING_DIMENSIONS.items():
        for source_type in KnowledgeSourceType:
            definition = hnsw[hnsw_index(model, source_type)]
            assert f"vector({dimensions})) vector_cosine_ops" in definition, definition
            assert f"'{model}'" in definition and f"'{source_type}'" in definition, definition


async def test_migrations_roll_back_to_an_empty_database(empty_database_url: str) -> None:
    await _migrate(empty_database_url)
    await _piccolo(empty_database_url, "migrations", "backwards", "lounges", "--migration_id=all", "--auto_agree")

    conn = await asyncpg.connect(empty_database_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        has_vector = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")
    finally:
        await conn.close()
    assert [row["tablename"] for row in tables] == ["migration"]
    assert not has_vector

    await _migrate(empty_database_url)


async def test_tables_and_migrations_agree() -> None:
    statements = await _pending_migration_statements(ALL_TABLES)
    assert statements == [], (
        "The Table classes differ from what the migrations build; "
        "run `piccolo migrations new lounges --auto`:\n" + "\n".join(statements)
    )
    changed = await _changed_constraints(ALL_TABLES)
    assert changed == [], (
        "Constraints changed without a migration (auto migrations only see names: rename the"
        " constraint, or drop and re-add it in a hand-written migration):\n" + "\n".join(changed)
    )


async def test_drift_check_catches_a_column_without_a_migration() -> None:
    user_with_nickname = create_table_class(
        class_name="User",
        bases=(User,),
        class_kwargs={"tablename": "users"},
        class_members={"nickname": Varchar(length=50)},
    )
    tables = [user_with_nickname if table is User else table for table in ALL_TABLES]

    statements = await _pending_migration_statements(tables)

    assert len(statements) == 1
    assert statements[0].startswith("manager.add_column(")
    assert "'nickname'" in statements[0]


async def test_drift_check_catches_a_changed_check_condition() -> None:
    message_with_fewer_statuses = create_table_class(
        class_name="Message",
        bases=(Message,),
        class_kwargs={"tablename": "messages"},
        class_members={"messages_status_check": Check("\"status\" IN ('complete', 'failed')")},
    )
    tables = [message_with_fewer_statuses if table is Message else table for table in ALL_TABLES]

    assert await _pending_migration_statements(tables) == []
    changed = await _changed_constraints(tables)

    assert len(changed) == 1
    assert changed[0].startswith("Message.messages_status_check:")


def test_vector_column_survives_migration_serialisation() -> None:
    for dimensions, column_type in ((384, "VECTOR(384)"), (None, "VECTOR")):
        serialised = serialise_params(Vector(dimensions=dimensions, null=True)._meta.params)
        manager = MigrationManager()
        manager.add_column(
            table_class_name="Example",
            tablename="examples",
            column_name="embedding",
            column_class=Vector,
            params=serialised.params,
        )
        column = manager.add_columns.add_columns[0].column
        assert isinstance(column, Vector)
        assert column.column_type == column_type
        assert column._meta.null is True


async def test_vector_column_round_trips(empty_database_url: str) -> None:
    await _migrate(empty_database_url)
    rng = random.Random(384)
    vectors = [[rng.uniform(-1.0, 1.0) for _ in range(384)] for _ in range(3)]
    nearest_query = """
        SELECT id, embedding FROM knowledge_chunks
        WHERE embedding_model = 'all-minilm-l6-v2' AND source_type = 'note'
        ORDER BY embedding::vector(384) <=> $1
        LIMIT 1
    """

    conn = await asyncpg.connect(empty_database_url)
    try:
        await register_vector(conn)
        transaction = conn.transaction()
        await transaction.start()
        try:
            user_id = await conn.fetchval(
                "INSERT INTO users (email, full_name) VALUES ('vector@example.com', 'V') RETURNING id"
            )
            note_id = await conn.fetchval(
                'INSERT INTO notes ("user", title, content) VALUES ($1, $2, $3) RETURNING id',
                user_id,
                "Vectors",
                "Embedded note",
            )
            chunk_ids = [
                await conn.fetchval(
                    """
                    INSERT INTO knowledge_chunks (source_type, note, owner, chunk_index, content,
                        content_hash, embedding, embedding_model, embedding_dim)
                    VALUES ('note', $1, $2, $3, 'chunk', 'hash', $4, 'all-minilm-l6-v2', 384)
                    RETURNING id
                    """,
                    note_id,
                    user_id,
                    index,
                    vector,
                )
                for index, vector in enumerate(vectors)
            ]

            row = await conn.fetchrow(nearest_query, vectors[1])
            assert row["id"] == chunk_ids[1]
            stored = row["embedding"].to_list()
            assert len(stored) == 384
            assert max(abs(a - b) for a, b in zip(stored, vectors[1], strict=True)) < 1e-6

            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + nearest_query, vectors[1]))
            assert "knowledge_chunks_minilm_note_hnsw" in plan
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
