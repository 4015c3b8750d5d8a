"""Lounge actions: create/update/archive, join/leave, invitations, requests, moderation.

Who may do what (checked here, so REST and the socket gateway share it; who may
read, post in and see a lounge in a listing is the access policy's,
:mod:`server.domain.access.policy`):

- the persona prompt (``ai_persona``) is the mentor's work: only the lounge's
  mentor and admins see it, everyone else gets ``null``;
- joining needs a verified email; public: at once (capacity permitting);
  private: by invitation, or a request the staff approves; paid: the billing
  entitlement;
- staff = the lounge's mentor, its moderators, and admins: they invite, approve,
  remove, mute; only the mentor and admins promote moderators and edit the lounge;
- archived lounges are read-only.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from server.domain.access.policy import (
    PRIVATE_LISTED_TO,
    LoungeContext,
    check_can_read_messages,
    lounge_context,
)
from server.domain.accounts.services import Principal
from server.domain.billing.entitlements import CreateLounge, JoinPaidLounge, require
from server.domain.lounges.schemas import (
    JoinResult,
    LoungeCreate,
    LoungeOut,
    LoungePage,
    LoungeUpdate,
    MemberOut,
    MemberPage,
    MemberUpdate,
)
from server.domain.notifications.services import NotificationKind, notify_on_commit
from server.domain.tables.accounts import Role, User
from server.domain.tables.lounges import Lounge, LoungeAccess, LoungeMembership, MembershipRole, MembershipStatus
from server.domain.tables.mentors import Category, Mentor, MentorStatus
from server.foundation.clock import now
from server.foundation.control import ControlEvent, publish_control
from server.foundation.errors import Conflict, Forbidden, NotFound, ValidationFailed
from server.foundation.pagination import keyset_page, like_pattern
from server.foundation.state import AppState
from server.foundation.unit_of_work import unit_of_work
from server.streams.channels import create_channel, delete_channel, has_history

_LOUNGE_SELECT = """
SELECT l.*, m."user" AS mentor_user_id,
       (SELECT count(*) FROM lounge_memberships a WHERE a.lounge = l.id AND a.status = 'active') AS member_count,
       me.status AS my_status, me.role AS my_role,
       CASE WHEN me.status = 'active' THEN (
           SELECT count(*) FROM messages msg
           WHERE msg.channel = l.channel AND msg."offset" > me.last_read_offset
             AND msg.deleted_at IS NULL AND msg.sender IS DISTINCT FROM me."user"
       ) END AS unread
FROM lounges l
JOIN mentors m ON m.id = l.mentor
LEFT JOIN lounge_memberships me ON me.lounge = l.id AND me."user" = {}
"""


def lounge_out(row: dict[str, Any], viewer: Principal | None) -> LoungeOut:
    """The lounge as ``viewer`` may see it: the persona prompt only for its mentor and admins."""
    sees_persona = viewer is not None and (viewer.role == Role.admin or viewer.user_id == row["mentor_user_id"])
    return LoungeOut(
        id=row["id"],
        channel=row["channel"],
        title=row["title"],
        description=row["description"],
        category_id=row["category"],
        access=row["access"],
        capacity=row["capacity"],
        ai_persona=row["ai_persona"] if sees_persona else None,
        ai_reply_policy=row["ai_reply_policy"],
        ai_paused=row["ai_paused"],
        mentor_id=row["mentor"],
        mentor_user_id=row["mentor_user_id"],
        member_count=row["member_count"],
        archived=row["archived_at"] is not None,
        created_at=row["created_at"],
        my_status=row.get("my_status"),
        my_role=row.get("my_role"),
        unread=row.get("unread"),
    )


async def _load(lounge_id: uuid.UUID, viewer: uuid.UUID | None) -> dict[str, Any] | None:
    """The lounge with its member count and the viewer's status and unread count."""
    rows = await Lounge.raw(_LOUNGE_SELECT + " WHERE l.id = {}", viewer, lounge_id)
    return rows[0] if rows else None


def _check_staff(context: LoungeContext) -> None:
    if not context.is_staff:
        raise Forbidden("only the lounge's mentor, moderators and admins may do this", code="not_lounge_staff")


def _check_owner(context: LoungeContext) -> None:
    if not (context.is_mentor or context.is_admin):
        raise Forbidden("only the lounge's mentor and admins may do this", code="not_lounge_owner")


async def _check_category(category_id: uuid.UUID | None) -> None:
    if category_id is not None and not await Category.exists().where(Category.id == category_id):
        raise ValidationFailed("no such category", code="category_not_found")


# -- lounges -------------------------------------------------------------------------------


async def do_create_lounge(state: AppState, principal: Principal, data: LoungeCreate) -> LoungeOut:
    if principal.role == Role.admin and data.mentor_id is not None:
        mentor = await Mentor.select(Mentor.id, Mentor.user, Mentor.status).where(Mentor.id == data.mentor_id).first()
    else:
        mentor = (
            await Mentor.select(Mentor.id, Mentor.user, Mentor.status).where(Mentor.user == principal.user_id).first()
        )
    if mentor is None or mentor["status"] != MentorStatus.approved:
        raise Forbidden("only approved mentors run lounges", code="not_an_approved_mentor")
    await _check_category(data.category_id)
    lounge_id = uuid.uuid4()
    channel = f"lounge:{lounge_id}"
    async with unit_of_work(state.engine):
        if principal.role != Role.admin:  # the mentor's plan caps their open lounges (admins are not capped)
            await require(state, mentor["user"], CreateLounge())
        await create_channel(channel)
        await Lounge.insert(
            Lounge(
                id=lounge_id,
                mentor=mentor["id"],
                category=data.category_id,
                title=data.title.strip(),
                description=data.description,
                access=data.access,
                capacity=data.capacity,
                ai_persona=data.ai_persona,
                ai_reply_policy=data.ai_reply_policy,
                channel=channel,
            )
        )
        await LoungeMembership.insert(
            LoungeMembership(
                lounge=lounge_id,
                user=mentor["user"],
                role=MembershipRole.mentor,
                status=MembershipStatus.active,
                joined_at=now(),
            )
        )
    row = await _load(lounge_id, principal.user_id)
    assert row is not None  # inserted by the transaction above
    return lounge_out(row, principal)


async def list_lounges(
    principal: Principal | None,
    *,
    category: uuid.UUID | None,
    mentor: uuid.UUID | None,
    access: str | None,
    q: str | None,
    mine: bool,
    include_archived: bool,
    limit: int,
    cursor: str | None = None,
) -> LoungePage:
    """Lounges newest first, filtered; private ones only for those
    :data:`~server.domain.access.policy.PRIVATE_LISTED_TO` names."""
    viewer = principal.user_id if principal else None
    where = [PRIVATE_LISTED_TO]
    args: list[Any] = [viewer, bool(principal and principal.role == Role.admin)]
    if not include_archived:
        where.append("l.archived_at IS NULL")
    if category is not None:
        where.append("l.category = {}")
        args.append(category)
    if mentor is not None:
        where.append("l.mentor = {}")
        args.append(mentor)
    if access is not None:
        where.append("l.access = {}")
        args.append(access)
    if q:
        where.append("(l.title ILIKE {} OR l.description ILIKE {})")
        pattern = like_pattern(q)
        args += [pattern, pattern]
    if mine:
        where.append("me.status = 'active'")
    rows, next_cursor = await keyset_page(
        _LOUNGE_SELECT + " WHERE " + " AND ".join(where),
        [viewer, *args],
        moment="l.created_at",
        row_id="l.id",
        cursor=cursor,
        limit=limit,
    )
    return LoungePage(items=[lounge_out(r, principal) for r in rows], next_cursor=next_cursor)


async def get_lounge(principal: Principal | None, lounge_id: uuid.UUID) -> LoungeOut:
    row = await _load(lounge_id, principal.user_id if principal else None)
    if row is None:
        raise NotFound("no such lounge", code="lounge_not_found")
    return lounge_out(row, principal)


async def do_update_lounge(principal: Principal, lounge_id: uuid.UUID, data: LoungeUpdate) -> LoungeOut:
    context = await lounge_context(principal, lounge_id)
    _check_owner(context)
    values: dict[Any, Any] = {}
    for field in msgspec.structs.fields(data):
        value = getattr(data, field.name)
        if value is msgspec.UNSET:
            continue
        if field.name == "category_id":
            await _check_category(value)
            values[Lounge.category] = value
        else:
            values[getattr(Lounge, field.name)] = value.strip() if field.name == "title" else value
    if values:
        await Lounge.update(values).where(Lounge.id == lounge_id)
    return await get_lounge(principal, lounge_id)


async def do_delete_lounge(state: AppState, principal: Principal, lounge_id: uuid.UUID) -> str:
    """Archive a lounge that has history; delete one that never had a message."""
    context = await lounge_context(principal, lounge_id)
    _check_owner(context)
    channel = context.lounge.channel
    async with unit_of_work(state.engine):
        if await has_history(channel):
            await Lounge.update({Lounge.archived_at: now()}).where(Lounge.id == lounge_id, Lounge.archived_at.is_null())
            return "archived"
        await Lounge.delete().where(Lounge.id == lounge_id)
        await delete_channel(channel)
    return "deleted"


# -- membership ----------------------------------------------------------------------------


async def _active_count(lounge_id: uuid.UUID) -> int:
    return await LoungeMembership.count().where(
        LoungeMembership.lounge == lounge_id, LoungeMembership.status == MembershipStatus.active
    )


async def _activate(context: LoungeContext, user_id: uuid.UUID) -> None:
    capacity = context.lounge.capacity
    if capacity is not None and await _active_count(context.lounge.id) >= capacity:
        raise Conflict("the lounge is full", code="lounge_full")
    await LoungeMembership.raw(
        """
        INSERT INTO lounge_memberships (id, lounge, "user", role, status, joined_at, last_read_offset, created_at, updated_at)
        VALUES ({}, {}, {}, 'member', 'active', now(), 0, now(), now())
        ON CONFLICT (lounge, "user") DO UPDATE SET status = 'active', joined_at = now(), updated_at = now()
        """,
        uuid.uuid4(),
        context.lounge.id,
        user_id,
    )


async def do_join(state: AppState, principal: Principal, lounge_id: uuid.UUID) -> JoinResult:
    async with unit_of_work(state.engine):
        # Lock the lounge row: capacity checks of concurrent joins happen one at a time.
        context = await lounge_context(principal, lounge_id, lock=True)
        if context.archived:
            raise Conflict("the lounge is archived", code="lounge_archived")
        status = context.membership.status if context.membership else None
        if status == MembershipStatus.active:
            outcome = "active"
        elif status == MembershipStatus.removed:
            raise Forbidden("you were removed from this lounge", code="removed_from_lounge")
        elif context.lounge.access == LoungeAccess.private and status != MembershipStatus.invited:
            if status != MembershipStatus.requested:
                await LoungeMembership.insert(
                    LoungeMembership(
                        lounge=lounge_id,
                        user=principal.user_id,
                        role=MembershipRole.member,
                        status=MembershipStatus.requested,
                    )
                )
            outcome = "requested"
        else:
            if context.lounge.access == LoungeAccess.paid and not context.is_admin:
                await require(state, principal.user_id, JoinPaidLounge())
            await _activate(context, principal.user_id)
            outcome = "active"
    return JoinResult(status=outcome, lounge=await get_lounge(principal, lounge_id))


async def do_leave(state: AppState, principal: Principal, lounge_id: uuid.UUID) -> None:
    context = await lounge_context(principal, lounge_id)
    if context.is_mentor:
        raise Conflict("the mentor cannot leave their own lounge; archive it instead", code="mentor_cannot_leave")
    if context.membership is None or context.membership.status == MembershipStatus.removed:
        raise NotFound("you are not a member", code="not_a_member")
    await LoungeMembership.delete().where(LoungeMembership.id == context.membership.id)
    await _announce_access_lost(state, principal.user_id, context.lounge.channel, "left")


async def list_members(
    principal: Principal, lounge_id: uuid.UUID, *, status: str, limit: int, cursor: str | None = None
) -> MemberPage:
    """Memberships in ``status``, in the order they were made (active ones for members, the rest for staff)."""
    context = await lounge_context(principal, lounge_id)
    if status != MembershipStatus.active:
        _check_staff(context)
    else:
        check_can_read_messages(context)
    rows, next_cursor = await keyset_page(
        """SELECT ms."user", u.full_name, ms.role, ms.status, ms.muted_until, ms.joined_at, ms.last_read_offset,
                  ms.created_at, ms.id
           FROM lounge_memberships ms JOIN users u ON u.id = ms."user"
           WHERE ms.lounge = {} AND ms.status = {}""",
        [lounge_id, str(status)],
        moment="ms.created_at",
        row_id="ms.id",
        cursor=cursor,
        limit=limit,
        descending=False,
    )
    return MemberPage(items=[_member_out(r) for r in rows], next_cursor=next_cursor)


async def do_invite(state: AppState, principal: Principal, lounge_id: uuid.UUID, user_id: uuid.UUID) -> MemberOut:
    """Invite a user (or approve their pending request, which is the same act)."""
    async with unit_of_work(state.engine):
        context = await lounge_context(principal, lounge_id, lock=True)
        _check_staff(context)
        if context.archived:
            raise Conflict("the lounge is archived", code="lounge_archived")
        invitee = await User.select(User.id, User.is_active).where(User.id == user_id).first()
        if invitee is None or not invitee["is_active"]:
            raise NotFound("no such user", code="user_not_found")
        existing = (
            await LoungeMembership.select()
            .where(LoungeMembership.lounge == lounge_id, LoungeMembership.user == user_id)
            .first()
        )
        if existing and existing["status"] == MembershipStatus.active:
            raise Conflict("already a member", code="already_a_member")
        if existing and existing["status"] == MembershipStatus.requested:
            await _activate(context, user_id)
            kind, title = "lounge.request_approved", f"You joined {context.lounge.title}"
        else:
            if existing:
                await LoungeMembership.update({LoungeMembership.status: MembershipStatus.invited}).where(
                    LoungeMembership.id == existing["id"]
                )
            else:
                await LoungeMembership.insert(
                    LoungeMembership(
                        lounge=lounge_id, user=user_id, role=MembershipRole.member, status=MembershipStatus.invited
                    )
                )
            kind, title = "lounge.invite", f"You are invited to {context.lounge.title}"
        await notify_on_commit(
            state,
            user_id,
            kind=kind,
            title=title,
            body="",
            data={"lounge_id": str(lounge_id), "by": str(principal.user_id)},
        )
    return await _member(lounge_id, user_id)


async def do_update_member(
    state: AppState, principal: Principal, lounge_id: uuid.UUID, user_id: uuid.UUID, data: MemberUpdate
) -> MemberOut:
    context = await lounge_context(principal, lounge_id)
    target = (
        await LoungeMembership.select()
        .where(
            LoungeMembership.lounge == lounge_id,
            LoungeMembership.user == user_id,
            LoungeMembership.status == MembershipStatus.active,
        )
        .first()
    )
    if target is None:
        raise NotFound("no such member", code="member_not_found")
    if target["role"] == MembershipRole.mentor:
        raise Forbidden("the mentor cannot be moderated", code="cannot_moderate_mentor")
    values: dict[Any, Any] = {}
    if data.role is not msgspec.UNSET:
        _check_owner(context)
        if data.role == MembershipRole.mentor:
            raise ValidationFailed("a lounge has exactly one mentor", code="invalid_role")
        values[LoungeMembership.role] = data.role
    if data.muted_until is not msgspec.UNSET:
        _check_staff(context)
        if target["role"] == MembershipRole.moderator and not (context.is_mentor or context.is_admin):
            raise Forbidden("moderators cannot mute moderators", code="not_lounge_owner")
        values[LoungeMembership.muted_until] = data.muted_until
    if values:
        await LoungeMembership.update(values).where(LoungeMembership.id == target["id"])
    return await _member(lounge_id, user_id)


async def do_remove_member(state: AppState, principal: Principal, lounge_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Remove a member (or decline a request / withdraw an invitation); access ends at once."""
    context = await lounge_context(principal, lounge_id)
    _check_staff(context)
    target = (
        await LoungeMembership.select()
        .where(LoungeMembership.lounge == lounge_id, LoungeMembership.user == user_id)
        .first()
    )
    if target is None or target["status"] == MembershipStatus.removed:
        raise NotFound("no such member", code="member_not_found")
    if target["role"] == MembershipRole.mentor:
        raise Forbidden("the mentor cannot be removed", code="cannot_moderate_mentor")
    if target["role"] == MembershipRole.moderator and not (context.is_mentor or context.is_admin):
        raise Forbidden("moderators cannot remove moderators", code="not_lounge_owner")
    async with unit_of_work(state.engine):
        await LoungeMembership.update(
            {LoungeMembership.status: MembershipStatus.removed, LoungeMembership.role: MembershipRole.member}
        ).where(LoungeMembership.id == target["id"])
        if target["status"] == MembershipStatus.requested:  # a declined request: tell the asker
            await notify_on_commit(
                state,
                user_id,
                kind=NotificationKind.lounge_request_declined,
                title=f"Your request to join {context.lounge.title} was declined",
                body="",
                data={"lounge_id": str(lounge_id), "by": str(principal.user_id)},
            )
    await _announce_access_lost(state, user_id, context.lounge.channel, "removed")


def _member_query() -> Any:
    return LoungeMembership.select(
        LoungeMembership.user,
        LoungeMembership.user.full_name.as_alias("full_name"),
        LoungeMembership.role,
        LoungeMembership.status,
        LoungeMembership.muted_until,
        LoungeMembership.joined_at,
        LoungeMembership.last_read_offset,
    )


def _member_out(row: dict[str, Any]) -> MemberOut:
    return MemberOut(
        user_id=row["user"],
        full_name=row["full_name"],
        role=row["role"],
        status=row["status"],
        muted_until=row["muted_until"],
        joined_at=row["joined_at"],
        last_read_offset=row["last_read_offset"],
    )


async def _member(lounge_id: uuid.UUID, user_id: uuid.UUID) -> MemberOut:
    row = await _member_query().where(LoungeMembership.lounge == lounge_id, LoungeMembership.user == user_id).first()
    return _member_out(row)


async def _announce_access_lost(state: AppState, user_id: uuid.UUID, channel: str, reason: str) -> None:
    """Tell every node to unsubscribe the user's sockets from the channel (after commit)."""
    await publish_control(
        state.realtime_redis,
        state.settings.redis_prefix,
        ControlEvent(kind="channel.access_lost", user_id=user_id, channel=channel, reason=reason),
    )
