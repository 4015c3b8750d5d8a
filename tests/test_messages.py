"""The message store through REST: offsets, idempotency, permissions, pagination,
edits, deletions, reactions, read positions, the publication log and broadcast."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import msgspec
from litestar import Litestar

from server.domain.tables.chat import Message
from server.streams.broker import WIRE_PUBLICATION, WIRE_REWRITE, Wire, pubsub_channel
from server.streams.tables import ChannelPublication
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.pages import envelope, walk
from tests.support.shard_listen import listening

LOUNGES = "/api/v1/lounges"
THREADS = "/api/v1/chat/threads"


async def _lounge_with_members(community: Community, *emails: str) -> tuple[dict, Account, list[Account]]:
    mentor = await community.mentor("coach@example.com")
    lounge = await community.lounge(mentor)
    members = [await community.user(email) for email in emails]
    for member in members:
        assert (await community.join(member, lounge)).json()["status"] == "active"
    return lounge, mentor, members


async def test_fifty_concurrent_posts_get_offsets_one_to_fifty(client: httpx.AsyncClient, community: Community) -> None:
    lounge, mentor, members = await _lounge_with_members(community, "a@example.com", "b@example.com")
    path = f"{LOUNGES}/{lounge['id']}"
    authors = [mentor, *members]
    responses = await asyncio.gather(*(community.post(authors[i % 3], path, f"message {i}") for i in range(50)))
    assert all(r.status_code == 201 for r in responses)
    assert sorted(r.json()["offset"] for r in responses) == list(range(1, 51))
    stored = await Message.select(Message.offset).where(Message.channel == lounge["channel"]).order_by(Message.offset)
    assert [row["offset"] for row in stored] == list(range(1, 51))
    log = await ChannelPublication.select(ChannelPublication.offset).where(
        ChannelPublication.channel == lounge["channel"]
    )
    assert sorted(row["offset"] for row in log) == list(range(1, 51))
    mentor_posts = [r.json() for r in responses if r.json()["sender"]["id"] == mentor.id]
    assert {m["sender"]["type"] for m in mentor_posts} == {"mentor"}


async def test_a_retried_post_returns_the_original_and_stores_nothing(
    client: httpx.AsyncClient, community: Community
) -> None:
    lounge, _, [member] = await _lounge_with_members(community, "retry@example.com")
    path = f"{LOUNGES}/{lounge['id']}/messages"
    body = {"client_id": str(uuid.uuid4()), "text": "only once"}
    first = await client.post(path, json=body, headers=member.headers)
    again = await asyncio.gather(*(client.post(path, json=body, headers=member.headers) for _ in range(5)))
    assert first.status_code == 201
    assert {r.status_code for r in again} == {200}
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert await Message.count().where(Message.channel == lounge["channel"]) == 1
    # The same client_id elsewhere is a client bug, reported as such.
    thread = (await client.post(THREADS, json={}, headers=member.headers)).json()
    elsewhere = await client.post(f"{THREADS}/{thread['id']}/messages", json=body, headers=member.headers)
    assert elsewhere.status_code == 409 and elsewhere.json()["code"] == "client_id_reused"


async def test_strangers_and_non_members_are_refused_everywhere(
    client: httpx.AsyncClient, community: Community
) -> None:
    lounge, _, [member] = await _lounge_with_members(community, "insider@example.com")
    private_mentor = await community.mentor("quiet@example.com")
    private = await community.lounge(private_mentor, access="private")
    outsider = await community.user("outsider@example.com")
    thread = (await client.post(THREADS, json={"title": "mine"}, headers=member.headers)).json()
    posted = await community.post(member, f"{LOUNGES}/{lounge['id']}", "hi")
    offset = posted.json()["offset"]

    def routes(base: str) -> list[tuple[str, str, dict | None]]:
        return [
            ("GET", f"{base}/messages", None),
            ("POST", f"{base}/messages", {"client_id": str(uuid.uuid4()), "text": "sneaky"}),
            ("PATCH", f"{base}/messages/{offset}", {"text": "edited"}),
            ("DELETE", f"{base}/messages/{offset}", None),
            ("POST", f"{base}/messages/{offset}/reactions", {"emoji": "👍"}),
            ("DELETE", f"{base}/messages/{offset}/reactions/👍", None),
            ("POST", f"{base}/read", {"offset": 1}),
        ]

    for base in (f"{LOUNGES}/{lounge['id']}", f"{LOUNGES}/{private['id']}"):
        for method, url, body in routes(base):
            response = await client.request(method, url, json=body, headers=outsider.headers)
            assert response.status_code in (403, 404), (method, url, response.status_code)
            assert response.headers["content-type"].startswith("application/problem+json")
    thread_base = f"{THREADS}/{thread['id']}"
    for method, url, body in [
        ("GET", thread_base, None),
        ("PATCH", thread_base, {"title": "x"}),
        ("DELETE", thread_base, None),
        *routes(thread_base),
    ]:
        for who in (outsider, None):
            response = await client.request(method, url, json=body, headers=who.headers if who else {})
            expected = 404 if who else 401
            assert response.status_code == expected, (method, url, who, response.status_code)
    assert await Message.count() == 1
    assert (await client.get(thread_base, headers=member.headers)).status_code == 200


async def test_pages_return_each_message_exactly_once(client: httpx.AsyncClient, community: Community) -> None:
    lounge, _, [member] = await _lounge_with_members(community, "pager@example.com")
    path = f"{LOUNGES}/{lounge['id']}"
    for i in range(25):
        assert (await community.post(member, path, f"m{i}")).status_code == 201

    # The newest page, then older ones through next_cursor; each page in offset order.
    backwards: list[int] = []
    query: dict[str, Any] = {"limit": 10}
    while True:
        page = envelope(await client.get(f"{path}/messages", params=query, headers=member.headers))
        assert page["last_offset"] == 25
        offsets = [m["offset"] for m in page["items"]]
        assert offsets == sorted(offsets)
        backwards = offsets + backwards
        if page["next_cursor"] is None:
            break
        query = {"limit": 10, "cursor": page["next_cursor"]}
    assert backwards == list(range(1, 26))

    # From an offset (what a client that lost its socket position holds), then onwards by cursor.
    forwards: list[int] = []
    query = {"limit": 7, "after": 0}
    while True:
        page = envelope(await client.get(f"{path}/messages", params=query, headers=member.headers))
        forwards += [m["offset"] for m in page["items"]]
        if page["next_cursor"] is None:
            break
        query = {"limit": 7, "cursor": page["next_cursor"]}
    assert forwards == list(range(1, 26))
    older = envelope(await client.get(f"{path}/messages?before=5&limit=2", headers=member.headers))
    assert [m["offset"] for m in older["items"]] == [3, 4] and older["next_cursor"] is not None
    for query_string in ("before=5&after=1", f"after=1&cursor={older['next_cursor']}"):
        refused = await client.get(f"{path}/messages?{query_string}", headers=member.headers)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_pagination", refused.text
    bogus = await client.get(f"{path}/messages?cursor=bogus", headers=member.headers)
    assert bogus.status_code == 422 and bogus.json()["code"] == "invalid_cursor"


async def test_edits_deletions_reactions_and_reads_are_events_in_the_log(
    app: Litestar, client: httpx.AsyncClient, community: Community
) -> None:
    lounge, mentor, [alice, bob] = await _lounge_with_members(community, "alice@example.com", "bob@example.com")
    path = f"{LOUNGES}/{lounge['id']}"
    state = app.state.app_state
    async with listening(state.realtime_redis, pubsub_channel(state.settings.redis_prefix, lounge["channel"])) as heard:
        first = (await community.post(alice, path, "hello all")).json()
        reply = await community.post(bob, path, "hi alice", reply_to=first["offset"])
        assert reply.json()["reply_to"] == 1
        bad_reply = await community.post(bob, path, "to nowhere", reply_to=99)
        assert bad_reply.status_code == 422 and bad_reply.json()["code"] == "invalid_reply_to"

        not_yours = await client.patch(f"{path}/messages/1", json={"text": "hacked"}, headers=bob.headers)
        assert not_yours.status_code == 403
        edited = await client.patch(f"{path}/messages/1", json={"text": "hello everyone"}, headers=alice.headers)
        assert edited.json()["text"] == "hello everyone" and edited.json()["edited_at"]

        counts = await client.post(f"{path}/messages/1/reactions", json={"emoji": "🎉"}, headers=bob.headers)
        assert counts.json() == {"🎉": 1}
        await client.post(f"{path}/messages/1/reactions", json={"emoji": "🎉"}, headers=bob.headers)  # no-op
        await client.post(f"{path}/messages/1/reactions", json={"emoji": "🎉"}, headers=mentor.headers)
        assert (await client.delete(f"{path}/messages/1/reactions/🎉", headers=bob.headers)).json() == {"🎉": 1}

        assert (await client.delete(f"{path}/messages/2", headers=alice.headers)).status_code == 403
        assert (await client.delete(f"{path}/messages/2", headers=mentor.headers)).status_code == 204
        history = (await client.get(f"{path}/messages", headers=alice.headers)).json()["items"]
        assert [(m["offset"], m["text"], m["deleted"]) for m in history] == [
            (1, "hello everyone", False),
            (2, "", True),
        ]
        assert history[0]["reactions"] == {"🎉": 1}

        received, rewritten = [], []
        async with asyncio.timeout(3):
            while len(received) < 7:
                wire = msgspec.json.decode(await heard.get(), type=Wire)
                (received if wire.kind == WIRE_PUBLICATION else rewritten).append(wire)
    assert [w.offset for w in received] == list(range(1, 8))
    # The edit rewrote message 1 in place, the deletion message 2 (tests/test_privacy.py has the why).
    assert [(w.kind, w.offset) for w in rewritten] == [(WIRE_REWRITE, 1), (WIRE_REWRITE, 2)]
    types = [msgspec.json.decode(w.data)["type"] for w in received]
    assert types == ["message", "message", "message.edited", "reaction", "reaction", "reaction", "message.deleted"]
    assert len({w.epoch for w in received}) == 1
    log = await ChannelPublication.select(ChannelPublication.offset).where(
        ChannelPublication.channel == lounge["channel"]
    )
    assert sorted(r["offset"] for r in log) == list(range(1, 8))

    read = await client.post(f"{path}/read", json={"offset": 1}, headers=bob.headers)
    assert read.json()["last_read_offset"] == 1 and read.json()["unread"] == 0  # 2 is bob's own and deleted
    backwards = await client.post(f"{path}/read", json={"offset": 0}, headers=bob.headers)
    assert backwards.json()["last_read_offset"] == 1
    unread = (await client.get(f"{LOUNGES}/{lounge['id']}", headers=mentor.headers)).json()["unread"]
    assert unread == 1  # alice's message


async def test_threads_are_private_to_their_owner(client: httpx.AsyncClient, community: Community) -> None:
    owner = await community.user("owner@example.com", verified=False)
    created = await client.post(THREADS, json={"title": "Career plan"}, headers=owner.headers)
    assert created.status_code == 201
    thread = created.json()
    assert thread["channel"] == f"thread:{thread['id']}" and thread["title"] == "Career plan"
    assert (await client.post(THREADS, json={}, headers=owner.headers)).json()["title"] == "New conversation"

    posted = await community.post(owner, f"{THREADS}/{thread['id']}", "What should I learn next?")
    assert posted.status_code == 201 and posted.json()["offset"] == 1
    listed = envelope(await client.get(THREADS, headers=owner.headers))
    assert len(listed["items"]) == 2 and listed["items"][0]["id"] == thread["id"]  # most recently active first
    assert listed["items"][0]["last_offset"] == 1 and listed["next_cursor"] is None
    assert await walk(client, THREADS, headers=owner.headers, limit=1) == listed["items"]

    renamed = await client.patch(f"{THREADS}/{thread['id']}", json={"title": "Career"}, headers=owner.headers)
    assert renamed.json()["title"] == "Career"
    archived = await client.patch(f"{THREADS}/{thread['id']}", json={"archived": True}, headers=owner.headers)
    assert archived.json()["archived"] is True
    closed = await community.post(owner, f"{THREADS}/{thread['id']}", "still there?")
    assert closed.status_code == 409 and closed.json()["code"] == "thread_archived"
    archived_only = await walk(client, THREADS, headers=owner.headers, params={"archived": "true"}, limit=1)
    assert [item["id"] for item in archived_only] == [thread["id"]]

    assert (await client.delete(f"{THREADS}/{thread['id']}", headers=owner.headers)).status_code == 204
    assert (await client.get(f"{THREADS}/{thread['id']}", headers=owner.headers)).status_code == 404
    assert await Message.count().where(Message.channel == thread["channel"]) == 0


async def test_thread_in_a_lounge_context_needs_membership(client: httpx.AsyncClient, community: Community) -> None:
    lounge, _, [member] = await _lounge_with_members(community, "ctx@example.com")
    outsider = await community.user("nope@example.com")
    ok = await client.post(THREADS, json={"lounge_id": lounge["id"]}, headers=member.headers)
    assert ok.status_code == 201 and ok.json()["lounge_id"] == lounge["id"]
    refused = await client.post(THREADS, json={"lounge_id": lounge["id"]}, headers=outsider.headers)
    assert refused.status_code == 403


async def test_message_validation(client: httpx.AsyncClient, community: Community, settings) -> None:
    lounge, _, [member] = await _lounge_with_members(community, "val@example.com")
    path = f"{LOUNGES}/{lounge['id']}/messages"
    cases = [
        ({"client_id": str(uuid.uuid4()), "text": "   "}, "empty_message"),
        ({"client_id": str(uuid.uuid4()), "text": "x" * (settings.message_max_length + 1)}, "message_too_long"),
        ({"client_id": "not-a-uuid", "text": "hi"}, "validation_failed"),
        ({"text": "no client id"}, "validation_failed"),
        ({"client_id": str(uuid.uuid4()), "text": "hi", "attachments": [str(uuid.uuid4())]}, "invalid_attachment"),
        ({"client_id": str(uuid.uuid4()), "text": "hi", "colour": "red"}, "validation_failed"),
    ]
    for body, code in cases:
        response = await client.post(path, json=body, headers=member.headers)
        assert response.status_code == 422 and response.json()["code"] == code, (body, response.text)
    assert await Message.count() == 0
    assert (await client.get(f"{LOUNGES}/{lounge['id']}/messages", headers=member.headers)).json()["last_offset"] == 0


async def test_posting_is_rate_limited_per_user_across_apps(app, settings, community: Community) -> None:
    """PUBLISH_RATE_LIMIT counts every post of a user, over REST or the socket, on every node."""
    from server.app import create_app
    from tests.support.lifespan import running_lifespan

    lounge, _, [member] = await _lounge_with_members(community, "chatty@example.com")
    strict = msgspec.structs.replace(settings, publish_rate_limit="3/30")
    first, second = create_app(strict), create_app(strict)
    async with running_lifespan(first), running_lifespan(second):
        statuses = []
        for application in (first, second, first, second):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.post(
                    f"{LOUNGES}/{lounge['id']}/messages",
                    json={"client_id": str(uuid.uuid4()), "text": "again"},
                    headers=member.headers,
                )
                statuses.append(response.status_code)
    assert statuses == [201, 201, 201, 429]
    assert await Message.count().where(Message.channel == lounge["channel"]) == 3


async def test_a_retry_costs_no_budget_and_is_answered_even_past_the_limit(app, settings, community: Community) -> None:
    """The retry of a stored post (same client_id) is answered with it: it spends none of
    PUBLISH_RATE_LIMIT, and at the limit it still gets the stored message, not a 429."""
    from server.app import create_app
    from tests.support.lifespan import running_lifespan

    lounge, _, [member] = await _lounge_with_members(community, "retrier@example.com")
    strict = create_app(msgspec.structs.replace(settings, publish_rate_limit="2/30"))
    path = f"{LOUNGES}/{lounge['id']}/messages"
    kept = {"client_id": str(uuid.uuid4()), "text": "kept"}
    transport = httpx.ASGITransport(app=strict)
    async with running_lifespan(strict), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        first = await http.post(path, json=kept, headers=member.headers)
        retries = [await http.post(path, json=kept, headers=member.headers) for _ in range(3)]
        second = await http.post(path, json={"client_id": str(uuid.uuid4()), "text": "new"}, headers=member.headers)
        past = await http.post(path, json={"client_id": str(uuid.uuid4()), "text": "over"}, headers=member.headers)
        late_retry = await http.post(path, json=kept, headers=member.headers)
    assert first.status_code == 201 and second.status_code == 201
    assert [r.status_code for r in retries] == [200, 200, 200]
    assert past.status_code == 429
    assert late_retry.status_code == 200 and late_retry.json()["id"] == first.json()["id"]
    assert await Message.count().where(Message.channel == lounge["channel"]) == 2
