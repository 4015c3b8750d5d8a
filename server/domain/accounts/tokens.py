"""Access tokens (JWT, HS256 pinned, key ids for rotation) and opaque secrets.

Access tokens carry ``iss``, ``aud``, ``sub`` (user id), ``sid`` (session id),
``exp``, ``iat`` and ``jti``; they live ``ACCESS_TOKEN_TTL`` seconds. Refresh,
verification and reset tokens are opaque random strings stored only as their
SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from server.foundation.errors import Unauthorized
from server.foundation.settings import Settings
from server.foundation.state import AppState

log = logging.getLogger("lounges.auth")

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "sid", "exp", "iat", "jti"]
LEEWAY = 5  # seconds of clock skew allowed on exp
VERIFIED_KEPT = 8192  # tokens whose signature and claims were checked, kept until they expire


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified content of an access token."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    issued_at: int
    expires_at: int


class TokenKeys:
    """The signing key (first of ``JWT_KEYS``) and every key that still verifies."""

    def __init__(self, settings: Settings) -> None:
        entries = settings.jwt_keys
        if not entries:
            log.warning("JWT_KEYS is empty: using an ephemeral signing key; tokens end with this process")
            entries = [f"ephemeral:{secrets.token_urlsafe(48)}"]
        self.keys: dict[str, bytes] = {}
        self._verifying: dict[str, jwt.PyJWK] = {}  # prepared once, not on every decode
        for entry in entries:
            kid, _, secret = entry.partition(":")
            self.keys[kid] = secret.encode()
            self._verifying[kid] = jwt.PyJWK(
                {"kty": "oct", "k": base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()}, ALGORITHM
            )
        self.signing_kid = entries[0].partition(":")[0]
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl = settings.access_token_ttl
        # A token is immutable: once its signature and claims passed, only its expiry can
        # change the answer. A client sends the same token for minutes, so checking it again
        # (~50 µs of HMAC and base64) is kept off every request; the oldest go first.
        self._verified: dict[str, AccessClaims] = {}

    def issue(self, user_id: uuid.UUID, session_id: uuid.UUID) -> tuple[str, int]:
        """A new access token and its lifetime in seconds."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.keys[self.signing_kid], algorithm=ALGORITHM, headers={"kid": self.signing_kid})
        return token, self.ttl

    def verify(self, token: str, *, keep: bool = True) -> AccessClaims:
        """Check signature, algorithm, key id, issuer, audience and expiry. Without ``keep`` a
        token not checked before is not remembered (one presented once, as a socket's)."""
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() > claims.expires_at + LEEWAY:
                del self._verified[token]
                raise Unauthorized("access token expired", code="token_expired")
            return claims
        claims = self._decode(token)
        if not keep:
            return claims
        if len(self._verified) >= VERIFIED_KEPT:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
            key = self._verifying.get(header.get("kid", ""))
            if key is None or header.get("alg") != ALGORITHM:
                raise jwt.InvalidTokenError("unknown key or algorithm")
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": _REQUIRED_CLAIMS},
                leeway=LEEWAY,
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                issued_at=int(claims["iat"]),
                expires_at=int(claims["exp"]),
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("access token expired", code="token_expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthorized("invalid access token", code="invalid_token") from None


def new_secret() -> str:
    """A fresh opaque token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def keys_of(state: AppState) -> TokenKeys:
    """The process's :class:`TokenKeys`, made from its settings on first use and kept on the state."""
    keys = state.extensions.get("accounts.token_keys")
    if keys is None:
        keys = state.extensions["accounts.token_keys"] = TokenKeys(state.settings)
    return keys
