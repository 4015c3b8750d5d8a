"""Google sign-in: OpenID Connect authorization code flow with PKCE, state and nonce.

The flow's secrets (state → nonce + PKCE verifier) live in Redis for ten
minutes and are consumed once. The ID token is verified against the
provider's JWKS (signature, ``iss``, ``aud``, ``exp``, ``nonce``). An existing
account is linked only when the provider says the email is verified; linking
to a local account whose email was never verified also drops its password
and sessions, so nobody who pre-registered someone else's address keeps a way in.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import msgspec

from server.domain.accounts.schemas import TokenPair
from server.domain.accounts.services import (
    ClientInfo,
    announce_revoked,
    normalize_email,
    now,
    open_session,
    record_event,
    revoke_sessions,
)
from server.domain.tables.accounts import OAuthAccount, OAuthProvider, User
from server.foundation.errors import BadRequest, Conflict, Unauthorized, Unavailable
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

FLOW_TTL = timedelta(minutes=10)
_ID_TOKEN_ALGORITHMS = ["RS256", "ES256"]
_JWKS_MAX_AGE = 3600.0
_jwks_cache: dict[str, tuple[float, jwt.PyJWKSet]] = {}


class _Flow(msgspec.Struct):
    nonce: str
    verifier: str


def _flow_key(state: AppState, flow_state: str) -> str:
    return f"{state.settings.redis_prefix}:oidc:google:{hashlib.sha256(flow_state.encode()).hexdigest()}"


def _require_configured(state: AppState) -> None:
    if not (state.settings.google_client_id and state.settings.google_client_secret):
        raise Unavailable("Google sign-in is not configured", code="not_configured")


async def start_google_sign_in(state: AppState) -> str:
    """Remember a new flow and return the provider's authorization URL."""
    _require_configured(state)
    settings = state.settings
    flow_state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    await state.redis.set(
        _flow_key(state, flow_state),
        msgspec.json.encode(_Flow(nonce=nonce, verifier=verifier)),
        ex=int(FLOW_TTL.total_seconds()),
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.google_client_id,
            "redirect_uri": settings.google_redirect_uri,
            "scope": "openid email profile",
            "state": flow_state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "prompt": "select_account",
        }
    )
    return f"{settings.google_authorization_endpoint}?{query}"


async def finish_google_sign_in(state: AppState, *, code: str, flow_state: str, client: ClientInfo) -> TokenPair:
    """Exchange the code, verify the ID token, then sign in, link or create the account."""
    _require_configured(state)
    raw_flow = await state.redis.getdel(_flow_key(state, flow_state))
    if raw_flow is None:
        raise BadRequest("unknown or expired sign-in attempt; start again", code="invalid_oauth_state")
    flow = msgspec.json.decode(raw_flow, type=_Flow)
    claims = await _verified_id_token(state, await _exchange_code(state, code, flow.verifier), flow.nonce)
    subject = str(claims["sub"])
    email = normalize_email(str(claims.get("email", "")))
    email_verified = claims.get("email_verified") is True

    revoked: list[Any] = []
    async with unit_of_work(state.engine):
        linked = (
            await OAuthAccount.select(OAuthAccount.user)
            .where(OAuthAccount.provider == OAuthProvider.google, OAuthAccount.subject == subject)
            .first()
        )
        if linked:
            user_id = linked["user"]
            user = await User.select(User.is_active).where(User.id == user_id).first()
            assert user is not None  # the linked account's user row (a foreign key)
            if not user["is_active"]:
                raise Unauthorized("account disabled", code="account_disabled")
            method = "google"
        else:
            if not (email and email_verified):
                raise Conflict("Google did not confirm this email address", code="email_unverified")
            existing = (
                await User.select(User.id, User.is_active, User.email_verified_at).where(User.email == email).first()
            )
            if existing:
                if not existing["is_active"]:
                    raise Unauthorized("account disabled", code="account_disabled")
                user_id = existing["id"]
                if existing["email_verified_at"] is None:
                    await User.update({User.email_verified_at: now(), User.password_hash: None}).where(
                        User.id == user_id
                    )
                    revoked = await revoke_sessions(user_id, "google_link_unverified")
                method = "google_linked"
            else:
                [created] = await User.insert(
                    User(
                        email=email,
                        full_name=str(claims.get("name") or email.split("@", 1)[0])[:200],
                        password_hash=None,
                        email_verified_at=now(),
                    )
                ).returning(User.id)
                user_id = created["id"]
                method = "google_registered"
            await OAuthAccount.insert(
                OAuthAccount(user=user_id, provider=OAuthProvider.google, subject=subject, email=email)
            )
        await User.update({User.last_login_at: now()}).where(User.id == user_id)
        pair = await open_session(state, user_id, client)
        await record_event(user_id, "login.succeeded", client, method=method)
        await on_commit(partial(announce_revoked, state, user_id, revoked, "google_link_unverified"))
    return pair


async def _exchange_code(state: AppState, code: str, verifier: str) -> str:
    settings = state.settings
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.post(
                settings.google_token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": settings.google_redirect_uri,
                    "client_id": settings.google_client_id,
                    "client_secret": settings.google_client_secret,
                    "code_verifier": verifier,
                },
                headers={"Accept": "application/json"},
            )
    except httpx.HTTPError as exc:
        raise Unavailable("Google could not be reached", code="oauth_provider_unavailable") from exc
    if response.status_code != 200:
        raise Unauthorized("Google refused the sign-in code", code="oauth_code_rejected")
    try:
        id_token = response.json().get("id_token")
    except (ValueError, AttributeError):
        id_token = None
    if not isinstance(id_token, str):
        raise Unauthorized("Google sent no ID token", code="invalid_id_token")
    return id_token


async def _signing_key(state: AppState, kid: str) -> jwt.PyJWK:
    uri = state.settings.google_jwks_uri
    cached = _jwks_cache.get(uri)
    for attempt in range(2):
        if cached is None or attempt == 1 or time.monotonic() - cached[0] > _JWKS_MAX_AGE:
            try:
                async with httpx.AsyncClient(timeout=10.0) as http:
                    response = await http.get(uri)
                    response.raise_for_status()
            except httpx.HTTPError as exc:
                raise Unavailable(
                    "Google's signing keys could not be fetched", code="oauth_provider_unavailable"
                ) from exc
            try:
                cached = (time.monotonic(), jwt.PyJWKSet.from_dict(response.json()))
            except (ValueError, jwt.PyJWKSetError) as exc:
                raise Unavailable("Google's signing keys are unusable", code="oauth_provider_unavailable") from exc
            _jwks_cache[uri] = cached
        for key in cached[1].keys:
            if key.key_id == kid:
                return key
    raise Unauthorized("ID token signed by an unknown key", code="invalid_id_token")


async def _verified_id_token(state: AppState, id_token: str, nonce: str) -> dict[str, Any]:
    settings = state.settings
    try:
        header = jwt.get_unverified_header(id_token)
        if header.get("alg") not in _ID_TOKEN_ALGORITHMS:
            raise jwt.InvalidTokenError("algorithm not allowed")
        key = await _signing_key(state, str(header.get("kid", "")))
        claims = jwt.decode(
            id_token,
            key,  # the PyJWK: PyJWT then refuses a header alg the key was not made for
            algorithms=_ID_TOKEN_ALGORITHMS,
            audience=settings.google_client_id,
            issuer=settings.google_issuer,
            options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            leeway=30,
        )
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid ID token: {exc}", code="invalid_id_token") from None
    if not secrets.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise Unauthorized("ID token nonce does not match", code="invalid_id_token")
    return claims
