"""Helpers for tests that need accounts: register, read the mail, sign in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx

from tests.support.smtp import SmtpSink

PASSWORD = "correct horse battery staple"


@dataclass
class Account:
    """A registered user and the session the test signed in with."""

    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def token_in(message: EmailMessage, kind: str) -> str:
    """The token of a verification or reset mail (read from the mail's body)."""
    body = message.get_body(("plain",)).get_content()
    match = re.search(rf"/{kind}\?token=([A-Za-z0-9_\-]+)", body)
    assert match, body
    return match.group(1)


async def register(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, full_name: str = "Test User"
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": password, "full_name": full_name}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


async def signed_in(
    client: httpx.AsyncClient,
    email: str,
    *,
    password: str = PASSWORD,
    verified_by: tuple[SmtpSink, Any] | None = None,
) -> Account:
    """Register and sign in; with ``verified_by=(mailbox, run_jobs)`` also verify the email by its mail."""
    user = await register(client, email, password)
    if verified_by is not None:
        mailbox, run_jobs = verified_by
        await run_jobs()
        message = next(m for m in reversed(mailbox.messages) if m["To"] == email)
        response = await client.post("/api/v1/auth/verify-email", json={"token": token_in(message, "verify-email")})
        assert response.status_code == 200, response.text
    tokens = await login(client, email, password)
    return Account(user["id"], email, password, tokens["access_token"], tokens["refresh_token"])
