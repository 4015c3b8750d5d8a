"""The two pages a mailed link opens when no app handles it: verify an email, reset a password.

Without ``APP_LINK_BASE`` the links in mail point here. Each page is plain HTML
with a form (no script): opening the link only shows a button, and the single-use
token is spent by the POST, so a mail scanner that fetches links consumes nothing.
The pages send no referrer (the token is in the URL), are never cached, and may
not be framed.
"""

from __future__ import annotations

import html
from typing import Annotated

from litestar import Controller, MediaType, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery

from server.domain.accounts import services
from server.domain.accounts.services import ClientInfo
from server.foundation.errors import AppError
from server.foundation.state import AppState

State = NamedDependency[AppState]
Client = NamedDependency[ClientInfo]
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;line-height:1.5}"
    "input,button{font:inherit;padding:.5rem;width:100%;box-sizing:border-box;margin:.25rem 0 .75rem}"
    ".error{color:#a40000}"
)


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)} · Lounges</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return Response(document, media_type=MediaType.HTML, status_code=status, headers=_HEADERS)


def _error(message: str) -> str:
    return f'<p class="error" role="alert">{html.escape(message)}</p>'


def _token_field(token: str) -> str:
    return f'<input type="hidden" name="token" value="{html.escape(token, quote=True)}">'


def _verify_form(token: str, message: str = "") -> str:
    return (
        f"{message}<p>Confirm that this address is yours.</p>"
        f'<form method="post" action="/verify-email">{_token_field(token)}'
        f'<button type="submit">Confirm my email</button></form>'
    )


def _reset_form(token: str, message: str = "") -> str:
    return (
        f"{message}<p>Choose a new password (at least 10 characters). Every device signed in "
        f"to your account will be signed out.</p>"
        f'<form method="post" action="/reset-password">{_token_field(token)}'
        f'<label for="password">New password</label>'
        f'<input id="password" name="password" type="password" autocomplete="new-password" required>'
        f'<label for="confirm">Repeat it</label>'
        f'<input id="confirm" name="confirm" type="password" autocomplete="new-password" required>'
        f'<button type="submit">Set the new password</button></form>'
    )


_INVALID_LINK = "This link is invalid, has expired or was already used. Ask the app for a new one."
# The bounds the JSON API puts on the same fields (server/domain/accounts/schemas.py).
_TOKEN_LENGTH = range(16, 257)
_PASSWORD_LENGTH = range(1, 257)


def _explain(exc: AppError) -> str:
    return _INVALID_LINK if exc.code == "invalid_token" else exc.detail


class AccountLinkPages(Controller):
    """``/verify-email`` and ``/reset-password``: the pages behind the links in mail."""

    include_in_schema = False

    @get("/verify-email")
    async def verify_page(self, token: FromQuery[str] = "") -> Response[str]:
        """The page a verification link opens: a button that confirms the address."""
        if len(token) not in _TOKEN_LENGTH:
            return _page("Confirm your email", _error(_INVALID_LINK), 422)
        return _page("Confirm your email", _verify_form(token))

    @post("/verify-email")
    async def verify(self, data: Form, app_state: State, client: Client) -> Response[str]:
        """Spend the verification token posted by the page's form."""
        token = data.get("token", "")
        if len(token) not in _TOKEN_LENGTH:
            return _page("Confirm your email", _error(_INVALID_LINK), 422)
        try:
            await services.do_verify_email(app_state, token=token, client=client)
        except AppError as exc:
            return _page("Confirm your email", _verify_form(token, _error(_explain(exc))), exc.status)
        return _page("Email confirmed", "<p>Your email address is confirmed. You can go back to the app.</p>")

    @get("/reset-password")
    async def reset_page(self, token: FromQuery[str] = "") -> Response[str]:
        """The page a reset link opens: a form for the new password."""
        if len(token) not in _TOKEN_LENGTH:
            return _page("Reset your password", _error(_INVALID_LINK), 422)
        return _page("Reset your password", _reset_form(token))

    @post("/reset-password")
    async def reset(self, data: Form, app_state: State, client: Client) -> Response[str]:
        """Set the new password posted by the page's form; every session ends."""
        token, password = data.get("token", ""), data.get("password", "")
        if len(token) not in _TOKEN_LENGTH:
            return _page("Reset your password", _error(_INVALID_LINK), 422)
        if password != data.get("confirm", ""):
            return _page("Reset your password", _reset_form(token, _error("The two passwords differ.")), 422)
        if len(password) not in _PASSWORD_LENGTH:
            return _page(
                "Reset your password", _reset_form(token, _error("Choose a password of 10 to 256 characters.")), 422
            )
        try:
            await services.do_reset_password(app_state, token=token, password=password, client=client)
        except AppError as exc:
            return _page("Reset your password", _reset_form(token, _error(_explain(exc))), exc.status)
        return _page("Password changed", "<p>Your password is changed. Sign in again in the app.</p>")
