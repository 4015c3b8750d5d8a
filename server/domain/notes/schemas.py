"""Request and response bodies of the notes endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from server.foundation.types import Text

NOTE_MAX_CHARS = 100_000
MAX_TAGS = 20

Title = Annotated[Text, msgspec.Meta(max_length=200)]
Content = Annotated[Text, msgspec.Meta(max_length=NOTE_MAX_CHARS)]
# Letters, digits, "_", "-" and inner spaces; stored trimmed and lower-cased.
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=50, pattern=r"^\s*[\w][\w\- ]*\s*$")]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=MAX_TAGS)]


class NoteCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A note needs a title or some content (or both)."""

    title: Title = ""
    content: Content = ""
    tags: Tags = msgspec.field(default_factory=list)
    pinned: bool = False


class NoteUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Fields to change; absent fields stay as they are."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    content: Content | msgspec.UnsetType = msgspec.UNSET
    tags: Tags | msgspec.UnsetType = msgspec.UNSET
    pinned: bool | msgspec.UnsetType = msgspec.UNSET


class PinRequest(msgspec.Struct, forbid_unknown_fields=True):
    pinned: bool


class NoteOut(msgspec.Struct):
    id: uuid.UUID
    title: str
    content: str
    tags: list[str]
    pinned: bool
    created_at: datetime
    updated_at: datetime


class NotePage(msgspec.Struct):
    """Pinned notes first, then the most recently updated; pass ``next_cursor`` as ``cursor``
    for the next page (null at the end)."""

    items: list[NoteOut]
    next_cursor: str | None


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[Text, msgspec.Meta(min_length=1, max_length=500)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10


class SearchHit(msgspec.Struct):
    """One found note.

    ``score``: Reciprocal Rank Fusion of the two rankings, sum of 1/(60 + rank).
    ``vector_rank`` / ``text_rank``: the note's 1-based rank in the vector
    (nearest chunk) and the full-text ranking, null where it was not found.
    ``title_highlight`` and ``highlights`` (up to three fragments of the content)
    are **HTML**: every character of the note is escaped, and the only markup is
    ``<mark>…</mark>`` around the words that match the query.
    """

    note: NoteOut
    score: float
    vector_rank: int | None
    text_rank: int | None
    title_highlight: str
    highlights: list[str]


class SearchResults(msgspec.Struct):
    """``embedding_model``: the model of the vector ranking (null when it was
    unavailable and only full-text search ran); ``semantic`` is false for the
    lexical ``hashing-384`` fallback and when no vector ranking ran. The best ``limit``
    hits are the whole answer: ``next_cursor`` is always null."""

    items: list[SearchHit]
    next_cursor: str | None
    embedding_model: str | None
    semantic: bool
