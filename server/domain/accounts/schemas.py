"""Request and response bodies of the auth and users endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from server.foundation.types import Text

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")]
# Only ever hashed, never stored as text: NUL is allowed, so no account made with one is locked out.
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
FullName = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
OpaqueToken = Annotated[Text, msgspec.Meta(min_length=16, max_length=256)]


class RegisterRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    full_name: FullName


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: OpaqueToken


class VerifyEmailRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: OpaqueToken


class ResendVerificationRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email


class ForgotPasswordRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email


class ResetPasswordRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: OpaqueToken
    password: Password


class ChangePasswordRequest(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password


class UpdateProfileRequest(msgspec.Struct, forbid_unknown_fields=True):
    full_name: FullName | msgspec.UnsetType = msgspec.UNSET
    avatar_file_id: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    notification_prefs: dict[Text, bool] | msgspec.UnsetType = msgspec.UNSET


class DeleteAccountRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Re-authentication: the password, or for a password-less (Google) account a sign-in in the last 5 minutes."""

    password: Password | None = None


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: Literal["bearer"] = "bearer"


class UserOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    full_name: str
    role: str
    email_verified: bool
    avatar_file_id: uuid.UUID | None
    notification_prefs: dict[str, Any]
    created_at: datetime


class SessionOut(msgspec.Struct):
    id: uuid.UUID
    current: bool
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ip: str
    user_agent: str


class SecurityEventOut(msgspec.Struct):
    kind: str
    created_at: datetime
    ip: str
    user_agent: str
    detail: dict[str, Any]


class ActivityOut(msgspec.Struct):
    sessions: list[SessionOut]
    events: list[SecurityEventOut]


class Accepted(msgspec.Struct):
    """A request taken in; what follows happens by mail or in the background."""

    status: str = "accepted"
    detail: str = ""
