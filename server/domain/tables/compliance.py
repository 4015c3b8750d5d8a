"""Compliance tables: GDPR data export and erasure requests."""

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
from piccolo.constraints import Check
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.files import File
from server.foundation.db_columns import in_choices


class ComplianceKind(enum.StrEnum):
    """What the user asked for."""

    export = "export"
    erasure = "erasure"


class ComplianceStatus(enum.StrEnum):
    """Processing state of a compliance request."""

    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"


class ComplianceRequest(Table, tablename="compliance_requests"):
    """A user's request to export or erase their data; survives the erasure itself."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=True, on_delete=OnDelete.set_null, index=True)
    kind = Varchar(length=16, default=None, choices=ComplianceKind)
    status = Varchar(length=16, default=ComplianceStatus.pending, choices=ComplianceStatus)
    result_file = ForeignKey(File, null=True, on_delete=OnDelete.set_null, index=True)
    error = Text(null=True, default=None)
    requested_at = Timestamptz()
    completed_at = Timestamptz(null=True, default=None)

    compliance_requests_kind_check = Check(in_choices("kind", ComplianceKind))
    compliance_requests_status_check = Check(in_choices("status", ComplianceStatus))
