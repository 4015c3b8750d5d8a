"""What a push service is asked (a :class:`Target` device) and what it answered (an :class:`Outcome`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from server.domain.tables.push import PushStatus


@dataclass(frozen=True, slots=True)
class Target:
    """A device to push to."""

    device_id: uuid.UUID
    user_id: uuid.UUID
    platform: str
    token: str
    app_id: str | None
    environment: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result: ``sent``, ``retrying`` (transient: try again after ``retry_after``
    seconds or the backoff), ``failed`` (for good), ``pruned`` (the token is dead), ``skipped``
    (the service is not configured) or ``rate_limited``."""

    status: PushStatus
    reason: str = ""
    status_code: int | None = None
    provider_id: str = ""
    retry_after: float | None = None
