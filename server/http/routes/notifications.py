"""HTTP transport for ``/api/v1/notifications``: your notifications, unread count, marking read."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, HttpMethod, get, route
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from server.domain.accounts.services import Principal
from server.domain.notifications import services
from server.domain.notifications.schemas import NotificationPage, ReadResult
from server.foundation.state import AppState
from server.http.params import Cursor
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]

Limit = Annotated[int, QueryParameter(ge=1, le=services.MAX_PAGE_SIZE, description="page size")]


class NotificationController(Controller):
    """In-app notifications. New ones are also pushed live on your ``user#<id>`` channel
    (``{"type": "notification", ...}``) and, per your ``notification_prefs``, mailed."""

    path = "/notifications"
    tags = ["notifications"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 422))
    async def list_notifications(
        self,
        principal: Caller,
        unread: FromQuery[bool] = False,
        limit: Limit = services.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> NotificationPage:
        """Newest first, with your total ``unread_count``; ``unread=true`` lists unread ones only."""
        return await services.list_notifications(principal, unread_only=unread, limit=limit, cursor=cursor)

    @route(
        "/read-all",
        http_method=[HttpMethod.PATCH, HttpMethod.POST],
        status_code=200,
        responses=problem_responses(401),
    )
    async def read_all(self, app_state: State, principal: Caller) -> ReadResult:
        """Mark all your notifications read (PATCH or POST)."""
        return await services.do_mark_all_read(app_state, principal)

    @route(
        "/{id:uuid}/read",
        http_method=[HttpMethod.PATCH, HttpMethod.POST],
        status_code=200,
        responses=problem_responses(401, 404),
    )
    async def read_one(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> ReadResult:
        """Mark one notification read (PATCH or POST; idempotent)."""
        return await services.do_mark_read(app_state, principal, id)
