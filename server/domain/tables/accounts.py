"""Account tables: users, OAuth identities, login sessions and single-use tokens."""

from __future__ import annotations

import enum

from piccolo.columns import (
    JSONB,
    UUID,
    Boolean,
    ForeignKey,
    OnDelete,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from server.foundation.db_columns import in_choices


class Role(enum.StrEnum):
    """What a user may do across the platform."""

    user = "user"
    mentor = "mentor"
    admin = "admin"


class OAuthProvider(enum.StrEnum):
    """Supported external identity providers."""

    google = "google"


class ActionTokenPurpose(enum.StrEnum):
    """What an emailed single-use token authorises."""

    verify_email = "verify_email"
    reset_password = "reset_password"
    delete_account = "delete_account"


class User(Table, tablename="users"):
    """A person with an account; email is unique case-insensitively."""

    id = UUID(primary_key=True)
    email = Varchar(length=320)
    password_hash = Varchar(length=255, null=True, default=None, secret=True)
    full_name = Varchar(length=200)
    role = Varchar(length=16, default=Role.user, choices=Role)
    email_verified_at = Timestamptz(null=True, default=None)
    is_active = Boolean(default=True)
    disabled_at = Timestamptz(null=True, default=None)
    avatar_file_id = UUID(null=True, default=None)
    notification_prefs = JSONB(default={})
    last_login_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)

    users_role_check = Check(in_choices("role", Role))


class OAuthAccount(Table, tablename="oauth_accounts"):
    """An external identity (e.g. a Google account) linked to a user."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade, index=True)
    provider = Varchar(length=32, default=None, choices=OAuthProvider)
    subject = Varchar(length=255)
    email = Varchar(length=320)
    created_at = Timestamptz()

    oauth_accounts_provider_check = Check(in_choices("provider", OAuthProvider))
    oauth_accounts_provider_subject_key = Unique([provider, subject])


class UserSession(Table, tablename="user_sessions"):
    """One login: a refresh-token family that is revoked as a whole."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade, index=True)
    created_at = Timestamptz()
    last_used_at = Timestamptz()
    expires_at = Timestamptz(default=None)
    revoked_at = Timestamptz(null=True, default=None)
    revoked_reason = Varchar(length=64, null=True, default=None)
    user_agent = Varchar(length=512)
    ip = Varchar(length=64)


class RefreshToken(Table, tablename="refresh_tokens"):
    """A refresh token of a session; presenting a used one revokes the family."""

    id = UUID(primary_key=True)
    session = ForeignKey(UserSession, null=False, on_delete=OnDelete.cascade, index=True)
    token_hash = Varchar(length=64, unique=True, secret=True)
    created_at = Timestamptz()
    used_at = Timestamptz(null=True, default=None)


class ActionToken(Table, tablename="action_tokens"):
    """A single-use emailed token for verifying email, resetting a password or deleting an account."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade, index=True)
    purpose = Varchar(length=32, default=None, choices=ActionTokenPurpose)
    token_hash = Varchar(length=64, unique=True, secret=True)
    expires_at = Timestamptz(default=None)
    used_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()

    action_tokens_purpose_check = Check(in_choices("purpose", ActionTokenPurpose))


class SecurityEvent(Table, tablename="security_events"):
    """A security-relevant event on an account (login, password change, token reuse...)."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, on_delete=OnDelete.cascade)
    kind = Varchar(length=64)
    ip = Varchar(length=64)
    user_agent = Varchar(length=512)
    detail = JSONB(default={})
    created_at = Timestamptz()
