"""The per-process cache of authenticated sessions (server/domain/accounts/session_cache.py).

It saves the session check on repeated requests, and must never let a change of what that
check reads go unseen: here at once, on every other node as soon as the control event
arrives, and after AUTH_CACHE_SECONDS at the latest when that event is lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from server.domain.accounts.session_cache import SessionCache
from server.domain.tables.accounts import UserSession
from server.foundation.control import ControlEvent
from server.foundation.settings import Settings
from tests.support.accounts import Account, token_in
from tests.support.community import Community
from tests.support.nodes import WebNode

# -- the cache itself ------------------------------------------------------------------------


def test_an_entry_lives_for_the_ttl() -> None:
    cache: SessionCache[str] = SessionCache(ttl=0.05)
    session, user = uuid.uuid4(), uuid.uuid4()
    cache.put(session, user, "row", read_at_generation=cache.generation)
    assert cache.get(session) == "row"
    time.sleep(0.06)
    assert cache.get(session) is None
    assert len(cache) == 0


def test_a_read_that_overlapped_a_forget_is_not_kept() -> None:
    """A session read before a revocation committed must not be cached after it."""
    cache: SessionCache[str] = SessionCache(ttl=5)
    session, user = uuid.uuid4(), uuid.uuid4()
    generation = cache.generation  # the read starts
    cache.apply(ControlEvent(kind="session.revoked", user_id=user, session_ids=[session]))
    cache.put(session, user, "live before the revocation", read_at_generation=generation)
    assert cache.get(session) is None


def test_every_account_event_forgets_all_of_the_users_sessions() -> None:
    cache: SessionCache[str] = SessionCache(ttl=5)
    user, other = uuid.uuid4(), uuid.uuid4()
    mine = [uuid.uuid4() for _ in range(3)]
    theirs = uuid.uuid4()
    for kind in ("session.revoked", "user.disabled", "user.role_changed", "user.updated"):
        for session in mine:
            cache.put(session, user, "row", read_at_generation=cache.generation)
        cache.put(theirs, other, "row", read_at_generation=cache.generation)
        cache.apply(ControlEvent(kind=kind, user_id=user, session_ids=mine[:1]))  # type: ignore[arg-type]
        assert [cache.get(s) for s in mine] == [None, None, None], kind
        assert cache.get(theirs) == "row", kind
    generation = cache.generation
    cache.apply(ControlEvent(kind="channel.access_lost", user_id=other, channel="lounge:x"))
    assert cache.get(theirs) == "row" and cache.generation == generation


async def test_expired_entries_go_without_being_read_again() -> None:
    """Sessions not seen again (a burst of socket connects) do not stay until evicted."""
    cache: SessionCache[str] = SessionCache(ttl=0.05)
    for _ in range(3):
        cache.put(uuid.uuid4(), uuid.uuid4(), "row", read_at_generation=cache.generation)
    assert len(cache) == 3
    await asyncio.sleep(0.2)
    assert len(cache) == 0


def test_the_cache_is_bounded_and_off_at_zero() -> None:
    cache: SessionCache[int] = SessionCache(ttl=5, max_entries=3)
    sessions = [uuid.uuid4() for _ in range(4)]
    for n, session in enumerate(sessions):
        cache.put(session, uuid.uuid4(), n, read_at_generation=cache.generation)
    assert len(cache) == 3 and cache.get(sessions[0]) is None and cache.get(sessions[3]) == 3
    off: SessionCache[int] = SessionCache(ttl=0)
    off.put(sessions[0], uuid.uuid4(), 1, read_at_generation=off.generation)
    assert off.get(sessions[0]) is None and len(off) == 0


# -- in one process --------------------------------------------------------------------------


async def me(client: httpx.AsyncClient, account: Account) -> httpx.Response:
    return await client.get("/api/v1/users/me", headers=account.headers)


async def test_changes_through_the_api_are_seen_at_once(client: httpx.AsyncClient, community: Community) -> None:
    """Each request right after the change, with the session's check cached before it."""
    lounge = await community.lounge(await community.mentor("host@example.com"))
    user = await community.user("cached@example.com", verified=False)
    refused = await community.join(user, lounge)
    assert refused.status_code == 403 and refused.json()["code"] == "email_unverified"  # cached: unverified

    await community.run_jobs()
    mail = next(m for m in reversed(community.mailbox.messages) if m["To"] == user.email)
    verified = await client.post("/api/v1/auth/verify-email", json={"token": token_in(mail, "verify-email")})
    assert verified.status_code == 200, verified.text
    joined = await community.join(user, lounge)
    assert joined.status_code in (200, 201), joined.text

    logout = await client.post("/api/v1/auth/logout", headers=user.headers)
    assert logout.status_code == 204, logout.text
    gone = await me(client, user)
    assert gone.status_code == 401 and gone.json()["code"] == "session_revoked"


async def test_without_the_realtime_redis_a_change_still_stands(
    app: Litestar, client: httpx.AsyncClient, community: Community
) -> None:
    """The control event cannot leave: the change is saved and seen here (others: within the bound)."""
    user = await community.user("no-redis@example.com")
    assert (await me(client, user)).json()["full_name"] == "Test User"
    state = app.state.app_state
    working = state.realtime_redis
    state.realtime_redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        changed = await client.put("/api/v1/users/me", json={"full_name": "Offline"}, headers=user.headers)
        assert changed.status_code == 200, changed.text
        assert (await me(client, user)).json()["full_name"] == "Offline"
    finally:
        await state.realtime_redis.aclose()
        state.realtime_redis = working


# -- across nodes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def nodes(settings: Settings) -> AsyncIterator[tuple[WebNode, WebNode]]:
    """Two web processes; the second keeps sessions for 2 s (the bound for a lost event)."""
    first, second = await asyncio.gather(WebNode(settings).start(), WebNode(settings, AUTH_CACHE_SECONDS="2").start())
    yield first, second
    await asyncio.gather(first.stop(), second.stop())


async def until_status(url: str, account: Account, status: int, within: float) -> float:
    """Seconds until ``GET /users/me`` on ``url`` answers ``status`` (fails after ``within``)."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while True:
            response = await http.get("/api/v1/users/me", headers=account.headers)
            if response.status_code == status:
                return time.monotonic() - started
            assert time.monotonic() - started < within, (response.status_code, response.text)
            await asyncio.sleep(0.01)


async def test_a_logout_on_one_node_reaches_the_cache_of_another(
    nodes: tuple[WebNode, WebNode], community: Community
) -> None:
    first, second = nodes
    user = await community.user("two-nodes@example.com")
    await until_status(second.url, user, 200, within=1)  # the second node caches the session
    async with httpx.AsyncClient(base_url=first.url, timeout=5) as http:
        assert (await http.post("/api/v1/auth/logout", headers=user.headers)).status_code == 204
    # The control event, not the 2 s bound, ends it.
    assert await until_status(second.url, user, 401, within=1) < 1


async def test_a_change_no_event_told_of_ends_within_the_bound(
    nodes: tuple[WebNode, WebNode], community: Community
) -> None:
    """A revocation whose control event was lost (written here straight to the database):
    the second node serves the cached session for at most AUTH_CACHE_SECONDS=2."""
    _, second = nodes
    user = await community.user("lost-event@example.com")
    await until_status(second.url, user, 200, within=1)
    await UserSession.update({UserSession.revoked_at: datetime.now(UTC)}).where(UserSession.user == uuid.UUID(user.id))
    assert await until_status(second.url, user, 401, within=3) <= 2.5


async def test_a_profile_change_on_one_node_shows_on_another(
    nodes: tuple[WebNode, WebNode], community: Community
) -> None:
    """GET /users/me answers from the authenticated session's row: a change made through
    another node must show there as soon as its event arrives."""
    first, second = nodes
    user = await community.user("profile@example.com")
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=5, headers=user.headers) as one,
        httpx.AsyncClient(base_url=second.url, timeout=5, headers=user.headers) as two,
    ):
        assert (await two.get("/api/v1/users/me")).json()["full_name"] == "Test User"  # cached there
        changed = await one.put(
            "/api/v1/users/me", json={"full_name": "Ada L.", "notification_prefs": {"email": False}}
        )
        assert changed.status_code == 200 and changed.json()["full_name"] == "Ada L."
        assert (await one.get("/api/v1/users/me")).json()["notification_prefs"] == {"email": False}
        started = time.monotonic()
        while (await two.get("/api/v1/users/me")).json()["full_name"] != "Ada L.":
            assert time.monotonic() - started < 1, "the second node still answers the old name"
            await asyncio.sleep(0.01)
        assert (await two.get("/api/v1/users/me")).json()["notification_prefs"] == {"email": False}
