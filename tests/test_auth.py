"""Registration, verification, sign-in, tokens, refresh rotation, sign-out, password reset.

Everything goes through HTTP against the real app, PostgreSQL, Redis, the real
arq worker and a real SMTP server whose mail the tests read.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar

from server.foundation.control import control_channel, decode_control
from server.foundation.settings import Settings
from tests.support.accounts import PASSWORD, login, register, signed_in, token_in
from tests.support.shard_listen import listening
from tests.support.smtp import SmtpSink

ME = "/api/v1/users/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_mails_a_link_that_verifies_the_email(
    client: httpx.AsyncClient, mailbox: SmtpSink, run_jobs
) -> None:
    user = await register(client, "Ada@Example.COM", full_name="Ada Lovelace")
    assert user["email"] == "ada@example.com"
    assert user["full_name"] == "Ada Lovelace"
    assert user["role"] == "user" and user["email_verified"] is False
    uuid.UUID(user["id"])

    await run_jobs()
    [message] = await mailbox.wait_for(1)
    assert message["To"] == "ada@example.com"
    token = token_in(message, "verify-email")

    verified = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 200
    tokens = await login(client, "ada@example.com")
    me = await client.get(ME, headers=bearer(tokens["access_token"]))
    assert me.json()["email_verified"] is True

    again = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert again.status_code == 422 and again.json()["code"] == "invalid_token"


async def test_resend_verification_answers_the_same_for_unknown_addresses(
    client: httpx.AsyncClient, mailbox: SmtpSink, run_jobs
) -> None:
    await register(client, "resend@example.com")
    known = await client.post("/api/v1/auth/verify-email/resend", json={"email": "resend@example.com"})
    unknown = await client.post("/api/v1/auth/verify-email/resend", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    await run_jobs()
    assert [m["To"] for m in mailbox.messages] == ["resend@example.com", "resend@example.com"]


async def test_duplicate_email_is_refused_case_insensitively(client: httpx.AsyncClient) -> None:
    await register(client, "dup@example.com")
    response = await client.post(
        "/api/v1/auth/register", json={"email": "DUP@example.com", "password": PASSWORD, "full_name": "Other"}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "email_unavailable"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"email": "a@example.com", "password": "short", "full_name": "A"}, "weak_password"),
        ({"email": "a@example.com", "password": "password123", "full_name": "A"}, "weak_password"),
        ({"email": "a@example.com", "password": "QwertyUiop", "full_name": "A"}, "weak_password"),
        ({"email": "not-an-email", "password": PASSWORD, "full_name": "A"}, "validation_failed"),
        ({"email": "a@example.com", "password": PASSWORD}, "validation_failed"),
        ({"email": "a@example.com", "password": PASSWORD, "full_name": "A", "role": "admin"}, "validation_failed"),
        ({"email": "a@example.com", "password": PASSWORD, "full_name": "   "}, "invalid_full_name"),
    ],
)
async def test_bad_registrations_get_a_clear_problem(client: httpx.AsyncClient, body: dict, code: str) -> None:
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert (
        await client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": PASSWORD})
    ).status_code == 401


async def test_unverified_account_may_sign_in(client: httpx.AsyncClient) -> None:
    account = await signed_in(client, "fresh@example.com")
    me = await client.get(ME, headers=account.headers)
    assert me.status_code == 200
    assert me.json()["email_verified"] is False


async def test_wrong_password_and_unknown_email_look_the_same(client: httpx.AsyncClient) -> None:
    await register(client, "known@example.com")
    wrong = await client.post("/api/v1/auth/login", json={"email": "known@example.com", "password": "not the password"})
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": "ghost@example.com", "password": "not the password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["code"] == unknown.json()["code"] == "invalid_credentials"
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_token_pair_shape(client: httpx.AsyncClient, settings: Settings) -> None:
    await register(client, "shape@example.com")
    tokens = await login(client, "shape@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == settings.access_token_ttl
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header == {"alg": "HS256", "kid": "current", "typ": "JWT"}
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "sid", "exp", "iat", "jti"}
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl


def _forge(claims: dict, key: str, kid: str = "current", algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


async def test_bad_access_tokens_are_rejected(client: httpx.AsyncClient, settings: Settings) -> None:
    await register(client, "tokens@example.com")
    tokens = await login(client, "tokens@example.com")
    good = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    secret = "c" * 40
    now = int(time.time())
    none_token = (
        jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT","kid":"current"}').decode()
        + "."
        + jwt.utils.base64url_encode(msgspec.json.encode(good)).decode()
        + "."
    )
    cases = {
        "expired": (_forge({**good, "iat": now - 4000, "exp": now - 3000}, secret), "token_expired"),
        "forged": (_forge(good, "f" * 40), "invalid_token"),
        "wrong audience": (_forge({**good, "aud": "someone-else"}, secret), "invalid_token"),
        "wrong issuer": (_forge({**good, "iss": "evil"}, secret), "invalid_token"),
        "alg none": (none_token, "invalid_token"),
        "unknown key id": (_forge(good, secret, kid="stolen"), "invalid_token"),
        "missing sid": (_forge({k: v for k, v in good.items() if k != "sid"}, secret), "invalid_token"),
        "garbage": ("not.a.jwt", "invalid_token"),
    }
    for name, (token, code) in cases.items():
        response = await client.get(ME, headers=bearer(token))
        assert response.status_code == 401, name
        assert response.json()["code"] == code, name
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get(ME)).json()["code"] == "missing_token"
    assert (await client.get(ME, headers=bearer(tokens["access_token"]))).status_code == 200


async def test_rotated_out_key_still_verifies(client: httpx.AsyncClient) -> None:
    user = await register(client, "rotate@example.com")
    session_tokens = await login(client, "rotate@example.com")
    claims = jwt.decode(session_tokens["access_token"], options={"verify_signature": False})
    previous = _forge(claims, "p" * 40, kid="previous")
    response = await client.get(ME, headers=bearer(previous))
    assert response.status_code == 200
    assert response.json()["id"] == user["id"]


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    await register(client, "family@example.com")
    first = await login(client, "family@example.com")
    second = (await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert second["refresh_token"] != first["refresh_token"]
    third = (await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()
    assert (await client.get(ME, headers=bearer(third["access_token"]))).status_code == 200

    replay = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert replay.json()["code"] == "refresh_token_reused"
    # The thief's and the owner's newest tokens are dead alike.
    newest = await client.post("/api/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert newest.status_code == 401 and newest.json()["code"] == "session_revoked"
    assert (await client.get(ME, headers=bearer(third["access_token"]))).json()["code"] == "session_revoked"

    other = await login(client, "family@example.com")
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200


async def test_unknown_refresh_token_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": "x" * 43})
    assert response.status_code == 401 and response.json()["code"] == "invalid_token"


async def test_logout_revokes_the_session_and_tells_every_node(app: Litestar, client: httpx.AsyncClient) -> None:
    account = await signed_in(client, "bye@example.com")
    other = await login(client, "bye@example.com")
    state = app.state.app_state
    async with listening(state.realtime_redis, control_channel(state.settings.redis_prefix)) as control:
        response = await client.post("/api/v1/auth/logout", headers=account.headers)
        assert response.status_code == 204
        message = await asyncio.wait_for(control.get(), 3)
    event = decode_control(message)
    assert event.kind == "session.revoked" and str(event.user_id) == account.id
    sid = jwt.decode(account.access_token, options={"verify_signature": False})["sid"]
    assert [str(s) for s in event.session_ids] == [sid]

    assert (await client.get(ME, headers=account.headers)).json()["code"] == "session_revoked"
    refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 401
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200


async def test_password_reset_flow(client: httpx.AsyncClient, mailbox: SmtpSink, run_jobs) -> None:
    account = await signed_in(client, "forgetful@example.com")
    known = await client.post("/api/v1/auth/forgot-password", json={"email": "forgetful@example.com"})
    unknown = await client.post("/api/v1/auth/forgot-password", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()

    await run_jobs()
    reset_mail = [m for m in mailbox.messages if "Reset" in m["Subject"]]
    assert [m["To"] for m in reset_mail] == ["forgetful@example.com"]
    token = token_in(reset_mail[0], "reset-password")

    weak = await client.post("/api/v1/auth/reset-password", json={"token": token, "password": "1234567890"})
    assert weak.status_code == 422 and weak.json()["code"] == "weak_password"

    new_password = "a brand new passphrase"
    done = await client.post("/api/v1/auth/reset-password", json={"token": token, "password": new_password})
    assert done.status_code == 200, done.text
    assert (await client.get(ME, headers=account.headers)).json()["code"] == "session_revoked"
    assert (
        await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    ).status_code == 401
    await login(client, account.email, new_password)

    reused = await client.post(
        "/api/v1/auth/reset-password", json={"token": token, "password": "yet another passphrase"}
    )
    assert reused.status_code == 422 and reused.json()["code"] == "invalid_token"


async def test_login_rehashes_passwords_made_with_older_parameters(client: httpx.AsyncClient) -> None:
    from argon2 import PasswordHasher

    from server.domain.tables.accounts import User

    await register(client, "legacy@example.com")
    weak_hash = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    await User.update({User.password_hash: weak_hash}).where(User.email == "legacy@example.com")

    await login(client, "legacy@example.com")
    stored = (await User.select(User.password_hash).where(User.email == "legacy@example.com").first())["password_hash"]
    assert stored != weak_hash
    assert stored.startswith("$argon2id$") and "m=65536,t=3" in stored
    await login(client, "legacy@example.com")
