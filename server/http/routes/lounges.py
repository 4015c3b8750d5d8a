"""HTTP transport for ``/api/v1/lounges``: lounges, membership, moderation, messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from server.domain.accounts.services import Principal
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
from server.domain.lounges.tables import LoungeAccess, MembershipStatus
from server.foundation.state import AppState
from server.http.params import text_query
from server.http.problems import problem_responses
from server.http.routes.threads import ChannelMessagesController, Limit, Offset

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]


class LoungeController(ChannelMessagesController):
    """Lounges and everything in them."""

    path = "/lounges"
    tags = ["lounges"]
    channel_kind = "lounge"

    @get("", security=[], responses=problem_responses(401))
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
        offset: Offset = 0,
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
            offset=offset,
        )

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 422))
    async def create_lounge(self, data: JSONBody[LoungeCreate], app_state: State, principal: Caller) -> LoungeOut:
        """Approved mentors open lounges (admins on a mentor's behalf with ``mentor_id``)."""
        return await services.do_create_lounge(app_state, principal, data)

    @get("/{id:uuid}", security=[], responses=problem_responses(401, 404))
    async def get_lounge(self, id: FromPath[uuid.UUID], viewer: NamedDependency[Principal | None]) -> LoungeOut:
        return await services.get_lounge(viewer, id)

    @put("/{id:uuid}", responses=problem_responses(401, 403, 404, 422))
    async def update_lounge(
        self, id: FromPath[uuid.UUID], data: JSONBody[LoungeUpdate], principal: Caller
    ) -> LoungeOut:
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
        await services.do_leave(app_state, principal, id)

    @get("/{id:uuid}/members", responses=problem_responses(401, 403, 404))
    async def members(
        self,
        id: FromPath[uuid.UUID],
        principal: Caller,
        status: FromQuery[MembershipStatus] = MembershipStatus.active,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> MemberPage:
        """Active members for members; invited/requested/removed lists for the staff."""
        return await services.list_members(principal, id, status=status, limit=limit, offset=offset)

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
