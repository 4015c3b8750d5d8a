"""AI tables: the usage ledger of every model call."""

from __future__ import annotations

import enum

from piccolo.columns import (
    UUID,
    ForeignKey,
    Integer,
    OnDelete,
    Timestamptz,
    Varchar,
)
from piccolo.constraints import Check
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.chat import ChatThread, Message
from server.domain.tables.lounges import Lounge
from server.foundation.db_columns import in_choices


class AIOutcome(enum.StrEnum):
    """How a model call ended."""

    complete = "complete"
    cancelled = "cancelled"
    failed = "failed"


class AIUsage(Table, tablename="ai_usage"):
    """Tokens used by one AI reply, kept for quotas and cost accounting."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=True, on_delete=OnDelete.set_null)
    lounge = ForeignKey(Lounge, null=True, on_delete=OnDelete.set_null, index=True)
    thread = ForeignKey(ChatThread, null=True, on_delete=OnDelete.set_null, index=True)
    message = ForeignKey(Message, null=True, on_delete=OnDelete.set_null, index=True)
    provider = Varchar(length=50)
    model = Varchar(length=100)
    input_tokens = Integer(default=0)
    output_tokens = Integer(default=0)
    outcome = Varchar(length=16, default=None, choices=AIOutcome)
    created_at = Timestamptz()

    ai_usage_outcome_check = Check(in_choices("outcome", AIOutcome))
