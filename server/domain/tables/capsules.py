"""Time capsule tables: sealed messages to one's future self."""

from __future__ import annotations

import enum

from piccolo.columns import (
    UUID,
    ForeignKey,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.files import File
from server.foundation.db_columns import in_choices


class CapsuleStatus(enum.StrEnum):
    """Whether a capsule can be read yet."""

    sealed = "sealed"
    unlocked = "unlocked"


class TimeCapsule(Table, tablename="time_capsules"):
    """A message sealed until ``unlock_at``, then unlocked and notified."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade, index=True)
    title = Varchar(length=200)
    content = Text()
    unlock_at = Timestamptz(default=None)
    status = Varchar(length=16, default=CapsuleStatus.sealed, choices=CapsuleStatus)
    unlocked_at = Timestamptz(null=True, default=None)
    notified_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()

    time_capsules_status_check = Check(in_choices("status", CapsuleStatus))


class CapsuleAttachment(Table, tablename="capsule_attachments"):
    """Links a file to the time capsule it is sealed in."""

    id = UUID(primary_key=True)
    capsule = ForeignKey(TimeCapsule, null=False, on_delete=OnDelete.cascade)
    file = ForeignKey(File, null=False, on_delete=OnDelete.cascade, index=True)
    created_at = Timestamptz()

    capsule_attachments_capsule_file_key = Unique([capsule, file])
