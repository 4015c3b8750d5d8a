"""Account actions: registration, sign-in, sessions, verification, passwords, erasure.

Each ``do_*`` function checks what it needs, writes in one transaction, and
only after the commit sends mail or publishes control events.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec

from server.domain.accounts.passwords import check_password_policy, hash_password, needs_rehash, verify_password
from server.domain.accounts.schemas import (
    ActivityOut,
    SecurityEventOut,
    SessionOut,
    TokenPair,
    UpdateProfileRequest,
    UserOut,
)
from server.domain.accounts.session_cache import SessionCache, announce, session_cache_of
from server.domain.accounts.tokens import hash_secret, keys_of, new_secret
from server.domain.tables.accounts import (
    ActionToken,
    ActionTokenPurpose,
    RefreshToken,
    SecurityEvent,
    User,
    UserSession,
)
from server.domain.tables.compliance import ComplianceRequest
from server.domain.tables.files import File, FilePurpose, FileStatus
from server.domain.tables.push import PushDevice
from server.foundation.clock import now
from server.foundation.control import ControlEvent
from server.foundation.errors import Conflict, Forbidden, RateLimited, Unauthorized, ValidationFailed
from server.foundation.links import action_link
from server.foundation.mail import Mail, queue_mail
from server.foundation.settings import parse_rate
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

log = logging.getLogger("lounges.accounts")

RECENT_LOGIN = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request came from, for sessions and the security log."""

    ip: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    email_verified: bool
    issued_at: int
    expires_at: int  # of the access token that authenticated this caller
    full_name: str = ""
    account: SessionCheck | None = None  # the user row as authenticating read it (REST callers)


class SessionCheck(msgspec.Struct, frozen=True):
    """What authenticating an access token reads of its session and user: enough to refuse
    it, and the caller's own account (``GET /users/me`` needs no statement of its own)."""

    role: str
    verified: bool
    is_active: bool
    full_name: str
    revoked_at: datetime | None
    expires_at: datetime
    email: str
    avatar_file_id: uuid.UUID | None
    notification_prefs: Any  # JSONB: a dict, or its text
    created_at: datetime

    def live(self) -> bool:
        return self.revoked_at is None and self.expires_at > now()


class RefreshCheck(msgspec.Struct, frozen=True):
    """A presented refresh token with its session and user, read locked (``FOR UPDATE``)."""

    id: uuid.UUID
    used_at: datetime | None
    session_id: uuid.UUID
    user_id: uuid.UUID
    revoked_at: datetime | None
    expires_at: datetime
    is_active: bool


def normalize_email(email: str) -> str:
    return email.strip().lower()


def user_out(row: dict[str, Any]) -> UserOut:
    return UserOut(
        id=row["id"],
        email=row["email"],
        full_name=row["full_name"],
        role=row["role"],
        email_verified=row["email_verified_at"] is not None,
        avatar_file_id=row["avatar_file_id"],
        notification_prefs=_json(row["notification_prefs"]),
        created_at=row["created_at"],
    )


def _json(value: Any) -> dict[str, Any]:
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else (value or {})


# -- rate limits ---------------------------------------------------------------------------


def limit_source(ip: str) -> str:
    """The source a per-IP limit counts: the address, or for IPv6 its /64 (one host or home
    network gets a whole /64, so counting single addresses would let it rotate past any limit)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip


async def check_rate(state: AppState, action: str, client: ClientInfo, account: str | None = None) -> None:
    """Count one ``action`` attempt against the client's IP and, if given, the account."""
    settings = state.settings
    await state.limiter.hit(
        f"{action}:ip:{limit_source(client.ip)}", *parse_rate("AUTH_RATE_LIMIT_IP", settings.auth_rate_limit_ip)
    )
    if account:
        await state.limiter.hit(
            f"{action}:acct:{account}", *parse_rate("AUTH_RATE_LIMIT_ACCOUNT", settings.auth_rate_limit_account)
        )


# -- security log --------------------------------------------------------------------------


async def record_event(user_id: uuid.UUID, kind: str, client: ClientInfo, **detail: Any) -> None:
    await SecurityEvent.insert(
        SecurityEvent(user=user_id, kind=kind, ip=client.ip, user_agent=client.user_agent, detail=detail)
    )


# -- sessions ------------------------------------------------------------------------------


async def open_session(state: AppState, user_id: uuid.UUID, client: ClientInfo) -> TokenPair:
    """Start a refresh-token family and issue its first pair (inside the caller's transaction)."""
    moment = now()
    session = UserSession(
        user=user_id,
        created_at=moment,
        last_used_at=moment,
        expires_at=moment + timedelta(seconds=state.settings.refresh_token_ttl),
        user_agent=client.user_agent[:512],
        ip=client.ip[:64],
    )
    await session.save()
    return await _issue_pair(state, user_id, session.id)


async def _issue_pair(state: AppState, user_id: uuid.UUID, session_id: uuid.UUID) -> TokenPair:
    refresh = new_secret()
    await RefreshToken.insert(RefreshToken(session=session_id, token_hash=hash_secret(refresh)))
    access, ttl = keys_of(state).issue(user_id, session_id)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=ttl)


async def revoke_sessions(
    user_id: uuid.UUID, reason: str, *, only: uuid.UUID | None = None, keep: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Revoke the user's live sessions (one, or all but ``keep``); returns their ids. The push
    devices those sessions registered go with them: a signed-out phone gets no more pushes."""
    query = UserSession.update({UserSession.revoked_at: now(), UserSession.revoked_reason: reason}).where(
        UserSession.user == user_id, UserSession.revoked_at.is_null()
    )
    if only is not None:
        query = query.where(UserSession.id == only)
    if keep is not None:
        query = query.where(UserSession.id != keep)
    rows = await query.returning(UserSession.id)
    revoked = [row["id"] for row in rows]
    if revoked:
        await PushDevice.delete().where(PushDevice.session.is_in(revoked))
    return revoked


async def announce_revoked(state: AppState, user_id: uuid.UUID, session_ids: list[uuid.UUID], reason: str) -> None:
    if session_ids:
        await announce(
            state, ControlEvent(kind="session.revoked", user_id=user_id, session_ids=session_ids, reason=reason)
        )


async def announce_user_updated(state: AppState, user_id: uuid.UUID) -> None:
    """After a committed change of what an authenticated caller carries (verified flag, profile)."""
    await announce(state, ControlEvent(kind="user.updated", user_id=user_id))


async def authenticate(state: AppState, token: str, *, keep_token: bool = True) -> Principal:
    """Resolve a bearer access token to a live session of an active user (what the session
    read is kept a few seconds: :mod:`server.domain.accounts.session_cache`). Without
    ``keep_token`` the verified token is not remembered for the next call (a socket's
    ``connect`` or ``refresh``: its token comes once, and each socket would keep ~1 KiB)."""
    claims = keys_of(state).verify(token, keep=keep_token)
    cache = session_cache_of(state)
    session = cache.get(claims.session_id)
    if not isinstance(session, SessionCheck):
        session = await _read_session(claims.session_id, claims.user_id, cache)
    if not session.is_active:
        raise Unauthorized("account disabled", code="account_disabled")
    if not session.live():
        raise Unauthorized("session revoked", code="session_revoked")
    return Principal(
        user_id=claims.user_id,
        session_id=claims.session_id,
        role=session.role,
        email_verified=session.verified,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
        full_name=session.full_name,
        account=session,
    )


async def _read_session(session_id: uuid.UUID, user_id: uuid.UUID, cache: SessionCache[object]) -> SessionCheck:
    generation = cache.generation
    rows = await UserSession.raw(
        """
        SELECT u.role, u.email_verified_at IS NOT NULL AS verified, u.is_active, u.full_name,
               s.revoked_at, s.expires_at, u.email, u.avatar_file_id, u.notification_prefs, u.created_at
        FROM user_sessions s JOIN users u ON u.id = s."user"
        WHERE s.id = {} AND u.id = {}
        """,
        session_id,
        user_id,
    )
    if not rows:
        raise Unauthorized("session not found", code="session_revoked")
    session = msgspec.convert(rows[0], SessionCheck)
    cache.put(session_id, user_id, session, read_at_generation=generation)
    return session


# -- registration and verification ----------------------------------------------------------


async def do_register(state: AppState, *, email: str, password: str, full_name: str, client: ClientInfo) -> UserOut:
    email = normalize_email(email)
    await check_rate(state, "register", client, email)
    check_password_policy(password, email=email)
    full_name = full_name.strip()
    if not full_name:
        raise ValidationFailed("full_name must not be blank", code="invalid_full_name")
    password_hash = await hash_password(password)
    async with unit_of_work(state.engine):
        if await User.exists().where(User.email == email):
            raise Conflict(
                "this email cannot be used to register; sign in or reset your password", code="email_unavailable"
            )
        [row] = await User.insert(User(email=email, password_hash=password_hash, full_name=full_name)).returning(
            *User.all_columns()
        )
        await record_event(row["id"], "account.registered", client)
        token = await _new_action_token(state, row["id"], ActionTokenPurpose.verify_email)
        await on_commit(partial(_mail_verification, state, email, full_name, token))
    return user_out(row)


async def _new_action_token(state: AppState, user_id: uuid.UUID, purpose: ActionTokenPurpose) -> str:
    ttl = (
        state.settings.email_verification_ttl
        if purpose == ActionTokenPurpose.verify_email
        else state.settings.password_reset_ttl
    )
    token = new_secret()
    await ActionToken.insert(
        ActionToken(
            user=user_id, purpose=purpose, token_hash=hash_secret(token), expires_at=now() + timedelta(seconds=ttl)
        )
    )
    return token


async def _use_action_token(token: str, purpose: ActionTokenPurpose) -> uuid.UUID:
    """Consume a single-use token atomically; returns its user id."""
    rows = (
        await ActionToken.update({ActionToken.used_at: now()})
        .where(
            ActionToken.token_hash == hash_secret(token),
            ActionToken.purpose == purpose,
            ActionToken.used_at.is_null(),
            ActionToken.expires_at > now(),
        )
        .returning(ActionToken.user)
    )
    if not rows:
        raise ValidationFailed("the link is invalid, expired or already used", code="invalid_token")
    return rows[0]["user"]


async def _mail_verification(state: AppState, email: str, full_name: str, token: str) -> None:
    link = action_link(state.settings, "verify-email", token=token)
    await queue_mail(
        state.redis,
        Mail(
            to=email,
            subject="Confirm your email for Lounges",
            text=f"Hello {full_name},\n\nConfirm your email address:\n{link}\n\nVerification token: {token}\n",
        ),
    )


async def do_verify_email(state: AppState, *, token: str, client: ClientInfo) -> None:
    await check_rate(state, "verify", client)
    async with unit_of_work(state.engine):
        user_id = await _use_action_token(token, ActionTokenPurpose.verify_email)
        await User.update({User.email_verified_at: now()}).where(User.id == user_id, User.email_verified_at.is_null())
        await record_event(user_id, "email.verified", client)
        await on_commit(partial(announce_user_updated, state, user_id))


async def do_resend_verification(state: AppState, *, email: str, client: ClientInfo) -> None:
    """Mail a fresh link if the account exists and is unverified; silent otherwise."""
    email = normalize_email(email)
    await check_rate(state, "verify", client, email)
    async with unit_of_work(state.engine):
        user = (
            await User.select(User.id, User.full_name)
            .where(User.email == email, User.is_active.eq(True), User.email_verified_at.is_null())
            .first()
        )
        if user is None:
            return
        full_name: str = user["full_name"]
        token = await _new_action_token(state, user["id"], ActionTokenPurpose.verify_email)
        await on_commit(partial(_mail_verification, state, email, full_name, token))


# -- sign-in, refresh, sign-out -------------------------------------------------------------


def _failed_logins(email: str, source: ClientInfo | None = None) -> str:
    """The limiter key of failed sign-ins on an account (from one source, if given). The email
    is hashed to a fixed length: a look-alike address ("a@b.c:1.2.3.4") cannot reach another
    account's or source's counter, and no address is kept in Redis."""
    account = hashlib.sha256(email.encode()).hexdigest()[:32]
    return f"login:failed:{account}" + (f":{limit_source(source.ip)}" if source else "")


async def _limit_login(state: AppState, email: str, user_id: uuid.UUID | None, client: ClientInfo) -> None:
    """Throttle password guessing without letting a stranger lock the owner out.

    After OWASP's Authentication Cheat Sheet, "Protect against automated attacks"
    (https://cheatsheetseries.owasp.org/cheatsheets/Authentication_Cheat_Sheet.html): a hard
    per-account lockout lets anyone deny the owner service, so attempts are limited per
    source, failed attempts per account *and* source (AUTH_RATE_LIMIT_ACCOUNT), and failed
    attempts per account from all sources (AUTH_LOGIN_FAILURES_ACCOUNT), past which only
    sources the account signed in from before may still try. Each attempt is counted as
    failed up front (atomically, so parallel guesses cannot slip past the limit) and
    :func:`_login_succeeded` takes it back.
    """
    settings = state.settings
    await state.limiter.hit(
        f"login:ip:{limit_source(client.ip)}", *parse_rate("AUTH_RATE_LIMIT_IP", settings.auth_rate_limit_ip)
    )
    await state.limiter.hit(
        _failed_logins(email, client), *parse_rate("AUTH_RATE_LIMIT_ACCOUNT", settings.auth_rate_limit_account)
    )
    try:
        await state.limiter.hit(
            _failed_logins(email), *parse_rate("AUTH_LOGIN_FAILURES_ACCOUNT", settings.auth_login_failures_account)
        )
    except RateLimited:
        known = user_id is not None and await SecurityEvent.exists().where(
            SecurityEvent.user == user_id, SecurityEvent.kind == "login.succeeded", SecurityEvent.ip == client.ip[:64]
        )
        if not known:
            raise


async def _login_succeeded(state: AppState, email: str, client: ClientInfo) -> None:
    """Only failures count: this source's failures on the account are forgotten, and the
    attempt is taken back from the account-wide count (others' failures stay)."""
    await state.limiter.reset(_failed_logins(email, client))
    await state.limiter.refund(_failed_logins(email))


async def do_login(state: AppState, *, email: str, password: str, client: ClientInfo) -> TokenPair:
    email = normalize_email(email)
    user = await User.select(User.id, User.password_hash, User.is_active).where(User.email == email).first()
    await _limit_login(state, email, user["id"] if user else None, client)
    valid = await verify_password(user["password_hash"] if user else None, password)
    if not (user and valid and user["is_active"]):
        if user:
            await record_event(user["id"], "login.failed", client)
        raise Unauthorized("wrong email or password", code="invalid_credentials")
    await _login_succeeded(state, email, client)
    async with unit_of_work(state.engine):
        changes: dict[Any, Any] = {User.last_login_at: now()}
        if needs_rehash(user["password_hash"]):
            changes[User.password_hash] = await hash_password(password)
        await User.update(changes).where(User.id == user["id"])
        pair = await open_session(state, user["id"], client)
        await record_event(user["id"], "login.succeeded", client, method="password")
    return pair


async def do_refresh(state: AppState, *, refresh_token: str, client: ClientInfo) -> TokenPair:
    """Rotate: the presented token is spent and a new pair issued. A spent token
    presented again means it leaked: the whole session family is revoked."""
    reused = False
    async with unit_of_work(state.engine):
        rows = await RefreshToken.raw(
            """
            SELECT t.id, t.used_at, s.id AS session_id, s."user" AS user_id, s.revoked_at, s.expires_at, u.is_active
            FROM refresh_tokens t
            JOIN user_sessions s ON s.id = t.session
            JOIN users u ON u.id = s."user"
            WHERE t.token_hash = {}
            FOR UPDATE OF t, s
            """,
            hash_secret(refresh_token),
        )
        if not rows:
            raise Unauthorized("invalid refresh token", code="invalid_token")
        row = msgspec.convert(rows[0], RefreshCheck)
        if row.revoked_at is not None or row.expires_at <= now() or not row.is_active:
            raise Unauthorized("session revoked", code="session_revoked")
        if row.used_at is not None:
            await revoke_sessions(row.user_id, "refresh_token_reuse", only=row.session_id)
            await record_event(row.user_id, "session.reuse_detected", client, session_id=str(row.session_id))
            await on_commit(partial(announce_revoked, state, row.user_id, [row.session_id], "refresh_token_reuse"))
            reused = True
        else:
            moment = now()
            await RefreshToken.update({RefreshToken.used_at: moment}).where(RefreshToken.id == row.id)
            await UserSession.update(
                {
                    UserSession.last_used_at: moment,
                    UserSession.expires_at: moment + timedelta(seconds=state.settings.refresh_token_ttl),
                    UserSession.ip: client.ip[:64],
                }
            ).where(UserSession.id == row.session_id)
            pair = await _issue_pair(state, row.user_id, row.session_id)
    if reused:  # raised once the revocation committed
        raise Unauthorized("refresh token already used; the session was revoked", code="refresh_token_reused")
    return pair


async def do_logout(state: AppState, principal: Principal, client: ClientInfo) -> None:
    async with unit_of_work(state.engine):
        revoked = await revoke_sessions(principal.user_id, "logout", only=principal.session_id)
        await record_event(principal.user_id, "logout", client)
        await on_commit(partial(announce_revoked, state, principal.user_id, revoked, "logout"))


# -- passwords ------------------------------------------------------------------------------


async def do_forgot_password(state: AppState, *, email: str, client: ClientInfo) -> None:
    """Mail a reset link when the account exists; the answer is the same either way."""
    email = normalize_email(email)
    await check_rate(state, "forgot", client, email)
    async with unit_of_work(state.engine):
        user = await User.select(User.id, User.full_name).where(User.email == email, User.is_active.eq(True)).first()
        if user is None:
            return
        full_name: str = user["full_name"]
        token = await _new_action_token(state, user["id"], ActionTokenPurpose.reset_password)
        await record_event(user["id"], "password.reset_requested", client)
        link = action_link(state.settings, "reset-password", token=token)
        mail = Mail(
            to=email,
            subject="Reset your Lounges password",
            text=(
                f"Hello {full_name},\n\nSomeone asked to reset your password. If it was you:\n{link}\n\n"
                f"Reset token: {token}\n\nIf not, ignore this mail; your password is unchanged.\n"
            ),
        )
        await on_commit(partial(queue_mail, state.redis, mail))


async def do_reset_password(state: AppState, *, token: str, password: str, client: ClientInfo) -> None:
    await check_rate(state, "reset", client)
    password_hash: str | None = None
    async with unit_of_work(state.engine):
        user_id = await _use_action_token(token, ActionTokenPurpose.reset_password)
        user = await User.select(User.email).where(User.id == user_id).first()
        assert user is not None  # the action token's user row (a foreign key)
        email: str = user["email"]
        check_password_policy(password, email=email)
        password_hash = await hash_password(password)
        await User.update({User.password_hash: password_hash}).where(User.id == user_id)
        revoked = await revoke_sessions(user_id, "password_reset")
        await record_event(user_id, "password.reset", client)
        await on_commit(partial(announce_revoked, state, user_id, revoked, "password_reset"))
    # The owner proved control of the mailbox and old guesses are void: lift the account-wide
    # cap on failed sign-ins (see _limit_login) and this source's own count.
    await state.limiter.reset(_failed_logins(email))
    await state.limiter.reset(_failed_logins(email, client))


async def do_change_password(
    state: AppState, principal: Principal, *, current_password: str, new_password: str, client: ClientInfo
) -> None:
    user = await User.select(User.email, User.password_hash).where(User.id == principal.user_id).first()
    assert user is not None  # an authenticated principal's user row exists
    if not await verify_password(user["password_hash"], current_password):
        await record_event(principal.user_id, "password.change_failed", client)
        raise Forbidden("the current password is wrong", code="invalid_credentials")
    check_password_policy(new_password, email=user["email"], field="new_password")
    password_hash = await hash_password(new_password)
    async with unit_of_work(state.engine):
        await User.update({User.password_hash: password_hash}).where(User.id == principal.user_id)
        revoked = await revoke_sessions(principal.user_id, "password_changed", keep=principal.session_id)
        await record_event(principal.user_id, "password.changed", client)
        await on_commit(partial(announce_revoked, state, principal.user_id, revoked, "password_changed"))


# -- profile, activity, deletion --------------------------------------------------------------


async def get_me(principal: Principal) -> UserOut:
    """The caller's account: as authenticating read it (every change of it makes each
    process read it again, see ``session_cache``), else from the database."""
    account = principal.account
    if account is None:
        return await _read_me(principal.user_id)
    return UserOut(
        id=principal.user_id,
        email=account.email,
        full_name=account.full_name,
        role=account.role,
        email_verified=account.verified,
        avatar_file_id=account.avatar_file_id,
        notification_prefs=_json(account.notification_prefs),
        created_at=account.created_at,
    )


async def _read_me(user_id: uuid.UUID) -> UserOut:
    row = await User.select().where(User.id == user_id).first()
    assert row is not None  # an authenticated principal's user row exists (users are disabled, not deleted)
    return user_out(row)


async def _check_own_avatar(principal: Principal, file_id: uuid.UUID) -> None:
    """422 unless ``file_id`` is the caller's own uploaded avatar image: anyone may read a
    user's current avatar, so taking someone else's file as yours would publish it."""
    if not await File.exists().where(
        File.id == file_id,
        File.owner == principal.user_id,
        File.purpose == FilePurpose.avatar,
        File.status == FileStatus.ready,
    ):
        message = "avatar_file_id must be an avatar you uploaded (POST /api/v1/chat/upload?purpose=avatar)"
        raise ValidationFailed(
            message,
            code="invalid_avatar_file",
            errors=[{"key": "avatar_file_id", "message": message, "source": "body"}],
        )


async def do_update_profile(state: AppState, principal: Principal, changes: UpdateProfileRequest) -> UserOut:
    values: dict[Any, Any] = {}
    if changes.full_name is not msgspec.UNSET:
        if not changes.full_name.strip():
            raise ValidationFailed("full_name must not be blank", code="invalid_full_name")
        values[User.full_name] = changes.full_name.strip()
    if changes.avatar_file_id is not msgspec.UNSET:
        if changes.avatar_file_id is not None:
            await _check_own_avatar(principal, changes.avatar_file_id)
        values[User.avatar_file_id] = changes.avatar_file_id
    if changes.notification_prefs is not msgspec.UNSET:
        values[User.notification_prefs] = changes.notification_prefs
    if values:
        await User.update(values).where(User.id == principal.user_id)
        await announce_user_updated(state, principal.user_id)  # callers carry their account
    return await _read_me(principal.user_id)


async def get_activity(principal: Principal, *, event_limit: int = 50) -> ActivityOut:
    sessions = (
        await UserSession.select()
        .where(UserSession.user == principal.user_id, UserSession.revoked_at.is_null(), UserSession.expires_at > now())
        .order_by(UserSession.last_used_at, ascending=False)
    )
    events = (
        await SecurityEvent.select()
        .where(SecurityEvent.user == principal.user_id)
        .order_by(SecurityEvent.created_at, ascending=False)
        .limit(event_limit)
    )
    return ActivityOut(
        sessions=[
            SessionOut(
                id=s["id"],
                current=s["id"] == principal.session_id,
                created_at=s["created_at"],
                last_used_at=s["last_used_at"],
                expires_at=s["expires_at"],
                ip=s["ip"],
                user_agent=s["user_agent"],
            )
            for s in sessions
        ],
        events=[
            SecurityEventOut(
                kind=e["kind"],
                created_at=e["created_at"],
                ip=e["ip"],
                user_agent=e["user_agent"],
                detail=_json(e["detail"]),
            )
            for e in events
        ],
    )


async def do_delete_account(
    state: AppState, principal: Principal, *, password: str | None, client: ClientInfo
) -> uuid.UUID:
    """Disable the account at once, revoke every session and queue the erasure job.

    Re-authentication: the password, or (for accounts without one) an access
    token issued within the last five minutes.
    """
    user = await User.select(User.password_hash).where(User.id == principal.user_id).first()
    assert user is not None  # an authenticated principal's user row exists
    if user["password_hash"]:
        if password is None or not await verify_password(user["password_hash"], password):
            raise Forbidden("confirm with your current password", code="reauthentication_required")
    elif now().timestamp() - principal.issued_at > RECENT_LOGIN.total_seconds():
        raise Forbidden("sign in again, then delete within five minutes", code="reauthentication_required")
    async with unit_of_work(state.engine):
        await User.update({User.is_active: False, User.disabled_at: now()}).where(User.id == principal.user_id)
        revoked = await revoke_sessions(principal.user_id, "account_deleted")
        await record_event(principal.user_id, "account.deleted", client)
        [request] = await ComplianceRequest.insert(
            ComplianceRequest(user=principal.user_id, kind="erasure", status="pending")
        ).returning(ComplianceRequest.id)
        disabled = ControlEvent(
            kind="user.disabled", user_id=principal.user_id, session_ids=revoked, reason="account_deleted"
        )
        await on_commit(partial(announce, state, disabled))
        await on_commit(partial(state.redis.enqueue_job, "erase_user", str(principal.user_id), str(request["id"])))
    return request["id"]
