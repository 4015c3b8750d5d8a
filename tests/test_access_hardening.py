"""Access control: who sees private lounges and persona prompts, whose file may become an
avatar, whose forwarded address is believed, and a login limit a stranger cannot turn
against the account's owner."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.app import create_app
from server.domain.accounts.services import limit_source
from server.domain.tables.accounts import Role, User
from server.foundation.settings import Settings, SettingsError, load_settings
from tests.support.accounts import PASSWORD, Account, signed_in, token_in
from tests.support.community import Community
from tests.support.lifespan import running_lifespan
from tests.support.nodes import WebNode
from tests.support.pages import walk
from tests.support.smtp import SmtpSink

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
    asking = await community.user("asking@example.com")
    admin = await _make_admin("admin@example.com", community)
    assert (await community.join(asking, private)).json()["status"] == "requested"  # by a shared link
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
        (asking.headers, False),
        (member.headers, True),
        (invited.headers, True),
        (mentor.headers, True),
        (admin.headers, True),
    ):
        everything = {public["id"], private["id"]} if sees_private else {public["id"]}
        profile = await walk(client, f"{API}/mentors/{mentor_id}/lounges", headers=headers, limit=1)
        assert [item["id"] for item in profile] == [i for i in (public["id"], private["id"]) if i in everything]
        only_private = {private["id"]} & everything
        for query, expected in (
            ({}, everything),
            ({"mentor": mentor_id}, everything),
            ({"access": "private"}, only_private),
            ({"q": "circle"}, only_private),
        ):
            # Page by page too: a cursor never reaches past what the caller may see.
            for limit in (None, 1):
                listed = await walk(client, f"{API}/lounges", headers=headers, params=query, limit=limit)
                assert [item["id"] for item in listed] == [i for i in (private["id"], public["id"]) if i in expected], (
                    headers,
                    query,
                    limit,
                )


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


@asynccontextmanager
async def _sources(settings: Settings, *ips: str, **limits: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One app with the given auth limits, and a client per source address."""
    application = create_app(msgspec.structs.replace(settings, **limits))
    async with running_lifespan(application), AsyncExitStack() as stack:
        clients = []
        for ip in ips:
            transport = httpx.ASGITransport(app=application, client=(ip, 40000))
            clients.append(await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t")))
        yield clients


async def _login(http: httpx.AsyncClient, email: str, password: str) -> int:
    return (await http.post(f"{API}/auth/login", json={"email": email, "password": password})).status_code


async def test_a_stranger_guessing_cannot_lock_the_owner_out(app: Litestar, settings: Settings) -> None:
    async with _sources(settings, "203.0.113.7", "198.51.100.20", auth_rate_limit_account="3/60") as (attacker, owner):
        await signed_in(owner, "owner@example.com")
        assert [await _login(attacker, "owner@example.com", f"guess number {i}") for i in range(3)] == [401] * 3
        blocked = await attacker.post(f"{API}/auth/login", json={"email": "owner@example.com", "password": PASSWORD})
        assert blocked.status_code == 429 and blocked.json()["code"] == "rate_limited"  # even the right password
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert await _login(attacker, "someone.else@example.com", "guess number 9") == 401  # their own budget

        assert await _login(owner, "owner@example.com", PASSWORD) == 200  # the owner, from their own network
        assert await _login(owner, "owner@example.com", "a typo in it") == 401

        # A look-alike "email" must not reach the owner's counters for another source.
        crafted = "owner@example.com:198.51.100.20"
        assert [await _login(attacker, crafted, f"guess number {i}") for i in range(4)] == [401, 401, 401, 429]
        assert await _login(owner, "owner@example.com", PASSWORD) == 200


async def test_only_failed_sign_ins_count_and_a_success_clears_them(app: Litestar, settings: Settings) -> None:
    async with _sources(settings, "198.51.100.20", auth_rate_limit_account="3/60") as (owner,):
        await signed_in(owner, "owner@example.com")
        assert [await _login(owner, "owner@example.com", PASSWORD) for _ in range(5)] == [200] * 5
        assert [await _login(owner, "owner@example.com", "a typo in it") for _ in range(2)] == [401] * 2
        assert await _login(owner, "owner@example.com", PASSWORD) == 200  # forgets the two typos
        statuses = [await _login(owner, "owner@example.com", "a typo in it") for _ in range(4)]
        assert statuses == [401, 401, 401, 429]


async def test_guessing_from_many_sources_is_capped_without_locking_out_known_ones(
    app: Litestar, settings: Settings, mailbox: SmtpSink, run_jobs
) -> None:
    bots = [f"203.0.113.{i}" for i in range(1, 6)]
    async with _sources(
        settings,
        "198.51.100.20",
        "192.0.2.44",
        *bots,
        auth_rate_limit_account="3/60",
        auth_login_failures_account="4/60",
    ) as (home, travelling, *botnet):
        await signed_in(home, "owner@example.com")
        assert [await _login(bot, "owner@example.com", "guess guess") for bot in botnet[:4]] == [401] * 4
        # The account has had its share of failures: a new source is refused, right password or not ...
        assert await _login(botnet[4], "owner@example.com", PASSWORD) == 429
        assert await _login(travelling, "owner@example.com", PASSWORD) == 429
        # ... but where the owner signed in before still works.
        assert await _login(home, "owner@example.com", PASSWORD) == 200
        assert await _login(home, "other@example.com", "guess guess") == 401  # other accounts are untouched

        # Proving control of the mailbox (a password reset) lifts the account-wide cap.
        assert (
            await travelling.post(f"{API}/auth/forgot-password", json={"email": "owner@example.com"})
        ).status_code == 202
        await run_jobs()
        token = token_in(next(m for m in reversed(mailbox.messages) if "Reset" in m["Subject"]), "reset-password")
        reset = await travelling.post(
            f"{API}/auth/reset-password", json={"token": token, "password": "a new passphrase"}
        )
        assert reset.status_code == 200, reset.text
        assert await _login(travelling, "owner@example.com", "a new passphrase") == 200


async def _signed_in_ip(http: httpx.AsyncClient, email: str, forwarded_for: str) -> str:
    """Register and sign in with an ``X-Forwarded-For`` header; the address the server recorded."""
    forwarded = {"X-Forwarded-For": forwarded_for}
    body = {"email": email, "password": PASSWORD, "full_name": "Proxy Test"}
    assert (await http.post(f"{API}/auth/register", json=body, headers=forwarded)).status_code == 201
    login = await http.post(f"{API}/auth/login", json={"email": email, "password": PASSWORD}, headers=forwarded)
    assert login.status_code == 200, login.text
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    [session] = (await http.get(f"{API}/users/me/activity", headers=bearer)).json()["sessions"]
    return session["ip"]


async def test_the_served_app_ignores_forwarded_headers_by_default(app: Litestar, settings: Settings) -> None:
    """``python -m server serve`` behind no configured proxy: a local caller cannot pick its address."""
    node = await WebNode(settings, TRUSTED_PROXIES="").start()
    try:
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            assert await _signed_in_ip(http, "local@example.com", "203.0.113.9") == "127.0.0.1"
    finally:
        await node.stop()


async def test_forwarded_headers_are_believed_only_from_the_named_proxies(app: Litestar, settings: Settings) -> None:
    async with _sources(settings, "10.0.0.5", "192.0.2.77", trusted_proxies=["10.0.0.0/24"]) as (proxy, direct):
        # The proxy appends the address it saw; what the client wrote before it is not believed.
        assert await _signed_in_ip(proxy, "proxied@example.com", "6.6.6.6, 198.51.100.20") == "198.51.100.20"
        assert await _signed_in_ip(direct, "direct@example.com", "198.51.100.21") == "192.0.2.77"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert load_settings({"TRUSTED_PROXIES": "10.0.0.1, 172.16.0.0/12,::1"}).trusted_proxies == [
        "10.0.0.1",
        "172.16.0.0/12",
        "::1",
    ]
    assert load_settings({}).trusted_proxies == []
    with pytest.raises(SettingsError) as refused:
        load_settings({"TRUSTED_PROXIES": "10.0.0.1,proxy.internal"})
    assert (
        str(refused.value) == "invalid configuration: TRUSTED_PROXIES: 'proxy.internal' is not an IP address or network"
    )


async def test_an_ipv6_network_counts_as_one_source(app: Litestar, settings: Settings) -> None:
    """A host gets a whole /64: rotating addresses inside it must not reset the per-source limits."""
    ips = ("2001:db8:1:2::a", "2001:db8:1:2:ffff::b", "2001:db8:1:3::a")
    async with _sources(settings, *ips, auth_rate_limit_account="3/60", auth_rate_limit_ip="4/60") as clients:
        first, same_network, next_network = clients
        statuses = [await _login(http, "owner@example.com", "guess guess") for http in (first, same_network) * 2]
        assert statuses == [401, 401, 401, 429]
        assert await _login(next_network, "owner@example.com", "guess guess") == 401
        assert await _login(same_network, "other@example.com", "guess guess") == 429  # its 5th attempt from the /64


def test_limit_sources() -> None:
    assert limit_source("192.0.2.1") == "192.0.2.1"
    assert limit_source("::ffff:192.0.2.1") == "192.0.2.1"  # a dual-stack socket's IPv4 peer
    assert limit_source("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert limit_source("unknown") == "unknown"
