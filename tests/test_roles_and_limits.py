"""Role guards reused by every area, the create-admin command, brute-force limits, and no secret leaks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency

from server.app import create_app
from server.domain.accounts.services import Principal
from server.domain.tables.accounts import Role, User
from server.foundation.settings import Settings
from tests.support.accounts import PASSWORD, login, signed_in
from tests.support.lifespan import running_lifespan

ROOT = Path(__file__).resolve().parents[1]


@get("/guarded/verified")
async def verified_only(verified_principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"user": str(verified_principal.user_id)}


@get("/guarded/mentor")
async def mentor_only(mentor_principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"role": mentor_principal.role}


@get("/guarded/admin")
async def admin_only(admin_principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"role": admin_principal.role}


@pytest.fixture
async def guarded(app: Litestar, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # The test changes roles straight in the database, which no control event announces:
    # without the session cache, every request reads them.
    application = create_app(msgspec.structs.replace(settings, auth_cache_seconds=0))
    for handler in (verified_only, mentor_only, admin_only):
        application.register(handler)
    async with (
        running_lifespan(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http,
    ):
        yield http


async def test_guards_check_verification_and_role(guarded: httpx.AsyncClient, mailbox, run_jobs) -> None:
    unverified = await signed_in(guarded, "plain@example.com")
    verified = await signed_in(guarded, "checked@example.com", verified_by=(mailbox, run_jobs))

    refused = await guarded.get("/guarded/verified", headers=unverified.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "email_unverified"
    assert (await guarded.get("/guarded/verified", headers=verified.headers)).status_code == 200
    assert (await guarded.get("/guarded/verified")).status_code == 401

    for path in ("/guarded/mentor", "/guarded/admin"):
        response = await guarded.get(path, headers=verified.headers)
        assert response.status_code == 403 and response.json()["code"] == "role_required"

    await User.update({User.role: Role.mentor}).where(User.email == verified.email)
    assert (await guarded.get("/guarded/mentor", headers=verified.headers)).json() == {"role": "mentor"}
    assert (await guarded.get("/guarded/admin", headers=verified.headers)).status_code == 403
    await User.update({User.role: Role.admin}).where(User.email == verified.email)
    assert (await guarded.get("/guarded/admin", headers=verified.headers)).status_code == 200
    assert (await guarded.get("/guarded/mentor", headers=verified.headers)).status_code == 200


async def test_create_admin_command(app: Litestar, settings: Settings, client: httpx.AsyncClient) -> None:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "LOUNGES_ADMIN_PASSWORD": "the admin passphrase"}
    command = [sys.executable, "-m", "server", "create-admin", "--email", "Root@Example.com", "--full-name", "Root"]
    first = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "admin root@example.com created" in first.stdout
    tokens = await login(client, "root@example.com", "the admin passphrase")
    me = (await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})).json()
    assert (me["role"], me["email_verified"]) == ("admin", True)

    await signed_in(client, "promote@example.com")
    second = await asyncio.to_thread(
        subprocess.run, [*command[:5], "promote@example.com"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert second.returncode == 0 and "is now an admin" in second.stdout
    assert (await User.select(User.role).where(User.email == "promote@example.com").first())["role"] == "admin"


@pytest.fixture
async def strict(app: Litestar, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose limits are tiny: 3 attempts per account (sign-in: failed ones, per IP) and 6 per IP, per 2 s."""
    application = create_app(msgspec.structs.replace(settings, auth_rate_limit_account="3/2", auth_rate_limit_ip="6/2"))
    async with (
        running_lifespan(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http,
    ):
        yield http


async def test_login_limit_per_account_trips_and_recovers(strict: httpx.AsyncClient) -> None:
    await signed_in(strict, "target@example.com")  # a success: only failed sign-ins count
    for _ in range(3):
        response = await strict.post(
            "/api/v1/auth/login", json={"email": "target@example.com", "password": "guess guess 1"}
        )
        assert response.status_code == 401
    blocked = await strict.post("/api/v1/auth/login", json={"email": "target@example.com", "password": PASSWORD})
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "rate_limited"
    retry_after = int(blocked.headers["retry-after"])
    assert 1 <= retry_after <= 2 and blocked.json()["retry_after"] == retry_after
    # The limit is per account and source (tests/test_access_hardening.py has the owner
    # elsewhere); another account from the same IP is still allowed (until the IP limit).
    other = await strict.post("/api/v1/auth/login", json={"email": "other@example.com", "password": "guess guess 1"})
    assert other.status_code == 401

    await asyncio.sleep(retry_after + 0.1)
    assert (
        await strict.post("/api/v1/auth/login", json={"email": "target@example.com", "password": PASSWORD})
    ).status_code == 200


async def test_limits_per_ip_cover_register_forgot_and_verify(strict: httpx.AsyncClient) -> None:
    codes = []
    for i in range(7):
        response = await strict.post("/api/v1/auth/forgot-password", json={"email": f"u{i}@example.com"})
        codes.append(response.status_code)
    assert codes == [202] * 6 + [429]
    register = await strict.post(
        "/api/v1/auth/register", json={"email": "new@example.com", "password": PASSWORD, "full_name": "N"}
    )
    assert register.status_code == 201  # each action has its own budget
    verify = [(await strict.post("/api/v1/auth/verify-email", json={"token": "t" * 43})).status_code for _ in range(7)]
    assert verify == [422] * 6 + [429]


async def test_limits_hold_across_processes(app: Litestar, settings: Settings, strict: httpx.AsyncClient) -> None:
    """Two app instances (as two web processes would) share the counters in Redis."""
    second = create_app(msgspec.structs.replace(settings, auth_rate_limit_account="3/2", auth_rate_limit_ip="6/2"))
    async with (
        running_lifespan(second),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://t") as other,
    ):
        statuses = []
        for http in (strict, other, strict, other):
            response = await http.post(
                "/api/v1/auth/login", json={"email": "x@example.com", "password": "guess guess 1"}
            )
            statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 429]


async def test_no_response_leaks_a_hash_or_stored_token(client: httpx.AsyncClient, mailbox, run_jobs) -> None:
    account = await signed_in(client, "leak@example.com", verified_by=(mailbox, run_jobs))
    bodies = [
        (await client.get("/api/v1/users/me", headers=account.headers)).text,
        (await client.put("/api/v1/users/me", headers=account.headers, json={"full_name": "L"})).text,
        (await client.get("/api/v1/users/me/activity", headers=account.headers)).text,
        (await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})).text,
        (
            await client.post(
                "/api/v1/auth/register", json={"email": "leak2@example.com", "password": PASSWORD, "full_name": "L"}
            )
        ).text,
        (await client.get("/schema/openapi.json")).text,
    ]
    for body in bodies:
        for secret in ("password_hash", "token_hash", "$argon2"):
            assert secret not in body
