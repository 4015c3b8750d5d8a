"""HTTP transport for ``/api/v1/categories`` and ``/api/v1/mentors``: parse, call a service, answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.domain.accounts.services import Principal
from server.domain.mentors import services
from server.domain.mentors.schemas import (
    ApplyRequest,
    CategoryList,
    MentorApplicationOut,
    MentorLoungePage,
    MentorOut,
    MentorPage,
)
from server.foundation.state import AppState
from server.http.params import Cursor, text_query
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]

Limit = Annotated[int, QueryParameter(ge=1, le=services.MAX_PAGE_SIZE, description="page size")]


class CategoryController(Controller):
    """The topics mentors and lounges are filed under (edited under ``/admin/categories``)."""

    path = "/categories"
    tags = ["categories"]

    @get("")
    async def list_categories(self) -> CategoryList:
        """Every category, in display order (one page: ``next_cursor`` is null)."""
        return await services.list_categories()


class MentorController(Controller):
    """The mentor directory and mentor applications."""

    path = "/mentors"
    tags = ["mentors"]

    @get("", responses=problem_responses(422))
    async def list_mentors(
        self,
        category: Annotated[str | None, text_query(max_length=80, description="category slug")] = None,
        q: Annotated[str | None, text_query(max_length=100, description="search full name or headline")] = None,
        limit: Limit = services.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> MentorPage:
        """Approved mentors, newest first; filter by category slug, search by name or headline."""
        return await services.list_mentors(category=category, q=q, limit=limit, cursor=cursor)

    @post("/apply", status_code=201, responses=problem_responses(401, 403, 409, 422), security=[{"BearerToken": []}])
    async def apply(
        self, data: JSONBody[ApplyRequest], app_state: State, verified_principal: Caller
    ) -> MentorApplicationOut:
        """Apply to be a mentor (verified email required); after a rejection, apply again."""
        return await services.do_apply(app_state, verified_principal, data)

    @get("/me", responses=problem_responses(401, 404), security=[{"BearerToken": []}])
    async def my_application(self, principal: Caller) -> MentorApplicationOut:
        """Your own application: status, and the reason if it was rejected."""
        return await services.get_my_application(principal)

    @get("/{mentor_id:uuid}", responses=problem_responses(401, 404))
    async def get_mentor(self, mentor_id: FromPath[uuid.UUID], viewer: NamedDependency[Principal | None]) -> MentorOut:
        """An approved mentor; applicants (with their token) also see their own in any status."""
        return await services.get_mentor(mentor_id, viewer)

    @get("/{mentor_id:uuid}/lounges", responses=problem_responses(401, 404, 422))
    async def mentor_lounges(
        self,
        mentor_id: FromPath[uuid.UUID],
        viewer: NamedDependency[Principal | None],
        limit: Limit = services.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> MentorLoungePage:
        """The mentor's lounges that are not archived, oldest first (private ones only for their members, the mentor, admins)."""
        return await services.list_mentor_lounges(mentor_id, viewer, limit=limit, cursor=cursor)
