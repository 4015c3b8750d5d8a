"""File tables: metadata of objects kept in object storage."""

from __future__ import annotations

import enum

from piccolo.columns import (
    UUID,
    BigInt,
    ForeignKey,
    OnDelete,
    Timestamptz,
    Varchar,
)
from piccolo.constraints import Check
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.lounges import Lounge
from server.foundation.db_columns import in_choices


class FilePurpose(enum.StrEnum):
    """What a file is used for."""

    attachment = "attachment"
    knowledge = "knowledge"
    avatar = "avatar"
    capsule = "capsule"
    export = "export"


class FileStatus(enum.StrEnum):
    """Upload lifecycle of a file."""

    pending = "pending"
    ready = "ready"
    deleted = "deleted"


class File(Table, tablename="files"):
    """An object in storage: who uploaded it, what it is and where it lives."""

    id = UUID(primary_key=True)
    owner = ForeignKey(User, null=True, on_delete=OnDelete.set_null)
    bucket = Varchar(length=63)
    object_key = Varchar(length=512, unique=True)
    filename = Varchar(length=255)
    content_type = Varchar(length=127)
    size = BigInt(default=0)
    sha256 = Varchar(length=64)
    purpose = Varchar(length=16, default=None, choices=FilePurpose)
    lounge = ForeignKey(Lounge, null=True, on_delete=OnDelete.set_null, index=True)
    status = Varchar(length=16, default=FileStatus.pending, choices=FileStatus)
    created_at = Timestamptz()

    files_size_check = Check('"size" >= 0')
    files_purpose_check = Check(in_choices("purpose", FilePurpose))
    files_status_check = Check(in_choices("status", FileStatus))
