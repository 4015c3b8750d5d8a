"""HTTP transport for ``/api/v1/users/me/exports``: the user's data exports.

Erasure is ``DELETE /api/v1/users/me`` (accounts); its file, embedding and
payment side lives in :mod:`server.domain.compliance.services`.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from server.domain.accounts.services import Principal
from server.domain.compliance import services
from server.domain.compliance.schemas import ExportList, ExportOut
from server.foundation.state import AppState
from server.http.params import Cursor
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
Limit = Annotated[int, QueryParameter(ge=1, le=services.MAX_PAGE_SIZE, description="page size")]


class ExportController(Controller):
    """A JSON archive of everything your account owns, built by a worker."""

    path = "/users/me/exports"
    tags = ["compliance"]
    security = [{"BearerToken": []}]

    @post("", status_code=HTTP_202_ACCEPTED, responses=problem_responses(401, 503))
    async def request_export(self, app_state: State, principal: Caller) -> ExportOut:
        """Ask for an export (202 with the request; poll ``GET /users/me/exports/{id}``).
        While one is pending or processing, asking again answers that one."""
        return await services.do_request_export(app_state, principal)

    @get("", responses=problem_responses(401, 422, 503))
    async def list_exports(
        self, app_state: State, principal: Caller, limit: Limit = services.DEFAULT_PAGE_SIZE, cursor: Cursor = None
    ) -> ExportList:
        """Your export requests, newest first."""
        return await services.list_exports(app_state, principal, limit=limit, cursor=cursor)

    @get("/{id:uuid}", responses=problem_responses(401, 404, 503))
    async def get_export(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> ExportOut:
        """The request's status; once ``completed``, a fresh presigned ``download_url``
        (valid ``PRESIGNED_URL_TTL`` seconds) while the archive is kept (``EXPORT_RETENTION``)."""
        return await services.get_export(app_state, principal, id)
