"""APNs over HTTP/2 with token-based provider authentication (Apple's "Sending notification
requests to APNs").

``POST {APNS_BASE_URL}/3/device/<token>`` over HTTP/2 (httpx with ``h2``), headers
``authorization: bearer <JWT>`` (ES256 with the .p8 key, header ``kid`` = ``APNS_KEY_ID``,
claims ``iss`` = ``APNS_TEAM_ID`` and ``iat``; reused for 50 minutes, as Apple asks for
between 20 and 60), ``apns-topic`` (the device's bundle id), ``apns-push-type: alert``,
``apns-priority: 10``, ``apns-expiration`` (a day) and ``apns-collapse-id``. Devices
registered with ``environment: sandbox`` go to ``APNS_SANDBOX_BASE_URL``.

Answers: 200 sent (``apns-id`` kept); 410 ``Unregistered`` and 400 ``BadDeviceToken`` or
``DeviceTokenNotForTopic`` mean the token is dead (pruned); 403 ``ExpiredProviderToken``
renews the JWT and retries; 429 and 5xx and network errors are transient; anything else
fails for good.

aioapns is not used: it pins pyOpenSSL, which needs an older ``cryptography`` than ours, and
it connects only to Apple's hard-coded hosts (README, dependencies).
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx
import jwt
import msgspec

from server.domain.push.outcome import Outcome, Target
from server.domain.push.payloads import Push, apns_payload
from server.domain.tables.push import ApnsEnvironment, PushStatus
from server.foundation.settings import Settings, apns_key_pem

TOKEN_REUSE_SECONDS = 50 * 60
EXPIRATION_SECONDS = 24 * 3600
DEAD_TOKEN_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
TRANSIENT_STATUSES = {429, 500, 502, 503, 504}


class ApnsClient:
    """One HTTP/2 connection pool to APNs per process, and the provider token it signs."""

    def __init__(self, settings: Settings) -> None:
        assert settings.apns_key and settings.apns_key_id and settings.apns_team_id
        self._key = apns_key_pem(settings.apns_key)
        self._key_id = settings.apns_key_id
        self._team_id = settings.apns_team_id
        self._bases = {
            ApnsEnvironment.production.value: settings.apns_base_url.rstrip("/"),
            ApnsEnvironment.sandbox.value: settings.apns_sandbox_base_url.rstrip("/"),
        }
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.apns_ca_file) if settings.apns_ca_file else True
        )
        self._http = httpx.AsyncClient(http2=True, verify=verify, timeout=settings.push_timeout)
        self._jwt: str | None = None
        self._issued_at = 0.0

    def provider_token(self) -> str:
        """The ES256 JWT APNs authenticates us by (a new one every 50 minutes)."""
        now = time.time()
        if self._jwt is None or now - self._issued_at > TOKEN_REUSE_SECONDS:
            self._issued_at = now
            self._jwt = jwt.encode(
                {"iss": self._team_id, "iat": int(now)}, self._key, algorithm="ES256", headers={"kid": self._key_id}
            )
        return self._jwt

    async def send(self, target: Target, push: Push) -> Outcome:
        outcome = await self._post(target, push)
        if outcome.reason == "ExpiredProviderToken":  # our JWT aged out: sign a new one, once
            self._jwt = None
            outcome = await self._post(target, push)
        return outcome

    async def _post(self, target: Target, push: Push) -> Outcome:
        headers = {
            "authorization": f"bearer {self.provider_token()}",
            "apns-topic": target.app_id or "",
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-expiration": str(int(time.time()) + EXPIRATION_SECONDS),
            "apns-collapse-id": push.collapse_id,
            "content-type": "application/json",
        }
        url = f"{self._bases.get(target.environment, self._bases['production'])}/3/device/{target.token}"
        try:
            response = await self._http.post(url, content=msgspec.json.encode(apns_payload(push)), headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(PushStatus.retrying, reason=f"{type(exc).__name__}: {exc}"[:200])
        if response.status_code == 200:
            return Outcome(PushStatus.sent, status_code=200, provider_id=response.headers.get("apns-id", ""))
        reason = _reason(response)
        status = response.status_code
        if status == 410 or (status == 400 and reason in DEAD_TOKEN_REASONS):
            return Outcome(PushStatus.pruned, reason=reason, status_code=status)
        if status in TRANSIENT_STATUSES or reason == "ExpiredProviderToken":
            return Outcome(PushStatus.retrying, reason=reason, status_code=status, retry_after=_retry_after(response))
        return Outcome(PushStatus.failed, reason=reason, status_code=status)

    async def close(self) -> None:
        await self._http.aclose()


def _reason(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason)[:200] if reason else f"HTTP {response.status_code}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None
