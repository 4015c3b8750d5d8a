"""Request and response bodies of the lounge endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from server.domain.tables.lounges import AIReplyPolicy, LoungeAccess, MembershipRole
from server.foundation.types import Text

Title = Annotated[Text, msgspec.Meta(min_length=1, max_length=120)]
Description = Annotated[Text, msgspec.Meta(max_length=5000)]
Persona = Annotated[Text, msgspec.Meta(max_length=8000)]
Capacity = Annotated[int, msgspec.Meta(ge=2, le=100_000)]


class LoungeCreate(msgspec.Struct, forbid_unknown_fields=True):
    title: Title
    description: Description = ""
    category_id: uuid.UUID | None = None
    access: LoungeAccess = LoungeAccess.public
    capacity: Capacity | None = None
    ai_persona: Persona = ""
    ai_reply_policy: AIReplyPolicy = AIReplyPolicy.mention
    # Admins create lounges on behalf of a mentor; mentors always create their own.
    mentor_id: uuid.UUID | None = None


class LoungeUpdate(msgspec.Struct, forbid_unknown_fields=True):
    title: Title | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    category_id: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    access: LoungeAccess | msgspec.UnsetType = msgspec.UNSET
    capacity: Capacity | msgspec.UnsetType | None = msgspec.UNSET
    ai_persona: Persona | msgspec.UnsetType = msgspec.UNSET
    ai_reply_policy: AIReplyPolicy | msgspec.UnsetType = msgspec.UNSET
    ai_paused: bool | msgspec.UnsetType = msgspec.UNSET


class LoungeOut(msgspec.Struct):
    id: uuid.UUID
    channel: str
    title: str
    description: str
    category_id: uuid.UUID | None
    access: str
    capacity: int | None
    # The coach's instructions: only the lounge's mentor and admins see them (null for others).
    ai_persona: str | None
    ai_reply_policy: str
    ai_paused: bool
    mentor_id: uuid.UUID
    mentor_user_id: uuid.UUID
    member_count: int
    archived: bool
    created_at: datetime
    # The caller's own standing, when signed in: None, or active/invited/requested/removed.
    my_status: str | None = None
    my_role: str | None = None
    unread: int | None = None


class LoungePage(msgspec.Struct):
    """One page of lounges, newest first; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[LoungeOut]
    next_cursor: str | None


class JoinResult(msgspec.Struct):
    """``active`` (joined) or ``requested`` (a private lounge's mentor must approve)."""

    status: str
    lounge: LoungeOut


class MemberOut(msgspec.Struct):
    user_id: uuid.UUID
    full_name: str
    role: str
    status: str
    muted_until: datetime | None
    joined_at: datetime | None
    last_read_offset: int


class MemberPage(msgspec.Struct):
    """One page of memberships, oldest first; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[MemberOut]
    next_cursor: str | None


class InviteRequest(msgspec.Struct, forbid_unknown_fields=True):
    user_id: uuid.UUID


class MemberUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Moderation: promote/demote (``role``) and mute until a time (``null`` unmutes)."""

    role: MembershipRole | msgspec.UnsetType = msgspec.UNSET
    muted_until: datetime | msgspec.UnsetType | None = msgspec.UNSET
