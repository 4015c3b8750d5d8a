"""Privacy of the channel log: once a message is edited or deleted, or its author's
account is erased, the previous text (and the erased name) is unreadable through
every read path, while offsets stay gapless (the publication keeps its offset as
a tombstone or as the message's current version).

Read paths covered, each against real PostgreSQL and Redis and real web
processes: REST message history; socket ``history`` (newest, and ``since``);
``subscribe`` with ``recover`` served from the Redis history cache, from the
PostgreSQL log, and from a node's in-memory ring (two nodes: the change is made
through one, the ring is on the other); a late joiner; a client recovering
across the edit; mention notifications; the data export; the coach's prompt.

Every write goes through the in-process app or a node's socket, both on the
test worker's Redis, so the nodes see the rewrites exactly as in production.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from server.domain.ai.streams import streams_key
from server.foundation.settings import Settings
from server.streams.broker import history_key
from tests.support.accounts import PASSWORD, Account
from tests.support.community import Community
from tests.support.llm_standins import running_openai_standin
from tests.support.nodes import WebNode, WorkerProcess
from tests.support.proxy import TcpProxy
from tests.support.rawws import RawClient
from tests.support.redis_server import RedisServer
from tests.support.worker import run_worker_until_idle
from tests.test_files import fetch

API = "/api/v1"
NODE_ENV = {"PUBLISH_RATE_LIMIT": "100000/1", "DRAIN_SECONDS": "0"}


@pytest.fixture(scope="module")
async def nodes(settings: Settings) -> AsyncIterator[list[WebNode]]:
    """Two web processes on the test worker's database and Redis (they keep no state
    between tests: every test closes its sockets, and ``app`` empties Redis)."""
    pair = [WebNode(settings, **NODE_ENV), WebNode(settings, **NODE_ENV)]
    try:
        for web in pair:
            await web.start()
        yield pair
    finally:
        for web in pair:
            await web.stop()


@pytest.fixture
def run_jobs(settings: Settings) -> Any:
    """The real worker (erasure, exports, coach replies), with the lexical embedder: no model to load."""
    return lambda: run_worker_until_idle(msgspec.structs.replace(settings, embeddings_provider="hashing"))


@asynccontextmanager
async def socket(node: WebNode, account: Account) -> AsyncIterator[RawClient]:
    client = await RawClient.open(node.ws_url)
    try:
        await client.connect(account.access_token)
        yield client
    finally:
        await client.close()


def leaks(value: Any, *secrets: str) -> list[str]:
    """The ``secrets`` that appear anywhere in ``value`` (JSON-encoded as sent)."""
    text = json.dumps(value, ensure_ascii=False)
    return [secret for secret in secrets if secret in text]


async def socket_history(sock: RawClient, channel: str, **params: Any) -> dict[str, Any]:
    reply = await sock.call("history", {"channel": channel, "limit": 100, **params})
    assert "history" in reply, reply
    return reply["history"]


async def recover(sock: RawClient, channel: str, offset: int, epoch: str) -> dict[str, Any]:
    reply = await sock.call("subscribe", {"channel": channel, "recover": True, "offset": offset, "epoch": epoch})
    assert "subscribe" in reply, reply
    assert reply["subscribe"]["recovered"], reply
    return reply["subscribe"]


def data_at(publications: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    [data] = [p["data"] for p in publications if p.get("offset", 0) == offset]
    return data


async def lounge_with_member(community: Community, member_name: str = "Ada Lovelace") -> tuple[Account, Account, dict]:
    mentor = await community.mentor(f"mentor-{uuid.uuid4().hex[:8]}@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user(f"member-{uuid.uuid4().hex[:8]}@example.com")
    assert (await community.join(member, lounge)).status_code == 200
    assert (
        await community.client.put(f"{API}/users/me", json={"full_name": member_name}, headers=member.headers)
    ).status_code == 200
    return mentor, member, lounge


async def post(community: Community, account: Account, lounge: dict, text: str) -> dict[str, Any]:
    response = await community.post(account, f"{API}/lounges/{lounge['id']}", text)
    assert response.status_code == 201, response.text
    return response.json()


async def edit(client: httpx.AsyncClient, account: Account, lounge: dict, offset: int, text: str) -> None:
    response = await client.patch(
        f"{API}/lounges/{lounge['id']}/messages/{offset}", json={"text": text}, headers=account.headers
    )
    assert response.status_code == 200, response.text


async def delete(client: httpx.AsyncClient, account: Account, lounge: dict, offset: int) -> None:
    response = await client.delete(f"{API}/lounges/{lounge['id']}/messages/{offset}", headers=account.headers)
    assert response.status_code == 204, response.text


async def rest_history(client: httpx.AsyncClient, account: Account, lounge: dict) -> dict[str, Any]:
    response = await client.get(f"{API}/lounges/{lounge['id']}/messages", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


# -- deletion ------------------------------------------------------------------------------


async def test_a_deleted_message_is_a_tombstone_in_rest_and_socket_history_and_for_late_joiners(
    app, nodes: list[WebNode], community: Community, client: httpx.AsyncClient
) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    secret = "my bank PIN is 4471"
    first = await post(community, member, lounge, secret)
    await post(community, mentor, lounge, "Please don't share that here.")
    await delete(client, member, lounge, first["offset"])

    page = await rest_history(client, mentor, lounge)
    assert leaks(page, secret) == []
    async with socket(nodes[0], mentor) as sock:
        newest = await socket_history(sock, channel)
        since = await socket_history(sock, channel, since={"offset": 0, "epoch": newest["epoch"]})
        # A late joiner (no hub on this node yet: the Redis history cache answers).
        joined = await recover(sock, channel, 0, newest["epoch"])
    for publications in (newest["publications"], since["publications"], joined["publications"]):
        assert [p["offset"] for p in publications] == [1, 2, 3]  # gapless: the tombstone keeps its offset
        tombstone = data_at(publications, first["offset"])
        assert tombstone["type"] == "message"
        assert tombstone["message"]["deleted"] is True
        assert tombstone["message"]["text"] == "" and tombstone["message"]["attachments"] == []
        assert tombstone["message"]["id"] == first["id"]
        assert leaks(publications, secret) == []


# -- edits ---------------------------------------------------------------------------------


async def test_an_edited_messages_previous_texts_are_gone_from_history_cache_and_log(
    app, nodes: list[WebNode], community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    first = await post(community, member, lounge, "v1: I earn 41k and hate my boss Dave")
    await edit(client, member, lounge, first["offset"], "v2: I earn 41k")
    await edit(client, member, lounge, first["offset"], "v3: thinking about a raise")
    old = ("v1:", "v2:", "hate my boss", "41k")

    async with socket(nodes[0], mentor) as sock:
        newest = await socket_history(sock, channel)
        assert [p["offset"] for p in newest["publications"]] == [1, 2, 3]
        assert leaks(newest, *old) == []
        original = data_at(newest["publications"], 1)
        assert original["type"] == "message" and original["message"]["text"] == "v3: thinking about a raise"
        assert original["message"]["edited_at"] is not None
        for offset in (2, 3):  # each edit publication now carries the current text
            assert data_at(newest["publications"], offset) == {
                **data_at(newest["publications"], offset),
                "type": "message.edited",
                "message_offset": 1,
                "text": "v3: thinking about a raise",
            }
        # Recovery across the edits from the Redis cache (a node with no hub for the lounge) ...
        from_cache = await recover(sock, channel, 0, newest["epoch"])
        assert [p["offset"] for p in from_cache["publications"]] == [1, 2, 3]
        assert leaks(from_cache, *old) == []
    # ... and from the PostgreSQL log once the cache is gone.
    await app.state.app_state.redis.delete(history_key(settings.redis_prefix, channel))
    async with socket(nodes[1], mentor) as sock:
        from_log = await recover(sock, channel, 0, newest["epoch"])
        assert [p["offset"] for p in from_log["publications"]] == [1, 2, 3]
        assert leaks(from_log, *old) == []
    assert leaks(await rest_history(client, mentor, lounge), *old) == []


async def test_a_node_ring_forgets_the_old_text_when_the_change_is_made_on_another_node(
    app, nodes: list[WebNode], community: Community
) -> None:
    """A subscriber on node B keeps B's hub (and its ring of recent publications) alive;
    the author edits and then deletes through node A; a client recovering on B from
    before the message is served from B's ring, which must hold the current versions."""
    writer_node, reader_node = nodes
    mentor, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with socket(reader_node, mentor) as watcher, socket(writer_node, member) as author:
        subscribed = await watcher.call("subscribe", {"channel": channel})
        epoch = subscribed["subscribe"]["epoch"]
        published = await author.call(
            "publish", {"channel": channel, "data": {"text": "ring secret one", "client_id": str(uuid.uuid4())}}
        )
        assert "publish" in published, published
        await watcher.push(lambda p: p.get("pub", {}).get("offset") == 1)
        edited = await author.call(
            "rpc", {"method": "message.edit", "data": {"channel": channel, "offset": 1, "text": "ring text two"}}
        )
        assert "rpc" in edited, edited
        await watcher.push(lambda p: p.get("pub", {}).get("offset") == 2)
        async with socket(reader_node, mentor) as late:
            recovered = await recover(late, channel, 0, epoch)
        assert [p["offset"] for p in recovered["publications"]] == [1, 2]
        assert leaks(recovered, "ring secret one") == []
        assert data_at(recovered["publications"], 1)["message"]["text"] == "ring text two"

        deleted = await author.call("rpc", {"method": "message.delete", "data": {"channel": channel, "offset": 1}})
        assert "rpc" in deleted, deleted
        await watcher.push(lambda p: p.get("pub", {}).get("offset") == 3)
        async with socket(reader_node, mentor) as late:
            recovered = await recover(late, channel, 0, epoch)
        assert [p["offset"] for p in recovered["publications"]] == [1, 2, 3]
        assert leaks(recovered, "ring secret one", "ring text two") == []
        assert data_at(recovered["publications"], 1)["message"]["deleted"] is True
        assert data_at(recovered["publications"], 2) == {"type": "message.deleted", "message_offset": 1}


# -- erasure -------------------------------------------------------------------------------


async def test_erasure_scrubs_the_authors_name_and_text_from_the_log_and_the_caches(
    app, nodes: list[WebNode], community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    mentor, member, lounge = await lounge_with_member(community, member_name="Erin Erasable")
    channel = lounge["channel"]
    async with socket(nodes[1], mentor) as watcher:  # keeps a hub and its ring alive on node B
        epoch = (await watcher.call("subscribe", {"channel": channel}))["subscribe"]["epoch"]
        mine = await post(community, member, lounge, "I live at 12 Elm Street")
        await edit(client, member, lounge, mine["offset"], "I live at 12 Elm Street, flat 3")
        reply = await post(community, mentor, lounge, f"Thanks for sharing, @[Erin Erasable]({member.id})!")
        await watcher.push(lambda p: p.get("pub", {}).get("offset") == reply["offset"])

        response = await client.request(
            "DELETE", f"{API}/users/me", json={"password": PASSWORD}, headers=member.headers
        )
        assert response.status_code == 202, response.text
        await community.run_jobs()
        # The erasure's rewrites travel ahead of the deletion it appended: once B delivered that, its ring is current.
        await watcher.push(lambda p: p.get("pub", {}).get("offset") == reply["offset"] + 1)
        secrets = ("Erin Erasable", "Elm Street")

        assert leaks(await rest_history(client, mentor, lounge), *secrets) == []
        for node in nodes:  # node A: the Redis cache; node B: its ring
            async with socket(node, mentor) as sock:
                newest = await socket_history(sock, channel)
                recovered = await recover(sock, channel, 0, epoch)
            for publications in (newest["publications"], recovered["publications"]):
                # The erasure appended a deletion, so clients that keep messages locally drop it too.
                assert [p["offset"] for p in publications] == [1, 2, 3, 4]
                assert leaks(publications, *secrets) == []
                tombstone = data_at(publications, 1)["message"]
                assert tombstone["deleted"] is True and tombstone["sender"]["full_name"] == "Deleted user"
                assert data_at(publications, 2) == {"type": "message.deleted", "message_offset": 1}  # the edit
                # Others' posts stay; a mention of the erased account shows its new name.
                assert (
                    data_at(publications, 3)["message"]["text"] == f"Thanks for sharing, @[Deleted user]({member.id})!"
                )
                assert data_at(publications, 4) == {"type": "message.deleted", "message_offset": 1}
    # The PostgreSQL log itself.
    await app.state.app_state.redis.delete(history_key(settings.redis_prefix, channel))
    async with socket(nodes[0], mentor) as sock:
        assert leaks(await recover(sock, channel, 0, epoch), *secrets) == []


# -- notifications, export, the coach --------------------------------------------------------


async def notification_bodies(client: httpx.AsyncClient, account: Account) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/notifications", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def test_mention_notifications_follow_the_edit_and_go_with_the_deletion_or_the_erasure(
    app, community: Community, client: httpx.AsyncClient
) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    posted = await post(community, mentor, lounge, f"@[Ada Lovelace]({member.id}) your review score is 2/10")
    [mention] = await notification_bodies(client, member)
    assert "2/10" in mention["body"]

    await edit(client, mentor, lounge, posted["offset"], f"@[Ada Lovelace]({member.id}) see you at standup")
    [mention] = await notification_bodies(client, member)
    assert "standup" in mention["body"] and leaks(mention, "2/10") == []

    await delete(client, mentor, lounge, posted["offset"])
    assert await notification_bodies(client, member) == []

    other = await community.user(f"other-{uuid.uuid4().hex[:8]}@example.com")
    assert (await community.join(other, lounge)).status_code == 200
    await client.put(f"{API}/users/me", json={"full_name": "Otto Other"}, headers=other.headers)
    await post(community, other, lounge, f"@[Ada Lovelace]({member.id}) my phone is 555-0199")
    [mention] = await notification_bodies(client, member)
    assert "Otto Other" in mention["title"]
    erased = await client.request("DELETE", f"{API}/users/me", json={"password": PASSWORD}, headers=other.headers)
    assert erased.status_code == 202, erased.text
    await community.run_jobs()
    assert await notification_bodies(client, member) == []


async def test_the_data_export_holds_no_deleted_or_previous_text(
    app, community: Community, client: httpx.AsyncClient
) -> None:
    _mentor, member, lounge = await lounge_with_member(community)
    kept = await post(community, member, lounge, "lounge draft: my salary is 52k")
    await edit(client, member, lounge, kept["offset"], "lounge: final words")
    gone = await post(community, member, lounge, "lounge: my diagnosis is private")
    await delete(client, member, lounge, gone["offset"])
    thread = (await client.post(f"{API}/chat/threads", json={}, headers=member.headers)).json()
    path = f"{API}/chat/threads/{thread['id']}"
    first = (await community.post(member, path, "thread draft: I owe 9k to my brother")).json()
    edited = await client.patch(
        f"{path}/messages/{first['offset']}", json={"text": "thread: money worries"}, headers=member.headers
    )
    assert edited.status_code == 200, edited.text
    second = (await community.post(member, path, "thread: my password hint is rex")).json()
    assert (await client.delete(f"{path}/messages/{second['offset']}", headers=member.headers)).status_code == 204
    await community.run_jobs()  # the coach answers what is left

    requested = await client.post(f"{API}/users/me/exports", headers=member.headers)
    assert requested.status_code == 202, requested.text
    await community.run_jobs()
    export = (await client.get(f"{API}/users/me/exports/{requested.json()['id']}", headers=member.headers)).json()
    assert export["status"] == "completed", export
    archive = (await fetch(export["download_url"])).content.decode()
    assert "final words" in archive and "money worries" in archive
    assert leaks(archive, "52k", "diagnosis", "9k", "hint is rex") == []


async def test_the_coach_answers_the_current_text_and_never_a_deleted_message(
    app, community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    """The reply is queued with the text as posted; the author edits (or deletes) it
    before the worker gets to it. Neither the model's prompt (reply and thread title),
    nor the stored reply, nor the thread's title may carry the text taken back."""
    member = await community.user(f"asker-{uuid.uuid4().hex[:8]}@example.com")
    thread = (await client.post(f"{API}/chat/threads", json={}, headers=member.headers)).json()
    path = f"{API}/chat/threads/{thread['id']}"
    first = (await community.post(member, path, "I cheated on my exam, how do I cope?")).json()
    edited = await client.patch(
        f"{path}/messages/{first['offset']}", json={"text": "How do I cope with exam stress?"}, headers=member.headers
    )
    assert edited.status_code == 200, edited.text
    second = (await community.post(member, path, "My neighbour Zed Quill keeps spying on me")).json()
    assert (await client.delete(f"{path}/messages/{second['offset']}", headers=member.headers)).status_code == 204

    async with running_openai_standin(reply="Breathe, plan, and rest.") as llm:
        worker_settings = msgspec.structs.replace(
            settings,
            embeddings_provider="hashing",
            ai_providers="openai",
            openai_api_key="sk-test-privacy",
            openai_base_url=llm.base_url,
            ai_max_retries=0,
        )
        await run_worker_until_idle(worker_settings)
        prompts = [request.body for request in llm.requests]
    assert prompts and any("exam stress" in json.dumps(body) for body in prompts)
    assert leaks(prompts, "cheated", "Zed Quill", "spying") == []
    items = (await client.get(f"{path}/messages", headers=member.headers)).json()["items"]
    assert [m["reply_to"] for m in items if m["sender"]["type"] == "ai"] == [first["offset"]]
    title = (await client.get(path, headers=member.headers)).json()["title"]
    assert leaks([items, title], "cheated", "Zed Quill", "spying") == []


async def test_the_coachs_reply_goes_with_the_message_it_answered(
    app, nodes: list[WebNode], community: Community, client: httpx.AsyncClient
) -> None:
    """The coach may quote what it answers, so its reply to a deleted message, or to a
    message of an erased account, is a tombstone too (in every publication of it)."""
    owner = await community.user(f"owner-{uuid.uuid4().hex[:8]}@example.com")
    thread = (await client.post(f"{API}/chat/threads", json={}, headers=owner.headers)).json()
    path = f"{API}/chat/threads/{thread['id']}"
    asked = (await community.post(owner, path, "My landlord Vic Voss wants me out")).json()
    await community.run_jobs()  # the offline coach answers, quoting the question
    page = (await client.get(f"{path}/messages", headers=owner.headers)).json()
    assert any("Vic Voss" in m["text"] for m in page["items"] if m["sender"]["type"] == "ai")
    assert (await client.delete(f"{path}/messages/{asked['offset']}", headers=owner.headers)).status_code == 204
    assert leaks((await client.get(f"{path}/messages", headers=owner.headers)).json(), "Vic Voss") == []
    async with socket(nodes[0], owner) as sock:
        assert leaks(await socket_history(sock, thread["channel"]), "Vic Voss") == []

    mentor = await community.mentor(f"mentor-{uuid.uuid4().hex[:8]}@example.com")
    lounge = await community.lounge(mentor, ai_reply_policy="always")
    member = await community.user(f"member-{uuid.uuid4().hex[:8]}@example.com")
    assert (await community.join(member, lounge)).status_code == 200
    await post(community, member, lounge, "My sister Wanda Wex is unwell")
    await community.run_jobs()
    assert "Wanda Wex" in json.dumps((await rest_history(client, mentor, lounge))["items"])
    erased = await client.request("DELETE", f"{API}/users/me", json={"password": PASSWORD}, headers=member.headers)
    assert erased.status_code == 202, erased.text
    await community.run_jobs()
    assert leaks(await rest_history(client, mentor, lounge), "Wanda Wex") == []
    async with socket(nodes[0], mentor) as sock:
        assert leaks(await socket_history(sock, lounge["channel"]), "Wanda Wex") == []


async def test_a_rewrite_whose_broadcast_was_lost_is_never_served_from_the_cache_or_a_ring(
    app, nodes: list[WebNode], community: Community, settings: Settings
) -> None:
    """The author deletes through node W while W's link to Redis is stalled: the
    deletion commits, its broadcast (cache rewrite and ring rewrite) never reaches
    Redis. Node R's ring and the Redis cache still hold the original, yet neither may
    serve it: the cache is checked against the channel's rewrite count in PostgreSQL
    at once, R's ring at its next catch-up (every 10 s)."""
    redis = urlsplit(settings.redis_url or "")
    link = await TcpProxy([(redis.hostname or "127.0.0.1", redis.port or 6379)]).start()
    writer_node = WebNode(settings, **NODE_ENV, REDIS_URL=f"redis://127.0.0.1:{link.port}{redis.path}")
    try:
        await writer_node.start()
        mentor, member, lounge = await lounge_with_member(community)
        channel = lounge["channel"]
        async with socket(nodes[1], mentor) as watcher, socket(writer_node, member) as author:
            epoch = (await watcher.call("subscribe", {"channel": channel}))["subscribe"]["epoch"]
            published = await author.call(
                "publish",
                {"channel": channel, "data": {"text": "lost broadcast secret", "client_id": str(uuid.uuid4())}},
            )
            assert "publish" in published, published
            await watcher.push(lambda p: p.get("pub", {}).get("offset") == 1)

            link.pause()
            deleted = await author.call(
                "rpc", {"method": "message.delete", "data": {"channel": channel, "offset": 1}}, timeout=15
            )
            assert "rpc" in deleted, deleted
            await link.sever()  # what W tried to send is gone for good
            link.resume()

            async with socket(nodes[0], mentor) as sock:  # no hub there: the Redis cache (stale) or the log
                since = await socket_history(sock, channel, since={"offset": 0, "epoch": epoch})
                recovered = await recover(sock, channel, 0, epoch)
            for publications in (since["publications"], recovered["publications"]):
                assert [p["offset"] for p in publications] == [1, 2]
                assert leaks(publications, "lost broadcast secret") == []
            # R learns of offset 2 at its catch-up, which also finds the rewrite it missed.
            await watcher.push(lambda p: p.get("pub", {}).get("offset") == 2, timeout=15)
            async with socket(nodes[1], mentor) as late:
                from_ring = await recover(late, channel, 0, epoch)
            assert [p["offset"] for p in from_ring["publications"]] == [1, 2]
            assert leaks(from_ring, "lost broadcast secret") == []
    finally:
        await writer_node.stop()
        await link.close()


async def test_deleting_a_thread_while_redis_is_down_still_succeeds(
    app, community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Dropping a deleted thread's Redis history cache is tidying up after the commit:
    with Redis down the thread is deleted all the same (204), not answered 500."""
    private = await RedisServer().astart()
    node = WebNode(settings, **NODE_ENV, REDIS_URL=private.url)
    try:
        await node.start()
        owner = await community.user(f"owner-{uuid.uuid4().hex[:8]}@example.com")
        thread = (await client.post(f"{API}/chat/threads", json={}, headers=owner.headers)).json()
        await asyncio.to_thread(private.stop)
        async with httpx.AsyncClient(base_url=node.url, headers=owner.headers, timeout=30) as http:
            deleted = await http.delete(f"{API}/chat/threads/{thread['id']}")
        assert deleted.status_code == 204, deleted.text
        assert (await client.get(f"{API}/chat/threads/{thread['id']}", headers=owner.headers)).status_code == 404
    finally:
        await node.stop()
        await asyncio.to_thread(private.close)


async def test_a_reply_streaming_when_its_question_is_deleted_or_erased_stops_and_its_snapshot_goes(
    app, community: Community, client: httpx.AsyncClient, settings: Settings
) -> None:
    """While the coach streams an answer quoting the question, its text so far sits in
    Redis for late subscribers' ``ai.snapshot``. Deleting the question (in a thread),
    or erasing its author (in a lounge), stops the reply at once, not when the model
    finishes; the snapshot goes with it, and the stored reply is a tombstone."""
    state = app.state.app_state
    owner = await community.user(f"owner-{uuid.uuid4().hex[:8]}@example.com")
    thread = (await client.post(f"{API}/chat/threads", json={}, headers=owner.headers)).json()
    path = f"{API}/chat/threads/{thread['id']}"
    mentor = await community.mentor(f"mentor-{uuid.uuid4().hex[:8]}@example.com")
    lounge = await community.lounge(mentor, ai_reply_policy="always")
    lounge_path = f"{API}/lounges/{lounge['id']}"
    member = await community.user(f"member-{uuid.uuid4().hex[:8]}@example.com")
    assert (await community.join(member, lounge)).status_code == 200

    async def snapshot_holds(channel: str, secret: bytes) -> bool:
        return any(secret in raw for raw in await state.redis.hvals(streams_key(state, channel)))

    async def gone_within(channel: str, secret: bytes, seconds: float) -> None:
        since = asyncio.get_running_loop().time()
        async with asyncio.timeout(30):
            while await snapshot_holds(channel, secret):
                await asyncio.sleep(0.02)
        assert asyncio.get_running_loop().time() - since < seconds

    async with running_openai_standin(reply="About Zed Quill: " + "keep going " * 300, chunk_size=4) as llm:
        llm.chunk_delay = 0.02  # ~16 s for the whole reply
        env = {
            "OPENAI_API_KEY": "sk-test-privacy",
            "OPENAI_BASE_URL": llm.base_url,
            "AI_PROVIDERS": "openai",
            "EMBEDDINGS_PROVIDER": "hashing",
            "AI_MAX_RETRIES": "0",
        }
        worker = await WorkerProcess(settings, **env).start()
        try:
            asked = (await community.post(owner, path, "My neighbour Zed Quill keeps spying on me")).json()
            async with asyncio.timeout(20):
                while not await snapshot_holds(thread["channel"], b"Zed Quill"):
                    await asyncio.sleep(0.02)
            assert (await client.delete(f"{path}/messages/{asked['offset']}", headers=owner.headers)).status_code == 204
            await gone_within(thread["channel"], b"Zed Quill", 2)

            llm.reply = "About Wanda Wex: " + "keep going " * 300
            await post(community, member, lounge, "My sister Wanda Wex is unwell")
            async with asyncio.timeout(20):
                while not await snapshot_holds(lounge["channel"], b"Wanda Wex"):
                    await asyncio.sleep(0.02)
            erased = await client.request(
                "DELETE", f"{API}/users/me", json={"password": PASSWORD}, headers=member.headers
            )
            assert erased.status_code == 202, erased.text
            await gone_within(lounge["channel"], b"Wanda Wex", 6)  # the worker runs the erasure first
            async with asyncio.timeout(15):  # the replies are stored when the worker ends them
                while not (await ai_messages(client, owner, path) and await ai_messages(client, mentor, lounge_path)):
                    await asyncio.sleep(0.05)
        finally:
            await worker.stop()
    for items in (
        (await client.get(f"{path}/messages", headers=owner.headers)).json()["items"],
        (await rest_history(client, mentor, lounge))["items"],
    ):
        [reply] = [m for m in items if m["sender"]["type"] == "ai"]
        assert reply["deleted"] is True and reply["status"] == "cancelled"
        assert leaks(items, "Zed Quill", "Wanda Wex") == []


async def ai_messages(client: httpx.AsyncClient, account: Account, path: str) -> list[dict[str, Any]]:
    items = (await client.get(f"{path}/messages", headers=account.headers)).json()["items"]
    return [m for m in items if m["sender"]["type"] == "ai"]
