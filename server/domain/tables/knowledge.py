"""Knowledge tables: text chunks of notes and files with their embeddings."""

from __future__ import annotations

import enum

from piccolo.columns import (
    UUID,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.constraints import Check
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.files import File
from server.domain.tables.lounges import Lounge
from server.domain.tables.notes import Note
from server.foundation.db_columns import Vector, in_choices


class KnowledgeSourceType(enum.StrEnum):
    """What a knowledge chunk was cut from."""

    note = "note"
    file = "file"


class EmbeddingModel(enum.StrEnum):
    """Embedding models that have HNSW indexes (see the per-source-type index migration)."""

    all_minilm_l6_v2 = "all-minilm-l6-v2"
    text_embedding_3_small = "text-embedding-3-small"
    # Lexical fallback (feature hashing), not a semantic model: see server/domain/knowledge/embeddings.py.
    hashing_384 = "hashing-384"


EMBEDDING_DIMENSIONS: dict[EmbeddingModel, int] = {
    EmbeddingModel.all_minilm_l6_v2: 384,
    EmbeddingModel.text_embedding_3_small: 1536,
    EmbeddingModel.hashing_384: 384,
}

# The models' short names in their index names (see the per-source-type index migration).
_INDEX_NAMES: dict[EmbeddingModel, str] = {
    EmbeddingModel.all_minilm_l6_v2: "minilm",
    EmbeddingModel.text_embedding_3_small: "te3small",
    EmbeddingModel.hashing_384: "hashing",
}


def hnsw_index(model: EmbeddingModel, source_type: KnowledgeSourceType) -> str:
    """The partial HNSW index over ``model``'s chunks of ``source_type``."""
    return f"knowledge_chunks_{_INDEX_NAMES[model]}_{source_type.value}_hnsw"


class KnowledgeChunk(Table, tablename="knowledge_chunks"):
    """One embedded chunk of a note or a file, for one embedding model."""

    id = UUID(primary_key=True)
    source_type = Varchar(length=16, default=None, choices=KnowledgeSourceType)
    note = ForeignKey(Note, null=True, on_delete=OnDelete.cascade)
    file = ForeignKey(File, null=True, on_delete=OnDelete.cascade)
    owner = ForeignKey(User, null=True, on_delete=OnDelete.cascade, index=True)
    lounge = ForeignKey(Lounge, null=True, on_delete=OnDelete.cascade, index=True)
    chunk_index = Integer()
    content = Text()
    content_hash = Varchar(length=64)
    embedding = Vector()
    embedding_model = Varchar(length=100)
    embedding_dim = Integer()
    created_at = Timestamptz()

    knowledge_chunks_source_type_check = Check(in_choices("source_type", KnowledgeSourceType))
    knowledge_chunks_source_check = Check(
        '("source_type" = \'note\' AND "note" IS NOT NULL AND "file" IS NULL)'
        ' OR ("source_type" = \'file\' AND "file" IS NOT NULL AND "note" IS NULL)'
    )
    knowledge_chunks_embedding_dim_check = Check('"embedding_dim" = vector_dims("embedding")')
    knowledge_chunks_chunk_index_check = Check('"chunk_index" >= 0')
