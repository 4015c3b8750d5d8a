"""Lounges: creation by mentors, access rules, joining, invitations, moderation, archiving."""

from __future__ import annotations

import uuid

import httpx

from server.domain.tables.notifications import Notification
from tests.support.community import Community
from tests.support.pages import walk

LOUNGES = "/api/v1/lounges"


async def test_an_approved_mentor_opens_a_lounge(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("mentor@example.com")
    lounge = await community.lounge(
        mentor, title="Deep work", access="public", ai_persona="Be brief.", ai_reply_policy="always", capacity=10
    )
    assert lounge["channel"] == f"lounge:{lounge['id']}"
    assert (lounge["title"], lounge["access"], lounge["ai_reply_policy"], lounge["capacity"]) == (
        "Deep work",
        "public",
        "always",
        10,
    )
    assert lounge["member_count"] == 1 and lounge["my_role"] == "mentor" and lounge["mentor_user_id"] == mentor.id

    member = await community.user("member@example.com")
    refused = await client.post(LOUNGES, json={"title": "Mine"}, headers=member.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "not_an_approved_mentor"
    invalid = await client.post(LOUNGES, json={"title": "", "access": "secret"}, headers=mentor.headers)
    assert invalid.status_code == 422


async def test_public_lounge_join_rules(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("m@example.com")
    lounge = await community.lounge(mentor, capacity=2)

    unverified = await community.user("new@example.com", verified=False)
    response = await community.join(unverified, lounge)
    assert response.status_code == 403 and response.json()["code"] == "email_unverified"

    first = await community.user("first@example.com")
    joined = await community.join(first, lounge)
    assert joined.status_code == 200 and joined.json()["status"] == "active"
    assert joined.json()["lounge"]["member_count"] == 2
    assert (await community.join(first, lounge)).json()["status"] == "active"  # idempotent

    late = await community.user("late@example.com")
    full = await community.join(late, lounge)
    assert full.status_code == 409 and full.json()["code"] == "lounge_full"

    assert (await client.post(f"{LOUNGES}/{lounge['id']}/leave", headers=first.headers)).status_code == 204
    assert (await community.join(late, lounge)).json()["status"] == "active"
    cannot = await client.post(f"{LOUNGES}/{lounge['id']}/leave", headers=mentor.headers)
    assert cannot.status_code == 409 and cannot.json()["code"] == "mentor_cannot_leave"


async def test_private_lounge_by_request_or_invitation(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("host@example.com")
    lounge = await community.lounge(mentor, title="Inner circle", access="private")
    stranger = await community.user("stranger@example.com")

    # Unlisted, but a shared link shows what it is, so a stranger can ask to join.
    assert (await client.get(f"{LOUNGES}/{lounge['id']}", headers=stranger.headers)).json()["my_status"] is None
    listed = (await client.get(LOUNGES, headers=stranger.headers)).json()
    assert lounge["id"] not in [item["id"] for item in listed["items"]]
    assert lounge["id"] in [i["id"] for i in (await client.get(LOUNGES, headers=mentor.headers)).json()["items"]]

    requested = await community.join(stranger, lounge)
    assert requested.json()["status"] == "requested"
    assert (await client.get(f"{LOUNGES}/{lounge['id']}/messages", headers=stranger.headers)).status_code == 403
    pending = (await client.get(f"{LOUNGES}/{lounge['id']}/members?status=requested", headers=mentor.headers)).json()
    assert [m["user_id"] for m in pending["items"]] == [stranger.id]
    not_staff = await client.get(f"{LOUNGES}/{lounge['id']}/members?status=requested", headers=stranger.headers)
    assert not_staff.status_code == 403

    approved = await client.post(
        f"{LOUNGES}/{lounge['id']}/members", json={"user_id": stranger.id}, headers=mentor.headers
    )
    assert approved.status_code == 201 and approved.json()["status"] == "active"
    assert (await client.get(f"{LOUNGES}/{lounge['id']}/messages", headers=stranger.headers)).status_code == 200

    guest = await community.user("guest@example.com")
    invited = await client.post(f"{LOUNGES}/{lounge['id']}/members", json={"user_id": guest.id}, headers=mentor.headers)
    assert invited.json()["status"] == "invited"
    notification = await Notification.select().where(Notification.user == uuid.UUID(guest.id)).first()
    assert notification["kind"] == "lounge.invite"
    assert (await client.get(f"{LOUNGES}/{lounge['id']}", headers=guest.headers)).json()["my_status"] == "invited"
    assert (await community.join(guest, lounge)).json()["status"] == "active"


async def test_paid_lounge_needs_an_entitlement(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("pro@example.com")
    lounge = await community.lounge(mentor, access="paid")
    member = await community.user("payer@example.com")
    response = await community.join(member, lounge)
    assert response.status_code == 402
    assert response.json()["code"] == "subscription_required"
    assert (await client.get(f"{LOUNGES}/{lounge['id']}", headers=member.headers)).json()["my_status"] is None


async def test_moderation_remove_mute_promote(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("lead@example.com")
    lounge = await community.lounge(mentor)
    base = f"{LOUNGES}/{lounge['id']}"
    alice, bob = await community.user("alice@example.com"), await community.user("bob@example.com")
    for account in (alice, bob):
        await community.join(account, lounge)

    assert (
        await client.patch(f"{base}/members/{bob.id}", json={"role": "moderator"}, headers=alice.headers)
    ).status_code == 403
    promoted = await client.patch(f"{base}/members/{alice.id}", json={"role": "moderator"}, headers=mentor.headers)
    assert promoted.json()["role"] == "moderator"

    muted = await client.patch(
        f"{base}/members/{bob.id}", json={"muted_until": "2999-01-01T00:00:00Z"}, headers=alice.headers
    )
    assert muted.status_code == 200
    blocked = await community.post(bob, base, "can anyone hear me")
    assert blocked.status_code == 403 and blocked.json()["code"] == "muted"
    assert (await client.get(f"{base}/messages", headers=bob.headers)).status_code == 200
    await client.patch(f"{base}/members/{bob.id}", json={"muted_until": None}, headers=alice.headers)
    posted = await community.post(bob, base, "back again")
    assert posted.status_code == 201

    removed = await client.delete(f"{base}/members/{bob.id}", headers=alice.headers)
    assert removed.status_code == 204
    for response in (
        await client.get(f"{base}/messages", headers=bob.headers),
        await community.post(bob, base, "let me in"),
    ):
        assert response.status_code == 403 and response.json()["code"] == "not_a_member"
    rejoin = await community.join(bob, lounge)
    assert rejoin.status_code == 403 and rejoin.json()["code"] == "removed_from_lounge"
    cannot = await client.delete(f"{base}/members/{mentor.id}", headers=alice.headers)
    assert cannot.status_code == 403


async def test_lounge_edit_and_archive(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("owner@example.com")
    member = await community.user("someone@example.com")
    empty = await community.lounge(mentor, title="Empty")
    busy = await community.lounge(mentor, title="Busy")
    await community.join(member, busy)

    forbidden = await client.put(f"{LOUNGES}/{busy['id']}", json={"title": "Mine now"}, headers=member.headers)
    assert forbidden.status_code == 403
    edited = await client.put(
        f"{LOUNGES}/{busy['id']}",
        json={"title": "Busy room", "ai_paused": True, "ai_reply_policy": "off"},
        headers=mentor.headers,
    )
    assert (edited.json()["title"], edited.json()["ai_paused"], edited.json()["ai_reply_policy"]) == (
        "Busy room",
        True,
        "off",
    )

    assert (await community.post(member, f"{LOUNGES}/{busy['id']}", "hello")).status_code == 201
    assert (await client.delete(f"{LOUNGES}/{empty['id']}", headers=mentor.headers)).json() == {"outcome": "deleted"}
    assert (await client.get(f"{LOUNGES}/{empty['id']}")).status_code == 404
    assert (await client.delete(f"{LOUNGES}/{busy['id']}", headers=mentor.headers)).json() == {"outcome": "archived"}
    archived = await client.get(f"{LOUNGES}/{busy['id']}", headers=member.headers)
    assert archived.json()["archived"] is True
    assert (await client.get(f"{LOUNGES}/{busy['id']}/messages", headers=member.headers)).json()["items"][0][
        "text"
    ] == "hello"
    late = await community.post(member, f"{LOUNGES}/{busy['id']}", "anyone?")
    assert late.status_code == 409 and late.json()["code"] == "lounge_archived"
    listed = [i["id"] for i in (await client.get(LOUNGES)).json()["items"]]
    assert busy["id"] not in listed


async def test_listing_filters_and_pagination(client: httpx.AsyncClient, community: Community) -> None:
    mentor = await community.mentor("lister@example.com")
    for i in range(7):
        await community.lounge(mentor, title=f"Room {i}", description="yoga" if i % 2 else "stoic")
    member = await community.user("reader@example.com")
    everything = await walk(client, LOUNGES)
    assert [item["title"] for item in everything] == [f"Room {i}" for i in reversed(range(7))]  # newest first
    for limit in (1, 2, 3):
        assert await walk(client, LOUNGES, limit=limit) == everything
    yoga = await walk(client, LOUNGES, params={"q": "YOGA"}, limit=1)  # the filter holds on every page
    assert [item["title"] for item in yoga] == ["Room 5", "Room 3", "Room 1"]
    bogus = await client.get(LOUNGES, params={"cursor": "bogus"})
    assert bogus.status_code == 422 and bogus.json()["code"] == "invalid_cursor"
    first = (await client.get(LOUNGES)).json()["items"][0]
    await community.join(member, first)
    mine = (await client.get(f"{LOUNGES}?mine=true", headers=member.headers)).json()
    assert [i["id"] for i in mine["items"]] == [first["id"]] and mine["items"][0]["unread"] == 0
