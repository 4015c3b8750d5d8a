"""The signed-in user's account: profile, password change, activity, deletion."""

from __future__ import annotations

import uuid

import httpx

from server.domain.tables.accounts import User
from server.domain.tables.compliance import ComplianceRequest
from server.domain.tables.notes import Note
from tests.support.accounts import PASSWORD, login, signed_in

ME = "/api/v1/users/me"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


async def test_profile_read_and_update(client: httpx.AsyncClient) -> None:
    account = await signed_in(client, "profile@example.com")
    me = (await client.get(ME, headers=account.headers)).json()
    assert me["full_name"] == "Test User" and me["notification_prefs"] == {}

    uploaded = await client.post(
        "/api/v1/chat/upload",
        params={"filename": "me.png", "purpose": "avatar"},
        content=PNG,
        headers={**account.headers, "Content-Type": "image/png"},
    )
    avatar = uploaded.json()["id"]  # only an avatar of your own is accepted (tests/test_access_hardening.py)
    updated = await client.put(
        ME,
        headers=account.headers,
        json={"full_name": "Grace Hopper", "avatar_file_id": avatar, "notification_prefs": {"email": False}},
    )
    assert updated.status_code == 200
    body = updated.json()
    assert (body["full_name"], body["avatar_file_id"], body["notification_prefs"]) == (
        "Grace Hopper",
        avatar,
        {"email": False},
    )
    partial = await client.put(ME, headers=account.headers, json={"full_name": "G. Hopper"})
    assert partial.json()["avatar_file_id"] == avatar


async def test_profile_update_is_validated(client: httpx.AsyncClient) -> None:
    account = await signed_in(client, "strict@example.com")
    for body in ({"email": "new@example.com"}, {"role": "admin"}, {"full_name": ""}, {"full_name": "x" * 201}):
        response = await client.put(ME, headers=account.headers, json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_failed"
    assert (await client.get(ME, headers=account.headers)).json()["role"] == "user"


async def test_password_change_needs_the_old_one_and_ends_other_sessions(client: httpx.AsyncClient) -> None:
    account = await signed_in(client, "changer@example.com")
    elsewhere = await login(client, account.email)

    wrong = await client.patch(
        f"{ME}/password",
        headers=account.headers,
        json={"current_password": "not it at all", "new_password": "another fine passphrase"},
    )
    assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_credentials"
    weak = await client.patch(
        f"{ME}/password", headers=account.headers, json={"current_password": PASSWORD, "new_password": "password123"}
    )
    assert weak.status_code == 422 and weak.json()["code"] == "weak_password"

    done = await client.patch(
        f"{ME}/password",
        headers=account.headers,
        json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
    )
    assert done.status_code == 204
    assert (await client.get(ME, headers=account.headers)).status_code == 200
    other = await client.get(ME, headers={"Authorization": f"Bearer {elsewhere['access_token']}"})
    assert other.status_code == 401 and other.json()["code"] == "session_revoked"
    assert (
        await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    ).status_code == 401
    await login(client, account.email, "another fine passphrase")


async def test_activity_lists_sessions_and_security_events(client: httpx.AsyncClient) -> None:
    account = await signed_in(client, "busy@example.com")
    await client.post("/api/v1/auth/login", json={"email": account.email, "password": "wrong password!"})
    await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}, headers={"User-Agent": "phone/1.0"}
    )

    activity = (await client.get(f"{ME}/activity", headers=account.headers)).json()
    assert len(activity["sessions"]) == 2
    assert [s["current"] for s in activity["sessions"]].count(True) == 1
    assert {s["user_agent"] for s in activity["sessions"]} >= {"phone/1.0"}
    assert all(s["ip"] == "127.0.0.1" for s in activity["sessions"])
    kinds = [e["kind"] for e in activity["events"]]
    assert kinds[:3] == ["login.succeeded", "login.failed", "login.succeeded"]
    assert "account.registered" in kinds


async def test_deleting_the_account_disables_it_now_and_erases_it_in_the_worker(
    client: httpx.AsyncClient, run_jobs
) -> None:
    account = await signed_in(client, "leaving@example.com")
    await Note.insert(Note(user=uuid.UUID(account.id), title="diary", content="private thoughts", tags=[]))

    refused = await client.request("DELETE", ME, headers=account.headers, json={"password": "not my password"})
    assert refused.status_code == 403 and refused.json()["code"] == "reauthentication_required"
    missing = await client.request("DELETE", ME, headers=account.headers)
    assert missing.status_code == 403

    accepted = await client.request("DELETE", ME, headers=account.headers, json={"password": PASSWORD})
    assert accepted.status_code == 202
    request_id = accepted.json()["compliance_request_id"]

    gone = await client.get(ME, headers=account.headers)
    assert gone.status_code == 401 and gone.json()["code"] == "account_disabled"
    assert (
        await client.post("/api/v1/auth/login", json={"email": account.email, "password": PASSWORD})
    ).status_code == 401
    refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 401

    await run_jobs()
    user = await User.select().where(User.id == uuid.UUID(account.id)).first()
    assert user["email"].endswith("@erased.invalid") and user["full_name"] == "Deleted user"
    assert user["password_hash"] is None and user["is_active"] is False
    assert await Note.count().where(Note.user == uuid.UUID(account.id)) == 0
    request = await ComplianceRequest.select().where(ComplianceRequest.id == uuid.UUID(request_id)).first()
    assert (request["kind"], request["status"]) == ("erasure", "completed")
    # The address is free again.
    await signed_in(client, "leaving@example.com")
