"""Lounge tables: mentor-run group rooms and their memberships."""

from __future__ import annotations

import enum

from piccolo.columns import (
    UUID,
    BigInt,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.domain.tables.mentors import Category, Mentor
from server.foundation.db_columns import in_choices


class LoungeAccess(enum.StrEnum):
    """Who may join a lounge."""

    public = "public"
    private = "private"
    paid = "paid"


class AIReplyPolicy(enum.StrEnum):
    """When the lounge's AI persona answers."""

    off = "off"
    mention = "mention"
    always = "always"


class MembershipRole(enum.StrEnum):
    """A member's role within a lounge."""

    member = "member"
    moderator = "moderator"
    mentor = "mentor"


class MembershipStatus(enum.StrEnum):
    """The state of a lounge membership."""

    active = "active"
    invited = "invited"
    requested = "requested"
    removed = "removed"


class Lounge(Table, tablename="lounges"):
    """A mentor's group room with an AI persona and reply policy."""

    id = UUID(primary_key=True)
    mentor = ForeignKey(Mentor, null=False, on_delete=OnDelete.restrict, index=True)
    category = ForeignKey(Category, null=True, on_delete=OnDelete.set_null, index=True)
    title = Varchar(length=120)
    description = Text()
    access = Varchar(length=16, default=LoungeAccess.public, choices=LoungeAccess)
    capacity = Integer(null=True, default=None)
    ai_persona = Text()
    ai_reply_policy = Varchar(length=16, default=AIReplyPolicy.mention, choices=AIReplyPolicy)
    ai_paused = Boolean(default=False)
    channel = Varchar(length=100, unique=True)
    archived_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)

    lounges_access_check = Check(in_choices("access", LoungeAccess))
    lounges_ai_reply_policy_check = Check(in_choices("ai_reply_policy", AIReplyPolicy))
    lounges_capacity_check = Check('"capacity" > 0')


class LoungeMembership(Table, tablename="lounge_memberships"):
    """A user's membership of a lounge, with their read position in its channel."""

    id = UUID(primary_key=True)
    lounge = ForeignKey(Lounge, null=False, on_delete=OnDelete.cascade)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade)
    role = Varchar(length=16, default=MembershipRole.member, choices=MembershipRole)
    status = Varchar(length=16, default=MembershipStatus.active, choices=MembershipStatus)
    muted_until = Timestamptz(null=True, default=None)
    last_read_offset = BigInt(default=0)
    joined_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)

    lounge_memberships_role_check = Check(in_choices("role", MembershipRole))
    lounge_memberships_status_check = Check(in_choices("status", MembershipStatus))
    lounge_memberships_lounge_user_key = Unique([lounge, user])
