"""Devices: registering a phone's push token, listing and removing them.

A device belongs to the session that registered it: signing out, revoking the session
(``server.domain.accounts.services.revoke_sessions``) and erasing the account remove it;
pushes go only to devices of live sessions. A token is unique per platform: registering it
again updates it and moves it to the caller (a phone handed to someone else stops getting
the previous user's pushes). At most ``PUSH_MAX_DEVICES_PER_USER`` per user: one more drops
the least recently registered.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from server.domain.accounts.services import Principal
from server.domain.push.schemas import DeviceIn, DeviceOut, DevicePage
from server.domain.tables.push import ApnsEnvironment, PushDevice, PushPlatform
from server.foundation.errors import NotFound, ValidationFailed
from server.foundation.pagination import keyset_page
from server.foundation.state import AppState
from server.foundation.unit_of_work import unit_of_work

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
HINT_CHARS = 8

_APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")


def token_hint(token: str) -> str:
    """What is ever shown of a token: its last characters."""
    return token[-HINT_CHARS:]


def _invalid(key: str, message: str, code: str) -> ValidationFailed:
    return ValidationFailed(message, code=code, errors=[{"key": key, "message": message, "source": "body"}])


def _checked(state: AppState, data: DeviceIn) -> tuple[str, str | None, str]:
    """The token, app id and environment to store, after the per-platform rules."""
    settings = state.settings
    if data.platform == PushPlatform.apns:
        if not _APNS_TOKEN.fullmatch(data.token):
            raise _invalid("token", "an APNs device token is 64 to 200 hexadecimal digits", "invalid_device_token")
        if data.app_id is None:
            raise _invalid("app_id", "app_id (your app's bundle id) is required for apns", "app_id_required")
        if settings.apns_bundle_ids and data.app_id not in settings.apns_bundle_ids:
            raise _invalid("app_id", "this server does not push to that bundle id", "unknown_app_id")
        return data.token.lower(), data.app_id, data.environment
    if data.environment != ApnsEnvironment.production:
        raise _invalid("environment", "environment applies to apns only", "invalid_environment")
    return data.token, data.app_id, ApnsEnvironment.production


def device_out(row: dict[str, Any], session_id: uuid.UUID) -> DeviceOut:
    return DeviceOut(
        id=row["id"],
        platform=row["platform"],
        token_hint=token_hint(row["token"]),
        app_id=row["app_id"],
        environment=row["environment"],
        locale=row["locale"],
        app_version=row["app_version"],
        current=row["session"] == session_id,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_pushed_at=row["last_pushed_at"],
    )


_COLUMNS = (
    'id, "user", session, platform, token, app_id, environment, locale, app_version,'
    " created_at, updated_at, last_pushed_at"
)


async def do_register_device(state: AppState, principal: Principal, data: DeviceIn) -> tuple[DeviceOut, bool]:
    """Register (or re-register) a device for the caller's session; returns it and whether it is new."""
    token, app_id, environment = _checked(state, data)
    async with unit_of_work(state.engine):
        # One registration per user at a time: the cap below counts what this one leaves.
        await PushDevice.raw(
            "SELECT pg_advisory_xact_lock(hashtextextended({}, 0))", f"push:devices:{principal.user_id}"
        )
        rows = await PushDevice.raw(
            f"""
            INSERT INTO push_devices AS d
                (id, "user", session, platform, token, app_id, environment, locale, app_version,
                 created_at, updated_at)
            VALUES ({{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, now(), now())
            ON CONFLICT (platform, token) DO UPDATE SET
                "user" = excluded."user", session = excluded.session, app_id = excluded.app_id,
                environment = excluded.environment, locale = excluded.locale,
                app_version = excluded.app_version, updated_at = now(),
                created_at = CASE WHEN d."user" = excluded."user" THEN d.created_at ELSE now() END
            RETURNING {_COLUMNS}, (xmax = 0) AS inserted
            """,
            uuid.uuid4(),
            principal.user_id,
            principal.session_id,
            data.platform.value,
            token,
            app_id,
            environment,
            data.locale,
            data.app_version,
        )
        row = rows[0]
        # Over the cap: the least recently registered others go.
        await PushDevice.raw(
            """
            DELETE FROM push_devices WHERE id IN (
                SELECT id FROM push_devices WHERE "user" = {} AND id <> {}
                ORDER BY updated_at DESC, id DESC OFFSET {}
            )
            """,
            principal.user_id,
            row["id"],
            state.settings.push_max_devices_per_user - 1,
        )
    return device_out(row, principal.session_id), bool(row["inserted"])


async def list_devices(
    principal: Principal, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> DevicePage:
    """The caller's devices, most recently registered first."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    page, next_cursor = await keyset_page(
        f'SELECT {_COLUMNS} FROM push_devices WHERE "user" = {{}}',
        [principal.user_id],
        moment="updated_at",
        row_id="id",
        cursor=cursor,
        limit=limit,
    )
    return DevicePage(items=[device_out(row, principal.session_id) for row in page], next_cursor=next_cursor)


async def do_delete_device(principal: Principal, device_id: uuid.UUID) -> None:
    """Remove one of the caller's devices; anyone else's is a 404."""
    rows = await PushDevice.raw(
        'DELETE FROM push_devices WHERE id = {} AND "user" = {} RETURNING id', device_id, principal.user_id
    )
    if not rows:
        raise NotFound("no such device", code="device_not_found")


async def export_devices(user_id: uuid.UUID) -> list[dict[str, Any]]:
    """The user's devices for their data export: everything but the token itself (its hint only)."""
    rows = await PushDevice.raw(
        f'SELECT {_COLUMNS} FROM push_devices WHERE "user" = {{}} ORDER BY created_at, id', user_id
    )
    return [
        {key: value for key, value in row.items() if key not in ("token", "user")}
        | {"token_hint": token_hint(row["token"])}
        for row in rows
    ]
