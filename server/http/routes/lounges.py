"""HTTP transport for ``/api/v1/lounges``: lounges, membership, moderation, messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from server.domain.access.policy import channel_access
from server.domain.accounts.services import Principal
from server.domain.chat import messages
from server.domain.chat.schemas import MessageEdit, MessageIn, MessageOut, MessagePage, ReactionIn, ReadIn, ReadOut
from server.domain.lounges import services
from server.domain.lounges.schemas import (
    InviteRequest,
    JoinResult,
    LoungeCreate,
    LoungeOut,
    LoungePage,
    LoungeUpdate,
    MemberOut,
    MemberPage,
    MemberUpdate,
)
from server.domain.tables.lounges import LoungeAccess, MembershipStatus
from server.foundation.state import AppState
from server.http.channel_messages import Emoji, HistoryLimit, HistoryOffset, MessageOffset, posted
from server.http.params import Cursor, text_query
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]


def _channel(id: uuid.UUID) -> str:
    return f"lounge:{id}"


class LoungeController(Controller):
    """Lounges and everything in them."""

    path = "/lounges"
    tags = ["lounges"]
    security = [{"BearerToken": []}]

    @get("", security=[], responses=problem_responses(401, 422))
    async def list_lounges(
        self,
        viewer: NamedDependency[Principal | None],
        category: FromQuery[uuid.UUID | None] = None,
        mentor: FromQuery[uuid.UUID | None] = None,
        access: FromQuery[LoungeAccess | None] = None,
        q: Annotated[str | None, text_query(max_length=100)] = None,
        mine: FromQuery[bool] = False,
        include_archived: FromQuery[bool] = False,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> LoungePage:
        """Public and paid lounges for everyone; private ones for their members. ``mine``: joined only."""
        return await services.list_lounges(
            viewer,
            category=category,
            mentor=mentor,
            access=access,
            q=q,
            mine=mine and viewer is not None,
            include_archived=include_archived,
            limit=limit,
            cursor=cursor,
        )

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 422))
    async def create_lounge(self, data: JSONBody[LoungeCreate], app_state: State, principal: Caller) -> LoungeOut:
        """Approved mentors open lounges (admins on a mentor's behalf with ``mentor_id``)."""
        return await services.do_create_lounge(app_state, principal, data)

    @get("/{id:uuid}", security=[], responses=problem_responses(401, 404))
    async def get_lounge(self, id: FromPath[uuid.UUID], viewer: NamedDependency[Principal | None]) -> LoungeOut:
        """One lounge: public and paid lounges for anyone, a private one for its members and staff (else 404)."""
        return await services.get_lounge(viewer, id)

    @put("/{id:uuid}", responses=problem_responses(401, 403, 404, 422))
    async def update_lounge(
        self, id: FromPath[uuid.UUID], data: JSONBody[LoungeUpdate], principal: Caller
    ) -> LoungeOut:
        """Change a lounge's title, description, access, capacity or coach settings (its mentor or an admin)."""
        return await services.do_update_lounge(principal, id, data)

    @delete("/{id:uuid}", status_code=HTTP_200_OK, responses=problem_responses(401, 403, 404))
    async def delete_lounge(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> dict[str, str]:
        """Archives a lounge with history (``{"outcome": "archived"}``), deletes an empty one."""
        return {"outcome": await services.do_delete_lounge(app_state, principal, id)}

    @post("/{id:uuid}/join", status_code=HTTP_200_OK, responses=problem_responses(401, 402, 403, 404, 409))
    async def join(self, id: FromPath[uuid.UUID], app_state: State, verified_principal: Caller) -> JoinResult:
        """Join (public, invited, paid with entitlement) or request to join (private)."""
        return await services.do_join(app_state, verified_principal, id)

    @post("/{id:uuid}/leave", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 404, 409))
    async def leave(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> None:
        """Leave a lounge; your sockets lose the channel at once (the mentor cannot: 409)."""
        await services.do_leave(app_state, principal, id)

    @get("/{id:uuid}/members", responses=problem_responses(401, 403, 404, 422))
    async def members(
        self,
        id: FromPath[uuid.UUID],
        principal: Caller,
        status: FromQuery[MembershipStatus] = MembershipStatus.active,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> MemberPage:
        """Active members for members; invited/requested/removed lists for the staff. Oldest first."""
        return await services.list_members(principal, id, status=status, limit=limit, cursor=cursor)

    @post("/{id:uuid}/members", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 404, 409))
    async def invite(
        self, id: FromPath[uuid.UUID], data: JSONBody[InviteRequest], app_state: State, principal: Caller
    ) -> MemberOut:
        """Invite a user, or approve their request to join."""
        return await services.do_invite(app_state, principal, id, data.user_id)

    @patch("/{id:uuid}/members/{user_id:uuid}", responses=problem_responses(401, 403, 404, 422))
    async def update_member(
        self,
        id: FromPath[uuid.UUID],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[MemberUpdate],
        app_state: State,
        principal: Caller,
    ) -> MemberOut:
        """Promote/demote a moderator (mentor, admin) or mute until a time (staff)."""
        return await services.do_update_member(app_state, principal, id, user_id, data)

    @delete(
        "/{id:uuid}/members/{user_id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404)
    )
    async def remove_member(
        self, id: FromPath[uuid.UUID], user_id: FromPath[uuid.UUID], app_state: State, principal: Caller
    ) -> None:
        """Remove a member, decline a request or withdraw an invitation; access ends at once."""
        await services.do_remove_member(app_state, principal, id, user_id)

    # -- messages (the same routes as a thread's, see server.http.channel_messages) -----------

    @get("/{id:uuid}/messages", responses=problem_responses(401, 403, 404, 422))
    async def list_messages(
        self,
        id: FromPath[uuid.UUID],
        principal: Caller,
        before: HistoryOffset = None,
        after: HistoryOffset = None,
        cursor: Cursor = None,
        limit: HistoryLimit = 50,
    ) -> MessagePage:
        """History by offset: the newest page by default; ``before``/``after`` an offset, then ``cursor`` onwards."""
        access = await channel_access(principal, _channel(id), write=False)
        return await messages.history(access, before=before, after=after, cursor=cursor, limit=limit)

    @post("/{id:uuid}/messages", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 404, 409, 422))
    async def post_message(
        self, id: FromPath[uuid.UUID], data: JSONBody[MessageIn], app_state: State, principal: Caller
    ) -> Response[MessageOut]:
        """Post a message (201); a retry with the same ``client_id`` returns the stored one (200)."""
        return posted(await messages.do_post_message(app_state, principal, _channel(id), data))

    @patch("/{id:uuid}/messages/{offset:int}", responses=problem_responses(401, 403, 404, 409, 422))
    async def edit_message(
        self,
        id: FromPath[uuid.UUID],
        offset: MessageOffset,
        data: JSONBody[MessageEdit],
        app_state: State,
        principal: Caller,
    ) -> MessageOut:
        """Edit your message's text; history and recovery serve the new text from now on."""
        return await messages.do_edit_message(app_state, principal, _channel(id), offset, data.text)

    @delete(
        "/{id:uuid}/messages/{offset:int}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404)
    )
    async def delete_message(
        self, id: FromPath[uuid.UUID], offset: MessageOffset, app_state: State, principal: Caller
    ) -> None:
        """Delete a message (its author or the lounge's staff): it becomes a tombstone at the same offset."""
        await messages.do_delete_message(app_state, principal, _channel(id), offset)

    @post(
        "/{id:uuid}/messages/{offset:int}/reactions",
        status_code=HTTP_200_OK,
        responses=problem_responses(401, 403, 404, 409),
    )
    async def add_reaction(
        self,
        id: FromPath[uuid.UUID],
        offset: MessageOffset,
        data: JSONBody[ReactionIn],
        app_state: State,
        principal: Caller,
    ) -> dict[str, int]:
        """Add the caller's reaction; answers the message's counts per emoji."""
        return await messages.do_react(app_state, principal, _channel(id), offset, data.emoji, add=True)

    @delete(
        "/{id:uuid}/messages/{offset:int}/reactions/{emoji:str}",
        status_code=HTTP_200_OK,
        responses=problem_responses(401, 403, 404, 409),
    )
    async def remove_reaction(
        self, id: FromPath[uuid.UUID], offset: MessageOffset, emoji: Emoji, app_state: State, principal: Caller
    ) -> dict[str, int]:
        """Take back your reaction; answers the message's reaction counts."""
        return await messages.do_react(app_state, principal, _channel(id), offset, emoji, add=False)

    @post("/{id:uuid}/read", status_code=HTTP_200_OK, responses=problem_responses(401, 403, 404))
    async def mark_read(
        self, id: FromPath[uuid.UUID], data: JSONBody[ReadIn], app_state: State, principal: Caller
    ) -> ReadOut:
        """Move the read position forward; answers it with the unread count."""
        return await messages.do_mark_read(app_state, principal, _channel(id), data.offset)
