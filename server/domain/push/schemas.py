"""Request and response bodies of ``/api/v1/devices`` (and the push log)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from server.domain.tables.push import TOKEN_MAX_LENGTH, ApnsEnvironment, PushPlatform

# Refused at the edge: NUL, spaces and control characters never reach a token or a header.
# ("$(?!\n)": Python's "$" also matches before a final newline, JSON Schema's does not.)
DeviceToken = Annotated[
    str, msgspec.Meta(min_length=32, max_length=TOKEN_MAX_LENGTH, pattern=r"^[A-Za-z0-9_:.\-]+$(?!\n)")
]
# A bundle id (letters, digits, '-', '.') or a Firebase project id (lowercase, digits, '-').
AppId = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]*$(?!\n)")]
# A BCP 47 language tag such as "en", "en-US", "zh-Hant-TW".
Locale = Annotated[str, msgspec.Meta(max_length=35, pattern=r"^([A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*)?$(?!\n)")]
AppVersion = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[\x20-\x7e]*$(?!\n)")]


class DeviceIn(msgspec.Struct, forbid_unknown_fields=True):
    """A phone to push to when none of your sockets is connected.

    ``token``: the APNs device token (hex) or the FCM registration token. ``app_id``: for
    ``apns`` your app's bundle id (the APNs topic), required; for ``fcm`` the Firebase project
    id, default the server's. ``environment``: ``sandbox`` for APNs tokens of development
    builds. Registering a token again updates it and moves it to you and this session."""

    platform: PushPlatform
    token: DeviceToken
    app_id: AppId | None = None
    environment: ApnsEnvironment = ApnsEnvironment.production
    locale: Locale = ""
    app_version: AppVersion = ""


class DeviceOut(msgspec.Struct):
    """A registered device. The token is never shown again: ``token_hint`` is its last 8
    characters. ``current``: registered by the session making this call (signing it out
    removes the device)."""

    id: uuid.UUID
    platform: str
    token_hint: str
    app_id: str | None
    environment: str
    locale: str
    app_version: str
    current: bool
    created_at: datetime
    updated_at: datetime
    last_pushed_at: datetime | None


class DevicePage(msgspec.Struct):
    """Your devices, most recently registered first; ``next_cursor`` (null on the last page) is the
    next page's ``cursor``."""

    items: list[DeviceOut]
    next_cursor: str | None


class PushOut(msgspec.Struct):
    """One push attempt to one device. ``data``: the ids the push carried (never message text);
    ``status``: ``sent``, ``retrying``, ``failed``, ``pruned`` (the token was dead and the device
    removed), ``rate_limited`` (dropped: too many for the device this minute) or ``skipped``
    (the device's push service is not configured)."""

    id: uuid.UUID
    device_id: uuid.UUID | None
    platform: str
    token_hint: str
    kind: str
    notification_id: uuid.UUID | None
    collapse_id: str
    status: str
    reason: str
    status_code: int | None
    attempt: int
    private: bool
    data: dict[str, Any]
    created_at: datetime


class PushPage(msgspec.Struct):
    """Push attempts, newest first; ``next_cursor`` (null on the last page) is the next page's ``cursor``."""

    items: list[PushOut]
    next_cursor: str | None
