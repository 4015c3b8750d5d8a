"""HTTP transport for ``/api/v1/admin``: stats, users and roles, the audit log, mentor review
and category editing. Administrators only (CMS editing lives in ``server/http/routes/cms.py``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, HttpMethod, delete, get, patch, post, put, route
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from server.domain.accounts.services import ClientInfo, Principal
from server.domain.admin import services as admin
from server.domain.admin.schemas import AdminUserOut, AdminUserPage, AuditPage, RoleChange, StatsOut
from server.domain.mentors import services as mentors
from server.domain.mentors.schemas import (
    CategoryOut,
    CreateCategoryRequest,
    MentorApplicationOut,
    PendingMentorPage,
    RejectRequest,
    UpdateCategoryRequest,
)
from server.domain.tables.accounts import Role
from server.foundation.state import AppState
from server.http.params import Cursor, text_query
from server.http.problems import problem_responses

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
        cursor: Cursor = None,
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
        """Create a category (slug and name unique; 409 when taken)."""
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


Limit = Annotated[int, QueryParameter(ge=1, le=admin.MAX_PAGE_SIZE, description="page size")]


class AdminStatsController(Controller):
    """Platform figures for the admin dashboard."""

    path = "/admin/stats"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 403, 422))
    async def stats(
        self,
        app_state: State,
        admin_principal: Admin,
        days: Annotated[
            int, QueryParameter(ge=1, le=admin.MAX_STAT_DAYS, description="UTC days of daily figures, today included")
        ] = admin.DEFAULT_STAT_DAYS,
    ) -> StatsOut:
        """Users (total, verified, active, by role, new in 7 days), live WebSocket connections summed
        over every web node, messages and AI tokens per UTC day, and paid revenue per currency."""
        return await admin.get_stats(app_state, admin_principal, days=days)


class AdminUserController(Controller):
    """Find users and change their role."""

    path = "/admin/users"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 403, 422))
    async def search_users(
        self,
        admin_principal: Admin,
        q: Annotated[str | None, text_query(max_length=100, description="part of the email or full name")] = None,
        role: FromQuery[Role | None] = None,
        limit: Limit = admin.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> AdminUserPage:
        """Users matching ``q`` (email or full name, case-insensitive) and ``role``, newest first."""
        return await admin.search_users(admin_principal, q=q, role=role, limit=limit, cursor=cursor)

    @get("/{user_id:uuid}", responses=problem_responses(401, 403, 404))
    async def get_user(self, user_id: FromPath[uuid.UUID], admin_principal: Admin) -> AdminUserOut:
        """One user as administrators see them: role, verification, whether active, last sign-in, mentor status."""
        return await admin.get_user(admin_principal, user_id)

    @patch("/{user_id:uuid}/role", responses=problem_responses(401, 403, 404, 409, 422))
    async def change_role(
        self,
        user_id: FromPath[uuid.UUID],
        data: JSONBody[RoleChange],
        app_state: State,
        admin_principal: Admin,
        client: Client,
    ) -> AdminUserOut:
        """Set the user's role (``user``, ``mentor``, ``admin``); audited, and the user is notified.

        ``mentor`` approves the user's mentor application (409 ``mentor_profile_required`` if
        they never applied); ``user`` withdraws an approved mentor profile. Your own role is
        not changeable here (403 ``cannot_demote_self``).
        """
        return await admin.do_change_role(app_state, admin_principal, user_id, data.role, client)


class AdminAuditLogController(Controller):
    """Every administrative action: who did what to which object, from where."""

    path = "/admin/audit-log"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 403, 422))
    async def audit_log(
        self,
        admin_principal: Admin,
        actor: FromQuery[uuid.UUID | None] = None,
        action: Annotated[str | None, text_query(max_length=100, description="e.g. user.role_change")] = None,
        target_type: Annotated[str | None, text_query(max_length=50, description="e.g. user, faq")] = None,
        target_id: Annotated[str | None, text_query(max_length=64)] = None,
        limit: Limit = admin.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> AuditPage:
        """Newest first, optionally filtered by actor, action or target."""
        return await admin.list_audit_log(
            admin_principal,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            limit=limit,
            cursor=cursor,
        )
