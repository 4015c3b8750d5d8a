"""FCM HTTP v1 (Firebase Cloud Messaging).

The access token comes from ``FCM_SERVICE_ACCOUNT`` through google-auth: a JWT assertion
signed (RS256) with the service account's private key is exchanged at its ``token_uri``
for an OAuth2 token of scope ``firebase.messaging`` (kept until shortly before it expires;
google-auth's call is synchronous, so it runs in a thread, one at a time). Then
``POST {FCM_API_BASE}/v1/projects/<project>/messages:send`` with ``Authorization: Bearer``
and ``{"message": ...}`` (:func:`server.domain.push.payloads.fcm_message`); the project is
the device's ``app_id``, else the service account's ``project_id``.

Answers: 200 sent (the message ``name`` kept); 404 ``UNREGISTERED`` and 403
``SENDER_ID_MISMATCH`` mean the token is dead for us (pruned); 401 renews the access
token and retries once; 429 and 5xx and network errors are transient (``Retry-After``
honoured); anything else fails for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

import google.auth.transport.requests
import httpx
from google.auth.exceptions import GoogleAuthError
from google.oauth2 import service_account

from server.domain.push.outcome import Outcome, Target
from server.domain.push.payloads import Push, fcm_message
from server.domain.tables.push import PushStatus
from server.foundation.settings import Settings, fcm_service_account_info

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEAD_TOKEN_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
TRANSIENT_STATUSES = {429, 500, 502, 503, 504}


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with our timeout instead of its 120 s default."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def __call__(
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any
    ) -> Any:
        return super().__call__(
            url, method=method, body=body, headers=headers, timeout=timeout or self._timeout, **kwargs
        )


class FcmClient:
    """The service account's credentials and one HTTP connection pool to FCM per process."""

    def __init__(self, settings: Settings) -> None:
        assert settings.fcm_service_account
        info = fcm_service_account_info(settings.fcm_service_account)
        self.project = info["project_id"]
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._token_request = _TimedRequest(settings.push_timeout)
        self._lock = asyncio.Lock()
        self._base = settings.fcm_api_base.rstrip("/")
        self._http = httpx.AsyncClient(timeout=settings.push_timeout)

    async def access_token(self, *, renew: bool = False) -> str:
        async with self._lock:
            if renew or not self._credentials.valid:
                await asyncio.to_thread(self._credentials.refresh, self._token_request)
            return str(self._credentials.token)

    async def send(self, target: Target, push: Push) -> Outcome:
        outcome = await self._post(target, push, renew=False)
        if outcome.status_code == 401:  # the access token was refused: get a new one, once
            outcome = await self._post(target, push, renew=True)
        return outcome

    async def _post(self, target: Target, push: Push, *, renew: bool) -> Outcome:
        try:
            token = await self.access_token(renew=renew)
        except (GoogleAuthError, OSError) as exc:  # the token endpoint refused us or is away
            return Outcome(PushStatus.retrying, reason=f"token: {type(exc).__name__}: {exc}"[:200])
        url = f"{self._base}/v1/projects/{target.app_id or self.project}/messages:send"
        try:
            response = await self._http.post(
                url,
                json={"message": fcm_message(push, target.token)},
                headers={"authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            return Outcome(PushStatus.retrying, reason=f"{type(exc).__name__}: {exc}"[:200])
        status = response.status_code
        if status == 200:
            name = _json(response).get("name")
            return Outcome(PushStatus.sent, status_code=200, provider_id=str(name or "")[:200])
        code = _error_code(response)
        if code in DEAD_TOKEN_CODES:
            return Outcome(PushStatus.pruned, reason=code, status_code=status)
        if status in TRANSIENT_STATUSES:
            return Outcome(PushStatus.retrying, reason=code, status_code=status, retry_after=_retry_after(response))
        return Outcome(PushStatus.failed, reason=code, status_code=status)

    async def close(self) -> None:
        await self._http.aclose()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_code(response: httpx.Response) -> str:
    """FCM's own error code (``details[].errorCode``, e.g. ``UNREGISTERED``), else the
    Google API status (``NOT_FOUND``), else the HTTP status."""
    error = _json(response).get("error")
    if not isinstance(error, dict):
        return f"HTTP {response.status_code}"
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])[:200]
    return str(error.get("status") or f"HTTP {response.status_code}")[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None
