"""Who is calling: the bearer-token dependency and the role guards every route module reuses.

The token is checked by the accounts domain (``authenticate``); this module reads the
``Authorization`` header and offers the caller, by role, as Litestar dependencies.

Handlers declare what they need by parameter name:

- ``principal: Principal`` — any signed-in user (401 otherwise);
- ``viewer: Principal | None`` — the caller if signed in, for public routes;
- ``verified_principal`` — and a verified email (403 ``email_unverified``);
- ``mentor_principal`` — role mentor or admin (403);
- ``admin_principal`` — role admin (403).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide

from server.domain.accounts.services import ClientInfo, Principal, authenticate
from server.domain.tables.accounts import Role
from server.foundation.errors import Forbidden, Unauthorized
from server.foundation.state import AppState


def _bearer_token(request: Request[Any, Any, Any]) -> str | None:
    """The bearer token, ``None`` without an Authorization header; 401 for another scheme.

    Read from the raw ASGI headers: ``request.headers`` would build a ``Headers`` of them all,
    on every authenticated request, to read this one."""
    header = next(
        (value.decode("latin-1") for name, value in request.scope["headers"] if name == b"authorization"), None
    )
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer access token is required", code="missing_token")
    return token.strip()


async def provide_principal(request: Request[Any, Any, Any], app_state: NamedDependency[AppState]) -> Principal:
    token = _bearer_token(request)
    if token is None:
        raise Unauthorized("a bearer access token is required", code="missing_token")
    return await authenticate(app_state, token)


async def provide_viewer(request: Request[Any, Any, Any], app_state: NamedDependency[AppState]) -> Principal | None:
    """For public routes that show more to a signed-in caller: ``None`` when anonymous
    (a bad token is still a 401)."""
    token = _bearer_token(request)
    return None if token is None else await authenticate(app_state, token)


async def provide_verified_principal(principal: NamedDependency[Principal]) -> Principal:
    if not principal.email_verified:
        raise Forbidden("verify your email address first", code="email_unverified")
    return principal


async def provide_mentor_principal(principal: NamedDependency[Principal]) -> Principal:
    if principal.role not in (Role.mentor, Role.admin):
        raise Forbidden("mentors only", code="role_required")
    return principal


async def provide_admin_principal(principal: NamedDependency[Principal]) -> Principal:
    if principal.role != Role.admin:
        raise Forbidden("administrators only", code="role_required")
    return principal


def provide_client_info(request: Request[Any, Any, Any]) -> ClientInfo:
    """The caller's address (X-Forwarded-For counts only from TRUSTED_PROXIES, see server/app.py) and user agent."""
    host = request.client.host if request.client else ""
    return ClientInfo(ip=host or "unknown", user_agent=request.headers.get("user-agent", "")[:512])


AUTH_DEPENDENCIES = {
    "principal": Provide(provide_principal),
    "viewer": Provide(provide_viewer),
    "verified_principal": Provide(provide_verified_principal),
    "mentor_principal": Provide(provide_mentor_principal),
    "admin_principal": Provide(provide_admin_principal),
    "client": Provide(provide_client_info, sync_to_thread=False),
}
