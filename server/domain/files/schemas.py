"""Response bodies of the file endpoints (uploads are raw or multipart bodies, not JSON)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import msgspec


class UploadPurpose(enum.StrEnum):
    """What a client may upload a file for (exports are made by the server)."""

    attachment = "attachment"
    knowledge = "knowledge"
    avatar = "avatar"
    capsule = "capsule"


class FileOut(msgspec.Struct):
    """A stored file. ``content_type`` was read from the content; ``sha256`` is the hex
    digest of the stored bytes. ``download_url`` is a presigned link to the bytes,
    valid until ``download_expires_at`` (ask again for a fresh one); it is null while
    the file is not ``ready``."""

    id: uuid.UUID
    filename: str
    content_type: str
    size: int
    sha256: str
    purpose: str
    status: str
    owner_id: uuid.UUID | None
    lounge_id: uuid.UUID | None
    created_at: datetime
    download_url: str | None = None
    download_expires_at: datetime | None = None


class FilePage(msgspec.Struct):
    """Your files, newest first; pass ``next_cursor`` as ``cursor`` for the next page (null at the end)."""

    items: list[FileOut]
    next_cursor: str | None
