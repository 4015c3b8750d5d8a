"""Google sign-in end to end, against a real OpenID provider over real HTTP.

The provider (``tests/support/oidc.py``) runs on 127.0.0.1 and signs real ID
tokens; the test plays the browser: ``/auth/google`` → the provider's
``/authorize`` → our callback → the token pair → ``/users/me``. Nothing of ours
is mocked: PostgreSQL, Redis, the token exchange and the JWKS fetch are real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar

from server.app import create_app
from server.domain.tables.accounts import OAuthAccount, User
from server.foundation.control import control_channel, decode_control
from server.foundation.settings import Settings
from tests.support.accounts import PASSWORD, login, register
from tests.support.lifespan import running_lifespan
from tests.support.oidc import DROP, OidcProvider, pkce_challenge, running_provider
from tests.support.shard_listen import listening

BASE_URL = "http://lounges.test"
CALLBACK_PATH = "/api/v1/auth/google/callback"
REDIRECT_URI = BASE_URL + CALLBACK_PATH
ME = "/api/v1/users/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, strict_parsing=True).items()}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with our stable ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["code"] == code, body
    assert body["status"] == status and body["type"].endswith("/" + code)
    assert body["title"] and body["detail"]
    return body


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[OidcProvider]:
    async with running_provider(redirect_uris=(REDIRECT_URI,)) as running:
        yield running


@pytest.fixture
async def google_app(app: Litestar, settings: Settings, provider: OidcProvider) -> AsyncIterator[Litestar]:
    """A second instance of the real app with Google pointed at the local provider
    (``app`` is requested so that tables and Redis start empty)."""
    configured = msgspec.structs.replace(
        settings,
        google_client_id=provider.client_id,
        google_client_secret=provider.client_secret,
        google_issuer=provider.issuer,
        google_authorization_endpoint=provider.authorization_endpoint,
        google_token_endpoint=provider.token_endpoint,
        google_jwks_uri=provider.jwks_uri,
        google_redirect_uri=REDIRECT_URI,
    )
    async with running_lifespan(create_app(configured)) as running:
        yield running


@pytest.fixture
async def lounges(google_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=google_app, client=("127.0.0.1", 40001))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


# -- the browser's part of the dance -------------------------------------------------------


async def start(lounges: httpx.AsyncClient) -> str:
    """``GET /auth/google``: the provider's authorization URL we are sent to."""
    response = await lounges.get("/api/v1/auth/google")
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def consent(location: str) -> str:
    """Follow the authorization URL to the provider; the user consents. Returns our callback URL."""
    async with httpx.AsyncClient() as browser:
        response = await browser.get(location)
    assert response.status_code == 302, response.text
    back = response.headers["location"]
    assert back.startswith(REDIRECT_URI + "?"), back
    assert "error" not in query_of(back), back
    return back


async def callback(lounges: httpx.AsyncClient, url: str) -> httpx.Response:
    return await lounges.get(url)


async def google_sign_in(lounges: httpx.AsyncClient) -> dict[str, Any]:
    """The whole dance, as the identity the provider is set to; returns the token pair."""
    response = await callback(lounges, await consent(await start(lounges)))
    assert response.status_code == 200, response.text
    pair = response.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["token_type"] == "bearer" and pair["expires_in"] > 0
    return pair


async def me(lounges: httpx.AsyncClient, pair: dict[str, Any]) -> dict[str, Any]:
    response = await lounges.get(ME, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.text
    return response.json()


async def login_methods(lounges: httpx.AsyncClient, pair: dict[str, Any]) -> list[str]:
    """The ``method`` of every successful sign-in in the security log, oldest first."""
    response = await lounges.get(ME + "/activity", headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.text
    events = [e for e in reversed(response.json()["events"]) if e["kind"] == "login.succeeded"]
    return [e["detail"].get("method") for e in events]


def identity(sub: str, email: str, *, verified: Any = True, name: str = "Grace Hopper") -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": sub, "email": email, "name": name}
    if verified is not DROP:
        claims["email_verified"] = verified
    return claims


async def verify_email_directly(email: str) -> None:
    await User.update({User.email_verified_at: datetime.now(UTC)}).where(User.email == email)


# -- the authorization request -------------------------------------------------------------


async def test_authorization_request_carries_state_nonce_and_pkce(
    lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    location = await start(lounges)
    assert location.startswith(provider.authorization_endpoint + "?")
    params = query_of(location)
    assert params["response_type"] == "code"
    assert params["client_id"] == provider.client_id
    assert params["redirect_uri"] == REDIRECT_URI
    assert "openid" in params["scope"].split()
    assert params["code_challenge_method"] == "S256"
    # S256 of a 32-byte digest: 43 base64url characters, no padding.
    assert len(params["code_challenge"]) == 43 and "=" not in params["code_challenge"]
    for name in ("state", "nonce"):
        assert len(params[name]) >= 32

    again = query_of(await start(lounges))
    for name in ("state", "nonce", "code_challenge"):
        assert again[name] != params[name], name


async def test_not_configured_answers_503(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/auth/google"), 503, "not_configured")
    assert_problem(await client.get(CALLBACK_PATH, params={"code": "c", "state": "s"}), 503, "not_configured")


# -- creating, signing in, linking ---------------------------------------------------------


async def test_new_google_user_is_created_verified_and_comes_back_as_the_same_user(
    lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    provider.next_identity = identity("g-1001", "Grace@Example.COM", name="Grace Hopper")
    first = await google_sign_in(lounges)
    user = await me(lounges, first)
    assert user["email"] == "grace@example.com"
    assert user["full_name"] == "Grace Hopper"
    assert user["role"] == "user" and user["email_verified"] is True
    # The provider saw a real PKCE exchange and put our nonce into the ID token.
    assert provider.token_requests == 1 and provider.refusals == []
    assert provider.issued[-1]["nonce"]

    # Google may change the address; the subject is what identifies the account.
    provider.next_identity = identity("g-1001", "grace.hopper@example.com")
    second = await google_sign_in(lounges)
    assert second["access_token"] != first["access_token"]
    assert (await me(lounges, second))["id"] == user["id"]
    assert await User.count() == 1
    assert await OAuthAccount.count() == 1
    assert await login_methods(lounges, second) == ["google_registered", "google"]

    # The account has no password to sign in with.
    refused = await lounges.post("/api/v1/auth/login", json={"email": "grace@example.com", "password": PASSWORD})
    assert_problem(refused, 401, "invalid_credentials")


async def test_verified_password_account_is_linked_and_keeps_its_password(
    lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    account = await register(lounges, "linus@example.com")
    await verify_email_directly("linus@example.com")
    before = await login(lounges, "linus@example.com")

    provider.next_identity = identity("g-2002", "LINUS@example.com")
    pair = await google_sign_in(lounges)
    user = await me(lounges, pair)
    assert user["id"] == account["id"] and user["email_verified"] is True
    assert await User.count() == 1

    # Nothing was taken from the verified owner: the old session and the password still work.
    assert (await me(lounges, before))["id"] == account["id"]
    assert (await me(lounges, await login(lounges, "linus@example.com")))["id"] == account["id"]

    again = await google_sign_in(lounges)
    assert (await me(lounges, again))["id"] == account["id"]
    assert await OAuthAccount.count() == 1
    assert await login_methods(lounges, again) == ["password", "google_linked", "password", "google"]


async def test_linking_an_unverified_local_account_drops_its_password_and_sessions(
    google_app: Litestar, lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    # Somebody registered the address first and never proved it was theirs.
    squatter = await register(lounges, "victim@example.com")
    assert squatter["email_verified"] is False
    old = await login(lounges, "victim@example.com")
    old_sid = jwt.decode(old["access_token"], options={"verify_signature": False})["sid"]

    state = google_app.state.app_state
    async with listening(state.realtime_redis, control_channel(state.settings.redis_prefix)) as control:
        provider.next_identity = identity("g-3003", "victim@example.com")
        pair = await google_sign_in(lounges)
        message = await asyncio.wait_for(control.get(), 3)

    user = await me(lounges, pair)
    assert user["id"] == squatter["id"] and user["email_verified"] is True

    # Every other node hears the old sessions are gone.
    event = decode_control(message)
    assert event.kind == "session.revoked" and str(event.user_id) == squatter["id"]
    assert [str(s) for s in event.session_ids] == [old_sid]

    # The squatter's session, refresh token and password are all dead.
    assert_problem(await lounges.get(ME, headers=bearer(old["access_token"])), 401, "session_revoked")
    refreshed = await lounges.post("/api/v1/auth/refresh", json={"refresh_token": old["refresh_token"]})
    assert refreshed.status_code == 401 and refreshed.json()["code"] in {"session_revoked", "invalid_token"}
    refused = await lounges.post("/api/v1/auth/login", json={"email": "victim@example.com", "password": PASSWORD})
    assert_problem(refused, 401, "invalid_credentials")
    assert (await User.select(User.password_hash).where(User.id == squatter["id"]).first())["password_hash"] is None

    # The Google owner's own session is live.
    assert (await me(lounges, pair))["id"] == squatter["id"]


@pytest.mark.parametrize("verified", [False, "true", DROP], ids=["false", "string-true", "missing"])
async def test_google_unverified_email_links_nothing(
    lounges: httpx.AsyncClient, provider: OidcProvider, verified: Any
) -> None:
    account = await register(lounges, "owner@example.com")
    await verify_email_directly("owner@example.com")
    session = await login(lounges, "owner@example.com")

    provider.next_identity = identity("g-4004", "owner@example.com", verified=verified)
    response = await callback(lounges, await consent(await start(lounges)))
    assert_problem(response, 409, "email_unverified")
    assert await OAuthAccount.count() == 0
    assert await User.count() == 1

    # The owner is untouched.
    assert (await me(lounges, session))["id"] == account["id"]
    await login(lounges, "owner@example.com")

    # Nor does an unconfirmed address open a new account.
    provider.next_identity = identity("g-4005", "stranger@example.com", verified=verified)
    response = await callback(lounges, await consent(await start(lounges)))
    assert_problem(response, 409, "email_unverified")
    assert await User.count() == 1


async def test_disabled_account_cannot_sign_in_with_google(lounges: httpx.AsyncClient, provider: OidcProvider) -> None:
    provider.next_identity = identity("g-5005", "gone@example.com")
    user = await me(lounges, await google_sign_in(lounges))
    await User.update({User.is_active: False}).where(User.email == "gone@example.com")
    response = await callback(lounges, await consent(await start(lounges)))
    assert_problem(response, 401, "account_disabled")
    assert await User.count() == 1 and user["email"] == "gone@example.com"


# -- state -----------------------------------------------------------------------------------


async def test_state_is_remembered_ten_minutes_and_consumed_once(
    google_app: Litestar, lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    redis = google_app.state.app_state.redis
    prefix = google_app.state.app_state.settings.redis_prefix
    location = await start(lounges)
    flow_state = query_of(location)["state"]
    [key] = [k async for k in redis.scan_iter(match=f"{prefix}:oidc:*")]
    assert flow_state.encode() not in key  # stored under a hash, not the bearer value itself
    assert 0 < await redis.ttl(key) <= 600

    back = await consent(location)
    assert query_of(back)["state"] == flow_state
    assert (await callback(lounges, back)).status_code == 200
    assert [k async for k in redis.scan_iter(match=f"{prefix}:oidc:*")] == []

    # The same callback again (a replayed or double-submitted redirect).
    assert_problem(await callback(lounges, back), 400, "invalid_oauth_state")


async def test_unknown_state_is_refused_before_the_code_is_spent(
    lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    back = await consent(await start(lounges))
    code = query_of(back)["code"]
    response = await lounges.get(CALLBACK_PATH, params={"code": code, "state": "forged-" + "x" * 40})
    assert_problem(response, 400, "invalid_oauth_state")
    assert provider.token_requests == 0
    # The genuine callback still works: the code was never sent to the provider.
    assert (await callback(lounges, back)).status_code == 200


async def test_a_failed_callback_still_consumes_the_state(lounges: httpx.AsyncClient, provider: OidcProvider) -> None:
    back = await consent(await start(lounges))
    params = query_of(back)
    bogus = await lounges.get(CALLBACK_PATH, params={"code": "not-a-code", "state": params["state"]})
    assert_problem(bogus, 401, "oauth_code_rejected")
    assert provider.refusals == [("invalid_grant", "unknown or already used code")]
    # The state went with the failed attempt; the real code cannot be used with it any more.
    assert_problem(await callback(lounges, back), 400, "invalid_oauth_state")
    assert await User.count() == 0


# -- the code exchange -----------------------------------------------------------------------


async def test_injected_code_is_refused_by_pkce(lounges: httpx.AsyncClient, provider: OidcProvider) -> None:
    """An attacker who got hold of a victim's code pastes it into a flow of their own:
    our server sends that flow's verifier, which does not match the victim's challenge."""
    provider.next_identity = identity("g-victim", "victim@example.com")
    victims_code = query_of(await consent(await start(lounges)))["code"]

    provider.next_identity = identity("g-attacker", "attacker@example.com")
    attackers_state = query_of(await consent(await start(lounges)))["state"]
    response = await lounges.get(CALLBACK_PATH, params={"code": victims_code, "state": attackers_state})
    assert_problem(response, 401, "oauth_code_rejected")
    assert provider.refusals == [("invalid_grant", "pkce: code_verifier does not match code_challenge")]
    assert await User.count() == 0


async def test_the_provider_stand_in_enforces_the_token_endpoint_rules(provider: OidcProvider) -> None:
    """The stand-in is strict like the real thing, so the tests above mean something."""
    verifier = "v" * 43 + "erifier"
    authorize = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email",
        "state": "s" * 32,
        "nonce": "n" * 32,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    assert pkce_challenge(verifier) == (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )

    async with httpx.AsyncClient(base_url=provider.url) as http:

        async def code() -> str:
            response = await http.get("/authorize", params=authorize)
            assert response.status_code == 302
            return query_of(response.headers["location"])["code"]

        def redeem(code_: str, **changes: str) -> dict[str, str]:
            return {
                "grant_type": "authorization_code",
                "code": code_,
                "redirect_uri": REDIRECT_URI,
                "client_id": provider.client_id,
                "client_secret": provider.client_secret,
                "code_verifier": verifier,
                **changes,
            }

        # Authorization request checks: bad client / redirect URI are not redirected to.
        assert (await http.get("/authorize", params={**authorize, "client_id": "other"})).status_code == 400
        assert (
            await http.get("/authorize", params={**authorize, "redirect_uri": "http://evil.test/cb"})
        ).status_code == 400
        for changes in (
            {"code_challenge_method": "plain"},
            {"scope": "email profile"},
            {"response_type": "token"},
            {"nonce": ""},
            {"code_challenge": ""},
        ):
            refused = await http.get("/authorize", params={**authorize, **changes})
            assert refused.status_code == 302, changes
            assert "error" in query_of(refused.headers["location"]) and "code" not in query_of(
                refused.headers["location"]
            )

        # Token request checks.
        wrong_verifier = await http.post("/token", data=redeem(await code(), code_verifier="w" * 50))
        assert wrong_verifier.status_code == 400 and wrong_verifier.json()["error"] == "invalid_grant"
        wrong_secret = await http.post("/token", data=redeem(await code(), client_secret="nope"))
        assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
        wrong_redirect = await http.post("/token", data=redeem(await code(), redirect_uri=BASE_URL + "/elsewhere"))
        assert wrong_redirect.status_code == 400 and wrong_redirect.json()["error"] == "invalid_grant"
        wrong_grant = await http.post("/token", data=redeem(await code(), grant_type="password"))
        assert wrong_grant.status_code == 400 and wrong_grant.json()["error"] == "unsupported_grant_type"

        good = await code()
        answer = await http.post("/token", data=redeem(good))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]
        reused = await http.post("/token", data=redeem(good))
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

        # The ID token verifies against the published JWKS.
        jwks = jwt.PyJWKSet.from_dict((await http.get("/jwks")).json())
        header = jwt.get_unverified_header(body["id_token"])
        assert header["alg"] == "RS256" and header["kid"] == jwks.keys[0].key_id
        claims = jwt.decode(
            body["id_token"],
            jwks[header["kid"]].key,
            algorithms=["RS256"],
            audience=provider.client_id,
            issuer=provider.issuer,
        )
        assert claims["nonce"] == "n" * 32 and claims["sub"] == provider.next_identity["sub"]
        assert claims["email_verified"] is True and claims["exp"] > claims["iat"]


async def test_unreachable_provider_answers_503(lounges: httpx.AsyncClient, provider: OidcProvider) -> None:
    back = await consent(await start(lounges))
    await provider.stop()
    assert_problem(await callback(lounges, back), 503, "oauth_provider_unavailable")


# -- the ID token ----------------------------------------------------------------------------


def _past() -> dict[str, int]:
    moment = int(time.time())
    return {"exp": moment - 300, "iat": moment - 3900}


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"tamper": {"nonce": "someone-elses-nonce"}}, id="nonce-tampered"),
        pytest.param({"tamper": {"nonce": DROP}}, id="nonce-missing"),
        pytest.param({"tamper": {"aud": "someone-else.apps.example"}}, id="wrong-audience"),
        pytest.param({"tamper": {"iss": "https://accounts.evil.example"}}, id="wrong-issuer"),
        pytest.param({"tamper": "expired"}, id="expired"),
        pytest.param({"tamper": {"sub": DROP}}, id="no-subject"),
        pytest.param({"sign_with_unknown_key": True}, id="unknown-key"),
        pytest.param({"forge_signature": True}, id="forged-signature"),
        pytest.param({"header_alg": "none"}, id="alg-none"),
        pytest.param({"header_alg": "HS256"}, id="alg-hs256"),
        pytest.param({"header_alg": "ES256"}, id="alg-mismatch-with-key"),
    ],
)
async def test_an_id_token_that_fails_verification_is_refused(
    lounges: httpx.AsyncClient, provider: OidcProvider, knobs: dict[str, Any]
) -> None:
    provider.next_identity = identity("g-6006", "mallory@example.com")
    for name, value in knobs.items():
        setattr(provider, name, _past() if value == "expired" else value)
    response = await callback(lounges, await consent(await start(lounges)))
    assert_problem(response, 401, "invalid_id_token")
    assert provider.refusals == [] and len(provider.issued) == 1  # the provider did answer an ID token
    assert await User.count() == 0 and await OAuthAccount.count() == 0

    # With the knob back to normal the same identity signs in fine.
    provider.tamper, provider.sign_with_unknown_key, provider.forge_signature, provider.header_alg = (
        {},
        False,
        False,
        None,
    )
    assert (await me(lounges, await google_sign_in(lounges)))["email"] == "mallory@example.com"


async def test_key_rotation_at_the_provider_refetches_the_jwks(
    lounges: httpx.AsyncClient, provider: OidcProvider
) -> None:
    provider.next_identity = identity("g-7007", "rotor@example.com")
    first = await me(lounges, await google_sign_in(lounges))
    assert provider.jwks_requests == 1

    await google_sign_in(lounges)
    assert provider.jwks_requests == 1  # served from the cache

    old_kid = provider.current_key.kid
    assert provider.rotate_key().kid != old_kid
    assert (await me(lounges, await google_sign_in(lounges)))["id"] == first["id"]
    assert provider.jwks_requests == 2  # an unknown kid made the server look again

    # Providers also sign with EC keys (ES256).
    provider.rotate_key("EC")
    assert (await me(lounges, await google_sign_in(lounges)))["id"] == first["id"]
    assert provider.jwks_requests == 3
    assert await User.count() == 1
