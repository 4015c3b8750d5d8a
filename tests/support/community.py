"""Helpers for tests of lounges and threads: mentors, lounges, members, posts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from server.domain.tables.accounts import Role, User
from server.domain.tables.mentors import Mentor, MentorStatus
from tests.support.accounts import Account, signed_in
from tests.support.smtp import SmtpSink


class Community:
    """Builds verified users, approved mentors and their lounges through the API."""

    def __init__(self, client: httpx.AsyncClient, mailbox: SmtpSink, run_jobs: Any) -> None:
        self.client = client
        self.mailbox = mailbox
        self.run_jobs = run_jobs

    async def user(self, email: str, *, verified: bool = True) -> Account:
        """A signed-in user; ``verified`` marks the email confirmed directly (the mailed
        verification flow itself is covered by tests/test_auth.py)."""
        account = await signed_in(self.client, email)
        if verified:
            await User.update({User.email_verified_at: datetime.now(UTC)}).where(User.id == uuid.UUID(account.id))
        return account

    async def mentor(self, email: str) -> Account:
        account = await self.user(email)
        user_id = uuid.UUID(account.id)
        await Mentor.insert(Mentor(user=user_id, headline="Coach", bio="", status=MentorStatus.approved))
        await User.update({User.role: Role.mentor}).where(User.id == user_id)
        return account

    async def lounge(self, mentor: Account, **fields: Any) -> dict[str, Any]:
        body = {"title": "Morning focus", "description": "Daily check-ins", **fields}
        response = await self.client.post("/api/v1/lounges", json=body, headers=mentor.headers)
        assert response.status_code == 201, response.text
        return response.json()

    async def join(self, account: Account, lounge: dict[str, Any]) -> httpx.Response:
        return await self.client.post(f"/api/v1/lounges/{lounge['id']}/join", headers=account.headers)

    async def post(self, account: Account, path: str, text: str, **fields: Any) -> httpx.Response:
        body = {"client_id": str(uuid.uuid4()), "text": text, **fields}
        return await self.client.post(f"{path}/messages", json=body, headers=account.headers)
