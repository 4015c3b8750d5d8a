"""Access control: who sees private lounges and persona prompts, whose file may become an
avatar, whose forwarded address is believed, and a login limit a stranger cannot turn
against the account's owner."""

from __future__ import annotations

import uuid

import httpx

from server.accounts.tables import Role, User
from tests.support.accounts import Account
from tests.support.community import Community

API = "/api/v1"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


async def _make_admin(email: str, community: Community) -> Account:
    account = await community.user(email)
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(account.id))
    return account


async def test_private_lounges_are_listed_only_to_members_mentor_and_admins(
    client: httpx.AsyncClient, community: Community
) -> None:
    mentor = await community.mentor("host@example.com")
    public = await community.lounge(mentor, title="Open room")
    private = await community.lounge(mentor, title="Inner circle", access="private")
    member = await community.user("member@example.com")
    invited = await community.user("invited@example.com")
    removed = await community.user("removed@example.com")
    stranger = await community.user("stranger@example.com")
    admin = await _make_admin("admin@example.com", community)
    for account in (member, removed):
        await client.post(
            f"{API}/lounges/{private['id']}/members", json={"user_id": account.id}, headers=mentor.headers
        )
        assert (await community.join(account, private)).json()["status"] == "active"
    await client.post(f"{API}/lounges/{private['id']}/members", json={"user_id": invited.id}, headers=mentor.headers)
    gone = await client.delete(f"{API}/lounges/{private['id']}/members/{removed.id}", headers=mentor.headers)
    assert gone.status_code == 204

    mentor_id = public["mentor_id"]
    for headers, sees_private in (
        ({}, False),
        (stranger.headers, False),
        (removed.headers, False),
        (member.headers, True),
        (invited.headers, True),
        (mentor.headers, True),
        (admin.headers, True),
    ):
        everything = {public["id"], private["id"]} if sees_private else {public["id"]}
        profile = await client.get(f"{API}/mentors/{mentor_id}/lounges", headers=headers)
        assert profile.status_code == 200, profile.text
        assert {item["id"] for item in profile.json()} == everything, headers
        only_private = {private["id"]} & everything
        for query, expected in (
            ("", everything),
            (f"?mentor={mentor_id}", everything),
            ("?access=private", only_private),
            ("?q=circle", only_private),
        ):
            page = (await client.get(f"{API}/lounges{query}", headers=headers)).json()
            assert {item["id"] for item in page["items"]} == expected, (headers, query)
            assert page["total"] == len(expected), (headers, query)


async def test_the_persona_prompt_is_shown_only_to_the_mentor_and_admins(
    client: httpx.AsyncClient, community: Community
) -> None:
    mentor = await community.mentor("host@example.com")
    persona = "You are Ada. Never reveal the price list."
    public = await community.lounge(mentor, title="Open room", ai_persona=persona)
    private = await community.lounge(mentor, title="Inner circle", access="private", ai_persona=persona)
    assert public["ai_persona"] == persona  # the creating mentor sees it
    member = await community.user("member@example.com")
    moderator = await community.user("moderator@example.com")
    stranger = await community.user("stranger@example.com")
    admin = await _make_admin("admin@example.com", community)
    joined = await community.join(member, public)
    assert joined.status_code == 200 and joined.json()["lounge"]["ai_persona"] is None
    await community.join(moderator, public)
    promoted = await client.patch(
        f"{API}/lounges/{public['id']}/members/{moderator.id}", json={"role": "moderator"}, headers=mentor.headers
    )
    assert promoted.status_code == 200

    for headers, sees in (
        ({}, False),
        (stranger.headers, False),
        (member.headers, False),
        (moderator.headers, False),
        (mentor.headers, True),
        (admin.headers, True),
    ):
        expected = persona if sees else None
        for lounge in (public, private):
            one = await client.get(f"{API}/lounges/{lounge['id']}", headers=headers)
            assert one.status_code == 200 and one.json()["ai_persona"] == expected, headers
        listed = (await client.get(f"{API}/lounges", headers=headers)).json()["items"]
        assert {item["ai_persona"] for item in listed} == {expected}, headers
    updated = await client.put(f"{API}/lounges/{public['id']}", json={"title": "Renamed"}, headers=mentor.headers)
    assert updated.json()["ai_persona"] == persona


async def _upload(client: httpx.AsyncClient, account: Account, purpose: str) -> str:
    response = await client.post(
        f"{API}/chat/upload",
        params={"filename": "me.png", "purpose": purpose},
        content=PNG,
        headers={**account.headers, "Content-Type": "image/png"},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_only_your_own_avatar_file_can_become_your_avatar(
    client: httpx.AsyncClient, community: Community
) -> None:
    alice = await community.user("alice@example.com")
    mallory = await community.user("mallory@example.com")
    alices_avatar = await _upload(client, alice, "avatar")  # uploaded, not (yet) her avatar
    alices_attachment = await _upload(client, alice, "attachment")
    mallorys_attachment = await _upload(client, mallory, "attachment")
    for file_id in (alices_avatar, alices_attachment, mallorys_attachment, str(uuid.uuid4())):
        refused = await client.put(f"{API}/users/me", json={"avatar_file_id": file_id}, headers=mallory.headers)
        assert refused.status_code == 422, file_id
        assert refused.json()["code"] == "invalid_avatar_file"
        assert [error["key"] for error in refused.json()["errors"]] == ["avatar_file_id"]
    assert (await client.get(f"{API}/users/me", headers=mallory.headers)).json()["avatar_file_id"] is None
    stolen = await client.get(f"{API}/files/{alices_avatar}", headers=mallory.headers)
    assert stolen.status_code == 404 and stolen.json()["code"] == "file_not_found"

    own = await _upload(client, mallory, "avatar")
    accepted = await client.put(f"{API}/users/me", json={"avatar_file_id": own}, headers=mallory.headers)
    assert accepted.status_code == 200 and accepted.json()["avatar_file_id"] == own
    assert (await client.get(f"{API}/files/{own}", headers=alice.headers)).status_code == 200  # a shown avatar
    cleared = await client.put(f"{API}/users/me", json={"avatar_file_id": None}, headers=mallory.headers)
    assert cleared.status_code == 200 and cleared.json()["avatar_file_id"] is None
