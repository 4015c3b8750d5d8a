"""HTTP transport for ``/api/v1/devices``: the phones your pushes go to, and what was pushed
(also ``/api/v1/admin/users/{user_id}/pushes`` for administrators). See docs/push.md."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from server.domain.accounts.services import Principal
from server.domain.push import attempts, devices
from server.domain.push.schemas import DeviceIn, DeviceOut, DevicePage, PushPage
from server.foundation.state import AppState
from server.http.params import Cursor
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
Admin = NamedDependency[Principal]

Limit = Annotated[int, QueryParameter(ge=1, le=devices.MAX_PAGE_SIZE, description="page size")]


class DeviceController(Controller):
    """Register the phone your app runs on for push notifications, which arrive while none of
    your sockets is connected. A device belongs to the session that registered it: signing
    out (or revoking the session) removes it."""

    path = "/devices"
    tags = ["devices"]
    security = [{"BearerToken": []}]

    @post(
        "",
        status_code=HTTP_201_CREATED,
        responses={
            HTTP_200_OK: ResponseSpec(data_container=DeviceOut, description="The token was registered before: updated"),
            **problem_responses(401, 422),
        },
    )
    async def register_device(
        self, data: JSONBody[DeviceIn], app_state: State, principal: Caller
    ) -> Response[DeviceOut]:
        """Register this phone's APNs or FCM token (201), or update it (200).

        Call it at every app start and whenever the platform hands you a new token: the same
        token again updates the device (and moves it to you and this session if someone else
        had it). 422 ``invalid_device_token``: an APNs token must be 64 to 200 hex digits;
        ``app_id_required``: ``apns`` needs your bundle id; ``unknown_app_id``: this server does
        not push to that bundle id."""
        device, created = await devices.do_register_device(app_state, principal, data)
        return Response(device, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("", responses=problem_responses(401, 422))
    async def list_devices(
        self, principal: Caller, limit: Limit = devices.DEFAULT_PAGE_SIZE, cursor: Cursor = None
    ) -> DevicePage:
        """Your registered devices, most recently registered first (tokens shown as their last 8 characters)."""
        return await devices.list_devices(principal, limit=limit, cursor=cursor)

    @get("/pushes", responses=problem_responses(401, 422))
    async def list_pushes(
        self, principal: Caller, limit: Limit = attempts.DEFAULT_PAGE_SIZE, cursor: Cursor = None
    ) -> PushPage:
        """What was pushed to your devices and what became of each attempt, newest first (no message text)."""
        return await attempts.list_pushes(principal.user_id, limit=limit, cursor=cursor)

    @delete("/{id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 404))
    async def delete_device(self, id: FromPath[uuid.UUID], principal: Caller) -> None:
        """Stop pushing to one of your devices (anyone else's is a 404)."""
        await devices.do_delete_device(principal, id)


class AdminPushController(Controller):
    """What was pushed to a user's devices, for administrators."""

    path = "/admin/users/{user_id:uuid}/pushes"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 403, 404, 422))
    async def user_pushes(
        self,
        user_id: FromPath[uuid.UUID],
        admin_principal: Admin,
        limit: Limit = attempts.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> PushPage:
        """A user's push attempts, newest first: kind, ids, device (token hint), outcome; never message text."""
        return await attempts.admin_list_pushes(admin_principal, user_id, limit=limit, cursor=cursor)
