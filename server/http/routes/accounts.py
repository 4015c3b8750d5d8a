"""HTTP transport for ``/api/v1/auth`` and ``/api/v1/users/me``: parse, call a service, answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from litestar.response import Redirect
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from server.domain.accounts import google, services
from server.domain.accounts.schemas import (
    Accepted,
    ActivityOut,
    ChangePasswordRequest,
    DeleteAccountRequest,
    ForgotPasswordRequest,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    ResendVerificationRequest,
    ResetPasswordRequest,
    TokenPair,
    UpdateProfileRequest,
    UserOut,
    VerifyEmailRequest,
)
from server.domain.accounts.services import ClientInfo, Principal
from server.foundation.state import AppState
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Client = NamedDependency[ClientInfo]
Caller = NamedDependency[Principal]


class AuthController(Controller):
    """Registration, sign-in, token refresh, sign-out, email verification, password reset, Google."""

    path = "/auth"
    tags = ["auth"]

    @post("/register", status_code=201, responses=problem_responses(409, 422, 429))
    async def register(self, data: JSONBody[RegisterRequest], app_state: State, client: Client) -> UserOut:
        """Create an account; a verification link is mailed."""
        return await services.do_register(
            app_state, email=data.email, password=data.password, full_name=data.full_name, client=client
        )

    @post("/login", status_code=HTTP_200_OK, responses=problem_responses(401, 422, 429))
    async def login(self, data: JSONBody[LoginRequest], app_state: State, client: Client) -> TokenPair:
        """Exchange email and password for an access and a refresh token."""
        return await services.do_login(app_state, email=data.email, password=data.password, client=client)

    @post("/refresh", status_code=HTTP_200_OK, responses=problem_responses(401, 422))
    async def refresh(self, data: JSONBody[RefreshRequest], app_state: State, client: Client) -> TokenPair:
        """Rotate the refresh token; reusing a spent one revokes the whole session."""
        return await services.do_refresh(app_state, refresh_token=data.refresh_token, client=client)

    @post("/logout", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401), security=[{"BearerToken": []}])
    async def logout(self, app_state: State, principal: Caller, client: Client) -> None:
        """Revoke this session; its sockets are disconnected on every node."""
        await services.do_logout(app_state, principal, client)

    @post("/verify-email", status_code=HTTP_200_OK, responses=problem_responses(422, 429))
    async def verify_email(self, data: JSONBody[VerifyEmailRequest], app_state: State, client: Client) -> Accepted:
        """Confirm the email address with the mailed single-use token."""
        await services.do_verify_email(app_state, token=data.token, client=client)
        return Accepted(status="verified", detail="email address confirmed")

    @post("/verify-email/resend", status_code=HTTP_202_ACCEPTED, responses=problem_responses(422, 429))
    async def resend_verification(
        self, data: JSONBody[ResendVerificationRequest], app_state: State, client: Client
    ) -> Accepted:
        """Mail a new verification link (same answer whether or not the account exists)."""
        await services.do_resend_verification(app_state, email=data.email, client=client)
        return Accepted(detail="if the address belongs to an unverified account, a link is on its way")

    @post("/forgot-password", status_code=HTTP_202_ACCEPTED, responses=problem_responses(422, 429))
    async def forgot_password(
        self, data: JSONBody[ForgotPasswordRequest], app_state: State, client: Client
    ) -> Accepted:
        """Mail a reset link (same answer whether or not the account exists)."""
        await services.do_forgot_password(app_state, email=data.email, client=client)
        return Accepted(detail="if the address belongs to an account, a reset link is on its way")

    @post("/reset-password", status_code=HTTP_200_OK, responses=problem_responses(422, 429))
    async def reset_password(self, data: JSONBody[ResetPasswordRequest], app_state: State, client: Client) -> Accepted:
        """Set a new password with the mailed token; every session of the account ends."""
        await services.do_reset_password(app_state, token=data.token, password=data.password, client=client)
        return Accepted(status="reset", detail="password changed; sign in again")

    @get("/google", status_code=302, responses=problem_responses(503))
    async def google_start(self, app_state: State) -> Redirect:
        """Redirect to Google's consent page (authorization code flow with PKCE)."""
        return Redirect(await google.start_google_sign_in(app_state), status_code=302)

    @get("/google/callback", responses=problem_responses(400, 401, 409, 503))
    async def google_callback(
        self,
        code: Annotated[str, QueryParameter(max_length=2048)],
        flow_state: Annotated[str, QueryParameter(name="state", max_length=256)],
        app_state: State,
        client: Client,
    ) -> TokenPair:
        """Finish Google sign-in: answers the same token pair as ``/login``."""
        return await google.finish_google_sign_in(app_state, code=code, flow_state=flow_state, client=client)


class UsersController(Controller):
    """The signed-in user's own account."""

    path = "/users/me"
    tags = ["users"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401))
    async def me(self, principal: Caller) -> UserOut:
        """Your account: profile, role, email verification, notification preferences."""
        return await services.get_me(principal)

    @put("", responses=problem_responses(401, 422))
    async def update_me(self, data: JSONBody[UpdateProfileRequest], principal: Caller, app_state: State) -> UserOut:
        """Change name, notification preferences or avatar: ``avatar_file_id`` must be an
        avatar you uploaded (``purpose=avatar``), else 422 ``invalid_avatar_file``; ``null`` clears it."""
        return await services.do_update_profile(app_state, principal, data)

    @patch("/password", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 422))
    async def change_password(
        self, data: JSONBody[ChangePasswordRequest], app_state: State, principal: Caller, client: Client
    ) -> None:
        """Change the password; every other session of the account ends."""
        await services.do_change_password(
            app_state, principal, current_password=data.current_password, new_password=data.new_password, client=client
        )

    @get("/activity", responses=problem_responses(401))
    async def activity(self, principal: Caller) -> ActivityOut:
        """Live sessions (device, IP, last use) and recent security events."""
        return await services.get_activity(principal)

    @delete("", status_code=HTTP_202_ACCEPTED, responses=problem_responses(401, 403))
    async def delete_me(
        self, app_state: State, principal: Caller, client: Client, data: JSONBody[DeleteAccountRequest | None] = None
    ) -> dict[str, uuid.UUID]:
        """Disable the account now; personal data is erased by a background job."""
        request_id = await services.do_delete_account(
            app_state, principal, password=data.password if data else None, client=client
        )
        return {"compliance_request_id": request_id}
