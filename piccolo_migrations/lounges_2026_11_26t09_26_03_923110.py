"""Indexes that Piccolo's auto migrations cannot express.

Composite, partial, expression, full-text (GIN) and vector (HNSW) indexes.
They are in a migration after the one that creates the tables because Piccolo
runs a migration's raw steps before its ``add_table`` steps.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T09:26:03:923110"
VERSION = "1.38.0"
DESCRIPTION = "Indexes auto migrations cannot express"

INDEXES: dict[str, str] = {
    # accounts
    "users_email_lower_key": 'CREATE UNIQUE INDEX users_email_lower_key ON users (lower("email"))',
    "security_events_user_created_at_idx": (
        'CREATE INDEX security_events_user_created_at_idx ON security_events ("user", "created_at")'
    ),
    # mentors
    "mentors_status_created_at_idx": 'CREATE INDEX mentors_status_created_at_idx ON mentors ("status", "created_at")',
    # lounges
    "lounge_memberships_user_status_idx": (
        'CREATE INDEX lounge_memberships_user_status_idx ON lounge_memberships ("user", "status")'
    ),
    # chat
    "chat_threads_user_updated_at_idx": (
        'CREATE INDEX chat_threads_user_updated_at_idx ON chat_threads ("user", "updated_at")'
    ),
    "messages_sender_client_id_key": (
        "CREATE UNIQUE INDEX messages_sender_client_id_key"
        ' ON messages ("sender", "client_id") WHERE "client_id" IS NOT NULL'
    ),
    # files
    "files_owner_created_at_idx": 'CREATE INDEX files_owner_created_at_idx ON files ("owner", "created_at")',
    # notes
    "notes_user_pinned_updated_at_idx": (
        'CREATE INDEX notes_user_pinned_updated_at_idx ON notes ("user", "pinned", "updated_at")'
    ),
    "notes_fts_idx": (
        "CREATE INDEX notes_fts_idx ON notes USING gin (to_tsvector('english', \"title\" || ' ' || \"content\"))"
    ),
    # knowledge
    "knowledge_chunks_note_chunk_key": (
        "CREATE UNIQUE INDEX knowledge_chunks_note_chunk_key"
        ' ON knowledge_chunks ("note", "embedding_model", "chunk_index") WHERE "note" IS NOT NULL'
    ),
    "knowledge_chunks_file_chunk_key": (
        "CREATE UNIQUE INDEX knowledge_chunks_file_chunk_key"
        ' ON knowledge_chunks ("file", "embedding_model", "chunk_index") WHERE "file" IS NOT NULL'
    ),
    "knowledge_chunks_fts_idx": (
        "CREATE INDEX knowledge_chunks_fts_idx ON knowledge_chunks USING gin (to_tsvector('english', \"content\"))"
    ),
    "knowledge_chunks_embedding_minilm_hnsw": (
        "CREATE INDEX knowledge_chunks_embedding_minilm_hnsw ON knowledge_chunks"
        ' USING hnsw (("embedding"::vector(384)) vector_cosine_ops)'
        " WHERE \"embedding_model\" = 'all-minilm-l6-v2'"
    ),
    "knowledge_chunks_embedding_te3small_hnsw": (
        "CREATE INDEX knowledge_chunks_embedding_te3small_hnsw ON knowledge_chunks"
        ' USING hnsw (("embedding"::vector(1536)) vector_cosine_ops)'
        " WHERE \"embedding_model\" = 'text-embedding-3-small'"
    ),
    # capsules
    "time_capsules_status_unlock_at_idx": (
        'CREATE INDEX time_capsules_status_unlock_at_idx ON time_capsules ("status", "unlock_at")'
    ),
    # billing
    "subscriptions_user_status_idx": 'CREATE INDEX subscriptions_user_status_idx ON subscriptions ("user", "status")',
    "payments_user_created_at_idx": 'CREATE INDEX payments_user_created_at_idx ON payments ("user", "created_at")',
    # ai
    "ai_usage_user_created_at_idx": 'CREATE INDEX ai_usage_user_created_at_idx ON ai_usage ("user", "created_at")',
    # notifications
    "notifications_user_created_at_idx": (
        'CREATE INDEX notifications_user_created_at_idx ON notifications ("user", "created_at")'
    ),
    "notifications_user_unread_idx": (
        'CREATE INDEX notifications_user_unread_idx ON notifications ("user") WHERE "read_at" IS NULL'
    ),
    # compliance
    "compliance_requests_status_requested_at_idx": (
        'CREATE INDEX compliance_requests_status_requested_at_idx ON compliance_requests ("status", "requested_at")'
    ),
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
