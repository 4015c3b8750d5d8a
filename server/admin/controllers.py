"""HTTP transport for ``/api/v1/admin``: mentor review and category editing. Administrators only."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, HttpMethod, delete, get, post, put, route
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from server.accounts.services import ClientInfo, Principal
from server.core.errors import problem_responses
from server.core.state import AppState
from server.mentors import services as mentors
from server.mentors.schemas import (
    CategoryOut,
    CreateCategoryRequest,
    MentorApplicationOut,
    PendingMentorPage,
    RejectRequest,
    UpdateCategoryRequest,
)

State = NamedDependency[AppState]
Admin = NamedDependency[Principal]
Client = NamedDependency[ClientInfo]


class AdminMentorController(Controller):
    """The mentor application review queue."""

    path = "/admin/mentors"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("/pending", responses=problem_responses(401, 403, 422))
    async def pending(
        self,
        admin_principal: Admin,
        limit: Annotated[int, QueryParameter(ge=1, le=mentors.MAX_PAGE_SIZE)] = mentors.DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> PendingMentorPage:
        """Applications waiting for review, oldest first."""
        return await mentors.list_pending(admin_principal, limit=limit, cursor=cursor)

    @route(
        "/{mentor_id:uuid}/approve",
        http_method=[HttpMethod.PATCH, HttpMethod.POST],
        status_code=HTTP_200_OK,
        responses=problem_responses(401, 403, 404, 409),
    )
    async def approve(
        self, mentor_id: FromPath[uuid.UUID], app_state: State, admin_principal: Admin, client: Client
    ) -> MentorApplicationOut:
        """Approve a pending application: the user gets the mentor role and a notification."""
        return await mentors.do_approve(app_state, admin_principal, mentor_id, client)

    @route(
        "/{mentor_id:uuid}/reject",
        http_method=[HttpMethod.PATCH, HttpMethod.POST],
        status_code=HTTP_200_OK,
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def reject(
        self,
        mentor_id: FromPath[uuid.UUID],
        data: JSONBody[RejectRequest],
        app_state: State,
        admin_principal: Admin,
        client: Client,
    ) -> MentorApplicationOut:
        """Reject a pending application with a reason; the applicant is notified and may apply again."""
        return await mentors.do_reject(app_state, admin_principal, mentor_id, data.reason, client)


class AdminCategoryController(Controller):
    """Create, edit and delete categories."""

    path = "/admin/categories"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @post("", status_code=201, responses=problem_responses(401, 403, 409, 422))
    async def create_category(
        self, data: JSONBody[CreateCategoryRequest], app_state: State, admin_principal: Admin, client: Client
    ) -> CategoryOut:
        return await mentors.do_create_category(app_state, admin_principal, data, client)

    @put("/{category_id:uuid}", responses=problem_responses(401, 403, 404, 409, 422))
    async def update_category(
        self,
        category_id: FromPath[uuid.UUID],
        data: JSONBody[UpdateCategoryRequest],
        app_state: State,
        admin_principal: Admin,
        client: Client,
    ) -> CategoryOut:
        """Change the given fields; fields left out keep their value."""
        return await mentors.do_update_category(app_state, admin_principal, category_id, data, client)

    @delete("/{category_id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404))
    async def delete_category(
        self, category_id: FromPath[uuid.UUID], app_state: State, admin_principal: Admin, client: Client
    ) -> None:
        """Delete a category; mentors lose it and its lounges become uncategorised."""
        await mentors.do_delete_category(app_state, admin_principal, category_id, client)
