"""Local APNs and FCM that speak the real wire formats, for the push tests.

**APNs** (:class:`ApnsStandin`, :func:`running_apns_standin`): an ASGI app served by
hypercorn over TLS with HTTP/2 (ALPN ``h2``) on 127.0.0.1, with a certificate signed by a
throwaway CA the client is told to trust (``APNS_CA_FILE``). Like Apple's servers it
answers ``POST /3/device/<token>`` only over HTTP/2, and checks what Apple checks:
``authorization: bearer <JWT>`` signed ES256 with the test key (header ``kid`` = the key
id, claims ``iss`` = the team id and a recent ``iat``: else 403 ``MissingProviderToken`` /
``InvalidProviderToken`` / ``ExpiredProviderToken``), ``apns-topic`` one of the app's
bundle ids (400 ``BadTopic``/``DeviceTokenNotForTopic``), ``apns-push-type`` (400
``InvalidPushType``), ``apns-collapse-id`` at most 64 bytes (400 ``BadCollapseId``), the
payload JSON with ``aps`` at most 4 KB (400 ``PayloadEmpty``/413 ``PayloadTooLarge``).
Per token it answers 200 with an ``apns-id``, 410 ``Unregistered`` (:attr:`unregistered`),
400 ``BadDeviceToken`` (:attr:`bad_tokens`) or, ``fail_times[token]`` times, 503
``ServiceUnavailable``.

**FCM** (:class:`FcmStandin`, :func:`running_fcm_standin`): Google's OAuth2 token endpoint
for service accounts (``POST /token``, the ``token_uri`` of the service account JSON it
makes: the ``jwt-bearer`` grant's assertion must be RS256-signed by the account's key, with
its ``kid``, ``iss`` = the client email, ``aud`` = ``https://oauth2.googleapis.com/token``
(Google's documented audience) and the ``firebase.messaging`` scope) and FCM HTTP v1 ``POST /v1/projects/<id>/messages:send``
(a bearer token it issued, the account's project, string-only ``data``), answering 404
``NOT_FOUND`` with ``errorCode: UNREGISTERED`` for :attr:`FcmStandin.unregistered` tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.support.stripe_standin import serving

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google's documented audience of a service account's assertion, whatever its token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


@dataclass
class Received:
    """One request a stand-in answered."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    http_version: str = ""

    @property
    def token(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# -- TLS -------------------------------------------------------------------------------------------


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tls_files(directory: str) -> tuple[str, str, str]:
    """A throwaway CA and a certificate it signed for 127.0.0.1/localhost: (ca, cert, key) paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lounges test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem"))
    for path, data in zip(
        paths,
        (ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)),
        strict=True,
    ):
        with open(path, "wb") as out:
            out.write(data)
    return paths  # type: ignore[return-value]


# -- APNs ------------------------------------------------------------------------------------------


@dataclass
class ApnsStandin:
    """Apple's push service for one test; the keys are the ones a provider would hold."""

    topics: set[str] = field(default_factory=lambda: {"dev.lounges.app"})
    key_id: str = "ABC123DEFG"
    team_id: str = "TEAM123456"
    unregistered: set[str] = field(default_factory=set)
    bad_tokens: set[str] = field(default_factory=set)
    fail_times: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    ca_file: str = ""

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.key_pem = _pem_key(self._key).decode()

    def delivered(self, token: str | None = None) -> list[Received]:
        """The notifications accepted (200), optionally for one device token."""
        return [r for r in self.received if r.status == 200 and (token is None or r.token == token)]

    def _check_provider_token(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        try:
            head = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self._key.public_key(), algorithms=["ES256"], options={"require": ["iss", "iat"]}
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if head.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            return "InvalidProviderToken"
        if claims["iat"] < time.time() - 3600:
            return "ExpiredProviderToken"
        return None

    def _answer(self, path: str, headers: dict[str, str], raw: bytes, http_version: str) -> tuple[int, dict[str, Any]]:
        if http_version != "2":
            return 400, {"reason": "BadHTTPVersion"}  # Apple's servers speak HTTP/2 only
        if not path.startswith("/3/device/"):
            return 404, {"reason": "BadPath"}
        token = path.rsplit("/", 1)[-1]
        problem = self._check_provider_token(headers.get("authorization", ""))
        if problem is not None:
            return 403, {"reason": problem}
        topic = headers.get("apns-topic")
        if not topic:
            return 400, {"reason": "MissingTopic"}
        if topic not in self.topics:
            return 400, {"reason": "DeviceTokenNotForTopic"}
        if headers.get("apns-push-type") not in ("alert", "background"):
            return 400, {"reason": "InvalidPushType"}
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, {"reason": "BadCollapseId"}
        if not raw:
            return 400, {"reason": "PayloadEmpty"}
        if len(raw) > 4096:
            return 413, {"reason": "PayloadTooLarge"}
        try:
            payload = json.loads(raw)
        except ValueError:
            return 400, {"reason": "BadMessageId"}
        if not isinstance(payload, dict) or "aps" not in payload:
            return 400, {"reason": "PayloadEmpty"}
        if len(token) != 64 or token in self.bad_tokens:
            return 400, {"reason": "BadDeviceToken"}
        if token in self.unregistered:
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        if self.fail_times.get(token, 0) > 0:
            self.fail_times[token] -= 1
            return 503, {"reason": "ServiceUnavailable"}
        return 200, {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, body = self._answer(scope["path"], headers, raw, scope.get("http_version", ""))
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        self.received.append(Received(scope["path"], headers, parsed, status, scope.get("http_version", "")))
        apns_id = headers.get("apns-id") or secrets.token_hex(16)
        out = b"" if status == 200 else json.dumps(body).encode()
        response_headers = [(b"apns-id", apns_id.encode())]
        if out:
            response_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": out})


@contextlib.asynccontextmanager
async def running_apns_standin(**options: Any) -> AsyncIterator[ApnsStandin]:
    """An :class:`ApnsStandin` served over TLS + HTTP/2 by hypercorn on 127.0.0.1 (a free port)."""
    standin = ApnsStandin(**options)
    with tempfile.TemporaryDirectory(prefix="apns-standin-") as directory:
        ca_file, cert_file, key_file = make_tls_files(directory)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.certfile, config.keyfile = cert_file, key_file
        config.loglevel = "WARNING"
        config.accesslog = None
        config.graceful_timeout = 1
        stop = asyncio.Event()
        task = asyncio.create_task(serve(standin, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        standin.url, standin.ca_file = f"https://127.0.0.1:{port}", ca_file
        try:
            async with asyncio.timeout(10):  # serving once it accepts
                while True:
                    if task.done():
                        task.result()
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.close()
                        break
                    except OSError:
                        await asyncio.sleep(0.02)
            yield standin
        finally:
            stop.set()
            await task
            sock.close()


# -- FCM -------------------------------------------------------------------------------------------


@dataclass
class FcmStandin:
    """Google's token endpoint and FCM HTTP v1 for one test, with its own service account."""

    project_id: str = "lounges-test"
    client_email: str = "push@lounges-test.iam.gserviceaccount.com"
    unregistered: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    token_requests: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_id = secrets.token_hex(20)
        self._access_tokens: set[str] = set()
        self._refuse = 0

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def service_account_json(self) -> str:
        """The JSON key of the service account, as the Firebase console hands it out."""
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": self.private_key_id,
                "private_key": _pem_key(self._key).decode(),
                "client_email": self.client_email,
                "client_id": "1234567890",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": self.token_uri,
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "universe_domain": "googleapis.com",
            }
        )

    def delivered(self, token: str | None = None) -> list[Received]:
        return [
            r
            for r in self.received
            if r.status == 200 and (token is None or r.body.get("message", {}).get("token") == token)
        ]

    def revoke_access_tokens(self, *, and_the_next: int = 0) -> None:
        """Every access token issued so far stops working (401), as when it expires early, and
        so do the next ``and_the_next`` ones issued."""
        self._access_tokens.clear()
        self._refuse = and_the_next

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type"}
        assertion = form.get("assertion", "")
        try:
            head = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError as exc:
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
        if head.get("kid") != self.private_key_id or claims.get("iss") != self.client_email:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope"}
        token = "ya29." + secrets.token_urlsafe(32)
        if self._refuse:
            self._refuse -= 1
        else:
            self._access_tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _send(self, path: str, headers: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self._access_tokens:
            return 401, _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if path != f"/v1/projects/{self.project_id}/messages:send":
            return 403, _google_error(403, "PERMISSION_DENIED", "Permission denied on the project.")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("token"), str):
            return 400, _google_error(400, "INVALID_ARGUMENT", "Invalid message.", "INVALID_ARGUMENT")
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return 400, _google_error(400, "INVALID_ARGUMENT", "data values must be strings", "INVALID_ARGUMENT")
        if message["token"] in self.unregistered:
            return 404, _google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        return 200, {"name": f"projects/{self.project_id}/messages/{secrets.randbelow(10**16)}"}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        if scope["method"] == "POST" and path == "/token":
            status, answer = self._token(dict(parse_qsl(raw.decode())))
            body: Any = {}
        elif scope["method"] == "POST" and path.endswith("/messages:send"):
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            status, answer = self._send(path, headers, body)
        else:
            status, answer, body = 404, _google_error(404, "NOT_FOUND", "Not found."), {}
        if path != "/token":
            self.received.append(Received(path, headers, body if isinstance(body, dict) else {}, status))
        out = json.dumps(answer).encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": out})


def _google_error(code: int, status: str, message: str, fcm_code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if fcm_code is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}]
    return {"error": error}


@contextlib.asynccontextmanager
async def running_fcm_standin(**options: Any) -> AsyncIterator[FcmStandin]:
    """An :class:`FcmStandin` served by uvicorn on 127.0.0.1 (a free port)."""
    standin = FcmStandin(**options)
    async with serving(standin) as (url, _):
        standin.url = url
        yield standin
