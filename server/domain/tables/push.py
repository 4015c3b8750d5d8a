"""Push tables: the devices apps registered for push, and the log of every push attempt."""

from __future__ import annotations

import enum

from piccolo.columns import (
    JSONB,
    UUID,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Timestamptz,
    Varchar,
)
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from server.domain.tables.accounts import User, UserSession
from server.foundation.db_columns import in_choices

TOKEN_MAX_LENGTH = 1024  # far above APNs' 64 hex digits and FCM's ~160 characters; fits a btree key


class PushPlatform(enum.StrEnum):
    """The push service a device token belongs to."""

    apns = "apns"
    fcm = "fcm"


class ApnsEnvironment(enum.StrEnum):
    """Which APNs a token is valid with: development builds get sandbox tokens."""

    production = "production"
    sandbox = "sandbox"


class PushStatus(enum.StrEnum):
    """What became of one push attempt to one device."""

    sent = "sent"  # the service accepted it
    retrying = "retrying"  # a transient failure; tried again later
    failed = "failed"  # refused for good, or out of attempts
    pruned = "pruned"  # the token is dead (APNs 410/BadDeviceToken, FCM UNREGISTERED): device removed
    rate_limited = "rate_limited"  # over PUSH_MAX_PER_DEVICE_PER_MINUTE: dropped
    skipped = "skipped"  # the device's service is not configured on this worker


class PushDevice(Table, tablename="push_devices"):
    """A phone's push token, tied to the session that registered it (signing out removes it)."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade, index=True)
    session = ForeignKey(UserSession, null=False, on_delete=OnDelete.cascade, index=True)
    platform = Varchar(length=8, default=None, choices=PushPlatform)
    token = Varchar(length=TOKEN_MAX_LENGTH)
    # APNs: the bundle id (the apns-topic); FCM: the Firebase project (null: the service account's).
    app_id = Varchar(length=255, null=True, default=None)
    environment = Varchar(length=16, default=ApnsEnvironment.production, choices=ApnsEnvironment)
    locale = Varchar(length=35)
    app_version = Varchar(length=64)
    created_at = Timestamptz()
    updated_at = Timestamptz()
    last_pushed_at = Timestamptz(null=True, default=None)

    push_devices_platform_check = Check(in_choices("platform", PushPlatform))
    push_devices_environment_check = Check(in_choices("environment", ApnsEnvironment))
    push_devices_platform_token_key = Unique([platform, token])


class PushLog(Table, tablename="push_log"):
    """One push attempt to one device: what was pushed (ids only, never message text) and
    what the service answered. Kept ``PUSH_LOG_RETENTION_DAYS``."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade)
    device = ForeignKey(PushDevice, null=True, on_delete=OnDelete.set_null, index=True)
    platform = Varchar(length=8)
    token_hint = Varchar(length=16)
    kind = Varchar(length=64)
    notification = UUID(null=True, default=None)
    collapse_id = Varchar(length=64)
    status = Varchar(length=16, default=None, choices=PushStatus)
    reason = Varchar(length=200)
    status_code = Integer(null=True, default=None)
    attempt = Integer(default=1)
    private = Boolean(default=False)
    data = JSONB(default={})
    provider_id = Varchar(length=200)
    created_at = Timestamptz(index=True)

    push_log_status_check = Check(in_choices("status", PushStatus))
