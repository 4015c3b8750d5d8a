"""Who may read and write a channel: the one access policy of every read and write path
(REST, the socket gateway's subscribe, publish, history, presence and RPC, the coach,
file downloads), so no path decides it on its own.

Lounges (``lounge:<id>``):

- anyone may list and read public and paid lounges; private lounges are unlisted
  (:data:`PRIVATE_LISTED_TO`) but readable by id, so a shared link lets someone ask to join;
- reading messages needs an active membership (admins may read);
- posting needs an active membership that is not muted, in a lounge not archived;
- staff = the lounge's mentor, its moderators, and admins.

Threads (``thread:<id>``): only their owner, and nobody posts in an archived one.

A channel the caller may not know of is reported as not found.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from server.domain.accounts.services import Principal
from server.domain.tables.accounts import Role
from server.domain.tables.chat import SenderType
from server.domain.tables.lounges import (
    AIReplyPolicy,
    LoungeAccess,
    MembershipRole,
    MembershipStatus,
)
from server.foundation.clock import now
from server.foundation.database import fetch
from server.foundation.errors import Conflict, Forbidden, NotFound
from server.streams.channels import ChannelName

# Whether a listing may show lounge ``l``: not private, or the viewer is an active or invited
# member (``me``: their membership row), its mentor (``m``: the lounge's mentors row) or an
# admin. Placeholders: the viewer's user id (or None), whether the viewer is an admin.
# Shared by every route that lists lounges, so none forgets the private ones.
PRIVATE_LISTED_TO = "(l.access <> 'private' OR me.status IN ('active', 'invited') OR m.\"user\" = {} OR {})"

# What a permission check needs (every post and subscribe runs one): no counts.
_CONTEXT_SELECT = """
SELECT l.*, m."user" AS mentor_user_id,
       me.id AS my_membership_id, me.status AS my_status, me.role AS my_role, me.muted_until AS my_muted_until
FROM lounges l
JOIN mentors m ON m.id = l.mentor
LEFT JOIN lounge_memberships me ON me.lounge = l.id AND me."user" = {}
WHERE l.id = {}
"""


class LoungeRow(msgspec.Struct, frozen=True):
    """The lounge fields the permission checks, the lounge services and the coach read."""

    id: uuid.UUID
    channel: str
    title: str
    access: LoungeAccess
    capacity: int | None
    ai_reply_policy: AIReplyPolicy
    ai_paused: bool
    archived_at: datetime | None
    mentor_user_id: uuid.UUID


class MembershipRow(msgspec.Struct, frozen=True):
    """The caller's membership of a lounge, in whatever state."""

    id: uuid.UUID
    status: MembershipStatus
    role: MembershipRole
    muted_until: datetime | None


class ThreadRow(msgspec.Struct, frozen=True):
    """A coach thread, as its channel's permission check reads it."""

    id: uuid.UUID
    user: uuid.UUID
    archived_at: datetime | None


class LoungeContext(msgspec.Struct, frozen=True):
    """A lounge as seen by one caller: the lounge and the caller's membership (if any)."""

    lounge: LoungeRow
    membership: MembershipRow | None
    principal: Principal | None

    @property
    def is_admin(self) -> bool:
        return self.principal is not None and self.principal.role == Role.admin

    @property
    def is_mentor(self) -> bool:
        return self.principal is not None and self.principal.user_id == self.lounge.mentor_user_id

    @property
    def active_membership(self) -> MembershipRow | None:
        """The caller's membership if it is active, else None."""
        membership = self.membership
        return membership if membership is not None and membership.status == MembershipStatus.active else None

    @property
    def is_active_member(self) -> bool:
        return self.active_membership is not None

    @property
    def is_staff(self) -> bool:
        """Mentor, active moderator or admin."""
        membership = self.active_membership
        return (
            self.is_admin
            or self.is_mentor
            or (membership is not None and membership.role in (MembershipRole.mentor, MembershipRole.moderator))
        )

    @property
    def archived(self) -> bool:
        return self.lounge.archived_at is not None


async def lounge_context(principal: Principal | None, lounge_id: uuid.UUID, *, lock: bool = False) -> LoungeContext:
    """The lounge and the caller's membership, for permission checks (no member or unread
    counts: ``server.domain.lounges.services.get_lounge`` has them); 404 when it does not
    exist. ``lock`` locks the lounge row (capacity checks of concurrent joins)."""
    rows = await fetch(
        _CONTEXT_SELECT + (" FOR UPDATE OF l" if lock else ""), principal.user_id if principal else None, lounge_id
    )
    if not rows:
        raise NotFound("no such lounge", code="lounge_not_found")
    row = rows[0]
    membership = None
    if row["my_membership_id"] is not None:
        membership = msgspec.convert(
            {
                "id": row["my_membership_id"],
                "status": row["my_status"],
                "role": row["my_role"],
                "muted_until": row["my_muted_until"],
            },
            MembershipRow,
        )
    return LoungeContext(lounge=msgspec.convert(row, LoungeRow), membership=membership, principal=principal)


def check_can_read_messages(context: LoungeContext) -> None:
    if not (context.is_active_member or context.is_admin):
        raise Forbidden("join the lounge to read its messages", code="not_a_member")


def check_can_post(context: LoungeContext) -> None:
    membership = context.active_membership
    if membership is None:
        raise Forbidden("join the lounge to post", code="not_a_member")
    if context.archived:
        raise Conflict("the lounge is archived", code="lounge_archived")
    muted_until = membership.muted_until
    if muted_until is not None and muted_until > now():
        raise Forbidden(f"you are muted until {muted_until.isoformat()}", code="muted")


class ChannelAccess(msgspec.Struct, frozen=True):
    """What the caller may do in one channel, and as whom they post."""

    name: ChannelName
    principal: Principal
    lounge: LoungeContext | None = None
    thread: ThreadRow | None = None

    @property
    def sender_type(self) -> SenderType:
        if self.lounge is not None and self.lounge.is_mentor:
            return SenderType.mentor
        return SenderType.user

    @property
    def is_moderator(self) -> bool:
        """May delete other people's messages here."""
        return self.lounge.is_staff if self.lounge is not None else self.principal.role == Role.admin


async def channel_access(principal: Principal, channel: str, *, write: bool) -> ChannelAccess:
    """Resolve ``channel`` for the caller, checking read (and, with ``write``, post) rights."""
    name = ChannelName.parse(channel)
    if name is None:
        raise NotFound("no such channel", code="channel_not_found")
    if name.kind == "lounge":
        context = await lounge_context(principal, name.id)
        check_can_post(context) if write else check_can_read_messages(context)
        return ChannelAccess(name=name, principal=principal, lounge=context)
    rows = await fetch('SELECT id, "user", archived_at FROM chat_threads WHERE id = {}', name.id)
    thread = msgspec.convert(rows[0], ThreadRow) if rows else None
    if thread is None or thread.user != principal.user_id:
        raise NotFound("no such thread", code="thread_not_found")
    if write and thread.archived_at is not None:
        raise Conflict("the thread is archived", code="thread_archived")
    return ChannelAccess(name=name, principal=principal, thread=thread)
