"""The gateway with the official centrifuge-python SDK against a real web process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from centrifuge import ReplyError

from server.foundation.settings import Settings
from server.gateway.connection import Connection, ConnectionIndex
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import payload, sdk_client, subscription

pytestmark = pytest.mark.usefixtures("encoding")


@pytest.fixture(params=["gateway", "uvicorn"])
async def node(app, settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[WebNode]:
    """A web process writing frames itself, and one sending them through uvicorn's stock ASGI protocol."""
    web = await WebNode(settings, ws_protocol=request.param).start()
    yield web
    await web.stop()


async def test_sdk_connects_subscribes_and_chats(node: WebNode, community: Community) -> None:
    mentor = await community.mentor("rt-mentor@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("rt-member@example.com")
    await community.join(member, lounge)

    alice, alice_events = sdk_client(node.ws_url, mentor.access_token)
    bob, _ = sdk_client(node.ws_url, member.access_token)
    await alice.connect()
    await bob.connect()
    try:
        await alice.ready()
        sub_a, seen_a = subscription(alice, lounge["channel"])
        sub_b, seen_b = subscription(bob, lounge["channel"])
        await sub_a.subscribe()
        await sub_b.subscribe()
        await sub_a.ready()
        await sub_b.ready()
        await sub_b.publish(payload(sub_b, {"text": "hello from the socket", "client_id": str(uuid.uuid4())}))
        await seen_a.wait_for(lambda r: len(r.stored) == 1)
        await seen_b.wait_for(lambda r: len(r.stored) == 1)
        offset, data = seen_a.publications[0]
        assert offset == 1 and data["type"] == "message"
        assert data["message"]["text"] == "hello from the socket"
        assert data["message"]["sender"]["id"] == member.id

        history = await sub_a.history(limit=10)
        assert [p.offset for p in history.publications] == [1]
        presence = await sub_a.presence_stats()
        assert presence.num_users == 2

        with pytest.raises(ReplyError) as refused:
            await sub_b.publish(payload(sub_b, {"text": ""}))
        assert refused.value.code == 107
        assert alice_events.connected
    finally:
        await alice.disconnect()
        await bob.disconnect()


def test_the_connection_index_keeps_a_lone_connection_without_a_set() -> None:
    index = ConnectionIndex()
    user = uuid.uuid4()
    first, second = (Connection.__new__(Connection) for _ in range(2))
    assert index.add(user, first) and not index.add(user, first)
    assert index.get(user) == (first,) and user in index and list(index) == [user]
    assert not index.add(user, second) and set(index.get(user)) == {first, second}
    assert not index.discard(user, first) and index.get(user) == (second,)
    assert not index.discard(user, first)  # not indexed any more
    assert index.discard(user, second) and index.get(user) == () and user not in index and len(index) == 0
