"""HTTP transport for ``/api/v1/capsules``: your time capsules, sealed until they unlock."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from server.domain.accounts.services import Principal
from server.domain.capsules import services
from server.domain.capsules.schemas import CapsuleCreate, CapsuleOut, CapsulePage
from server.domain.tables.capsules import CapsuleStatus
from server.foundation.state import AppState
from server.http.params import Cursor
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]

Limit = Annotated[int, QueryParameter(ge=1, le=services.MAX_PAGE_SIZE, description="page size")]


class CapsuleController(Controller):
    """Time capsules: only their owner sees them (anyone else gets 404), and nobody reads one
    before it unlocks. When it does, you get a ``capsule.unlocked`` push and a notification."""

    path = "/capsules"
    tags = ["capsules"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 422))
    async def list_capsules(
        self,
        principal: Caller,
        status: FromQuery[CapsuleStatus | None] = None,
        limit: Limit = services.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> CapsulePage:
        """Your capsules, soonest to unlock first, without their content."""
        return await services.list_capsules(principal, status=status, limit=limit, cursor=cursor)

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 409, 422))
    async def create_capsule(self, data: JSONBody[CapsuleCreate], app_state: State, principal: Caller) -> CapsuleOut:
        """Seal a message (and files) until ``unlock_at``."""
        return await services.do_create_capsule(app_state, principal, data)

    @get("/{id:uuid}", responses=problem_responses(401, 404))
    async def get_capsule(self, id: FromPath[uuid.UUID], principal: Caller) -> CapsuleOut:
        """A capsule; ``content`` and ``attachments`` are null until it unlocks."""
        return await services.get_capsule(principal, id)

    @post("/{id:uuid}/unlock", status_code=HTTP_200_OK, responses=problem_responses(401, 404, 409))
    async def unlock_capsule(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> CapsuleOut:
        """Open a capsule whose ``unlock_at`` has passed (idempotent); earlier: 409 ``capsule_sealed``."""
        return await services.do_unlock_capsule(app_state, principal, id)

    @delete("/{id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 404))
    async def delete_capsule(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> None:
        """Delete a capsule, sealed or not (a sealed one is gone unread)."""
        await services.do_delete_capsule(app_state, principal, id)
