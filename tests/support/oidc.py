"""A local OpenID provider that speaks the real wire protocol over real HTTP.

It stands in for Google in the sign-in tests: a Litestar app served by uvicorn
on 127.0.0.1 (a free port) inside the test's event loop, with

* ``GET /authorize`` — checks the authorization request (code flow, client,
  registered redirect URI, ``openid`` scope, PKCE S256, ``state``, ``nonce``),
  "the user consents" as :attr:`OidcProvider.next_identity` and redirects back
  with a single-use code;
* ``POST /token`` — authenticates the client (``client_secret_post`` or
  ``client_secret_basic``), redeems the code once (unexpired, same redirect URI,
  PKCE verifier matching the challenge) and answers an ID token signed with a
  real key (RS256 by default, ES256 after ``rotate_key("EC")``);
* ``GET /jwks`` — the public signing key(s).

Knobs for the tests that must fail: :attr:`tamper` (override or drop ID-token
claims), :attr:`sign_with_unknown_key`, :attr:`forge_signature`,
:attr:`header_alg` and :meth:`rotate_key`. Counters and the list of refused
token requests let a test see what the provider saw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from litestar import Litestar, Request, Response, get, post

DROP = object()
"""A :attr:`OidcProvider.tamper` value that removes the claim from the ID token."""

CODE_TTL = 60.0


@dataclass
class SigningKey:
    """A private key, its ``kid`` and the JWS algorithm it signs with."""

    kid: str
    alg: str
    private_key: Any

    @classmethod
    def generate(cls, kind: str = "RSA") -> SigningKey:
        kid = f"test-{uuid.uuid4().hex[:12]}"
        if kind == "RSA":
            return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if kind == "EC":
            return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
        raise ValueError(f"unknown key kind {kind!r}")

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        jwk = algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, alg: str | None = None) -> str:
        return jwt.encode(claims, self.private_key, algorithm=alg or self.alg, headers={"kid": kid or self.kid})


@dataclass
class _Grant:
    """What an authorization code was issued for."""

    client_id: str
    redirect_uri: str
    nonce: str
    code_challenge: str
    identity: dict[str, Any]
    expires_at: float


@dataclass
class OidcProvider:
    """The provider's state and knobs; :func:`running_provider` serves it."""

    client_id: str = "lounges-test-client.apps.example"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    redirect_uris: tuple[str, ...] = ("http://lounges.test/api/v1/auth/google/callback",)
    # The identity "the user" consents as on every /authorize until changed.
    next_identity: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "100000000000000000001",
            "email": "someone@example.com",
            "email_verified": True,
            "name": "Some One",
        }
    )
    # Claims to override in the next ID tokens (a value of DROP removes the claim).
    tamper: dict[str, Any] = field(default_factory=dict)
    # Sign with a key whose kid the JWKS never lists.
    sign_with_unknown_key: bool = False
    # Sign with a foreign key but under the current kid (a forged signature).
    forge_signature: bool = False
    # The "alg" header to put on ID tokens ("none" sends an unsigned token).
    header_alg: str | None = None
    id_token_ttl: int = 3600

    port: int = 0
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    codes: dict[str, _Grant] = field(default_factory=dict)
    jwks_requests: int = 0
    token_requests: int = 0
    # (error, reason) of every refused token request, oldest first.
    refusals: list[tuple[str, str]] = field(default_factory=list)
    # The claims of every ID token issued, oldest first.
    issued: list[dict[str, Any]] = field(default_factory=list)
    _server: uvicorn.Server | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def authorization_endpoint(self) -> str:
        return self.url + "/authorize"

    @property
    def token_endpoint(self) -> str:
        return self.url + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.url + "/jwks"

    @property
    def current_key(self) -> SigningKey:
        return self.keys[0]

    async def stop(self) -> None:
        """Stop serving (the endpoints become unreachable); idempotent."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    def rotate_key(self, kind: str = "RSA") -> SigningKey:
        """Sign with a new key (new kid) from now on; the old one leaves the JWKS."""
        self.keys = [SigningKey.generate(kind)]
        return self.keys[0]

    # -- protocol --------------------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> Response[Any]:
        client_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        # An unknown client or redirect URI is shown to the user, never redirected to.
        if client_id != self.client_id:
            return _oauth_error(400, "invalid_client", "unknown client_id")
        if redirect_uri not in self.redirect_uris:
            return _oauth_error(400, "invalid_request", "redirect_uri is not registered for this client")
        state = params.get("state", "")

        def refuse(error: str, description: str) -> Response[Any]:
            query = {"error": error, "error_description": description}
            if state:
                query["state"] = state
            return _redirect(f"{redirect_uri}?{urlencode(query)}")

        if params.get("response_type") != "code":
            return refuse("unsupported_response_type", "only the authorization code flow is supported")
        if "openid" not in params.get("scope", "").split():
            return refuse("invalid_scope", "scope must contain openid")
        if params.get("code_challenge_method") != "S256":
            return refuse("invalid_request", "code_challenge_method must be S256")
        for name in ("state", "nonce", "code_challenge"):
            if not params.get(name):
                return refuse("invalid_request", f"{name} is required")
        challenge = params["code_challenge"]
        if not (43 <= len(challenge) <= 128):
            return refuse("invalid_request", "code_challenge must be 43 to 128 characters")

        code = secrets.token_urlsafe(32)
        self.codes[code] = _Grant(
            client_id=client_id,
            redirect_uri=redirect_uri,
            nonce=params["nonce"],
            code_challenge=challenge,
            identity=dict(self.next_identity),
            expires_at=time.time() + CODE_TTL,
        )
        return _redirect(f"{redirect_uri}?{urlencode({'code': code, 'state': state})}")

    def token(self, form: dict[str, str], authorization: str | None) -> Response[Any]:
        self.token_requests += 1
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
        if client_id != self.client_id or not secrets.compare_digest(client_secret or "", self.client_secret):
            return self._refuse(401, "invalid_client", "client authentication failed")
        if form.get("grant_type") != "authorization_code":
            return self._refuse(400, "unsupported_grant_type", "only authorization_code")
        # A code is spent by its first presentation, whatever happens next.
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None:
            return self._refuse(400, "invalid_grant", "unknown or already used code")
        if grant.expires_at < time.time():
            return self._refuse(400, "invalid_grant", "code expired")
        if grant.client_id != client_id:
            return self._refuse(400, "invalid_grant", "code was issued to another client")
        if form.get("redirect_uri") != grant.redirect_uri:
            return self._refuse(400, "invalid_grant", "redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier", "")
        if not (43 <= len(verifier) <= 128):
            return self._refuse(400, "invalid_grant", "pkce: code_verifier missing or malformed")
        if not secrets.compare_digest(pkce_challenge(verifier), grant.code_challenge):
            return self._refuse(400, "invalid_grant", "pkce: code_verifier does not match code_challenge")

        moment = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "azp": client_id,
            **grant.identity,
            "nonce": grant.nonce,
            "iat": moment,
            "exp": moment + self.id_token_ttl,
        }
        for name, value in self.tamper.items():
            if value is DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        self.issued.append(claims)
        return Response(
            {
                "access_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "openid email profile",
                "id_token": self._id_token(claims),
            },
            status_code=200,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def jwks(self) -> dict[str, Any]:
        self.jwks_requests += 1
        return {"keys": [key.public_jwk() for key in self.keys]}

    def _id_token(self, claims: dict[str, Any]) -> str:
        if self.header_alg == "none":
            return jwt.encode(claims, None, algorithm="none", headers={"kid": self.current_key.kid})
        key, kid = self.current_key, None
        if self.sign_with_unknown_key:
            key = SigningKey.generate("RSA" if key.alg == "RS256" else "EC")
        elif self.forge_signature:
            key, kid = SigningKey.generate("RSA" if key.alg == "RS256" else "EC"), self.current_key.kid
        if self.header_alg is not None:
            # A header that lies about the algorithm: sign with what the key can do,
            # then swap the header so the token claims ``header_alg``.
            token = key.sign(claims, kid=kid)
            _, payload, signature = token.split(".")
            header = jwt.utils.base64url_encode(
                json.dumps({"alg": self.header_alg, "kid": kid or key.kid, "typ": "JWT"}).encode()
            ).decode()
            return f"{header}.{payload}.{signature}"
        return key.sign(claims, kid=kid)

    def _refuse(self, status: int, error: str, reason: str) -> Response[Any]:
        self.refusals.append((error, reason))
        return _oauth_error(status, error, reason)

    # -- ASGI app --------------------------------------------------------------------------

    def asgi_app(self) -> Litestar:
        provider = self

        @get("/authorize", sync_to_thread=False)
        def authorize(request: Request[Any, Any, Any]) -> Response[Any]:
            return provider.authorize(dict(request.query_params))

        @post("/token")
        async def token(request: Request[Any, Any, Any]) -> Response[Any]:
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                return _oauth_error(400, "invalid_request", "the token request must be form-encoded")
            form = await request.form()
            return provider.token({k: str(v) for k, v in form.items()}, request.headers.get("authorization"))

        @get("/jwks", sync_to_thread=False)
        def jwks() -> Response[Any]:
            return Response(provider.jwks(), headers={"Cache-Control": "public, max-age=3600"})

        @get("/.well-known/openid-configuration", sync_to_thread=False)
        def discovery() -> dict[str, Any]:
            return {
                "issuer": provider.issuer,
                "authorization_endpoint": provider.authorization_endpoint,
                "token_endpoint": provider.token_endpoint,
                "jwks_uri": provider.jwks_uri,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            }

        return Litestar([authorize, token, jwks, discovery], openapi_config=None)


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def _redirect(location: str) -> Response[Any]:
    return Response(b"", status_code=302, headers={"Location": location, "Cache-Control": "no-store"})


def _oauth_error(status: int, error: str, description: str) -> Response[Any]:
    return Response(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: Ctrl-C must still stop pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def running_provider(**options: Any) -> AsyncIterator[OidcProvider]:
    """Serve a new :class:`OidcProvider` on 127.0.0.1 (a free port) in this event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    provider = OidcProvider(port=sock.getsockname()[1], **options)
    server = _QuietServer(
        uvicorn.Config(
            provider.asgi_app(),
            host="127.0.0.1",
            port=provider.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    provider._server, provider._task = server, task
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error here
                raise RuntimeError("the OpenID provider stopped before it started")
            await asyncio.sleep(0.005)
        yield provider
    finally:
        await provider.stop()
        sock.close()
