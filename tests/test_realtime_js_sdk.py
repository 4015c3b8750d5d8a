"""The official centrifuge-js SDK (npm ``centrifuge`` 5.x, pinned in tests/js) under
Node with the ``ws`` package talks to a real web process, next to a Python SDK client
(``tests/support/js_sdk.py`` installs and runs it), in either encoding: the package's
default (JSON) build and its Protobuf build (``centrifuge/build/protobuf``, what a
mobile or bandwidth-minded web app ships). The Python peer speaks the other encoding,
so each run is a mixed room too.

The JS client reaches the node through a TCP proxy, which cuts its connection once
everything else is checked: it must come back and recover exactly the two messages
published meanwhile."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.foundation.settings import Settings
from tests.support.community import Community
from tests.support.js_sdk import run_smoke
from tests.support.nodes import WebNode
from tests.support.proxy import TcpProxy
from tests.support.sdk import ENCODINGS, Encoding, payload, sdk_client, subscription


@pytest.fixture
async def node(app: Any, settings: Settings) -> AsyncIterator[WebNode]:
    web = await WebNode(settings, DRAIN_SECONDS="0").start()
    yield web
    await web.stop()


@pytest.mark.parametrize("js_encoding", ENCODINGS)
async def test_centrifuge_js_connects_subscribes_publishes_receives_and_recovers(
    js_sdk: Path, node: WebNode, community: Community, js_encoding: Encoding
) -> None:
    mentor = await community.mentor("js-mentor@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("js-member@example.com")
    assert (await community.join(member, lounge)).status_code == 200
    channel = lounge["channel"]
    python_encoding: Encoding = "json" if js_encoding == "protobuf" else "protobuf"

    python, _ = sdk_client(node.ws_url, mentor.access_token, encoding=python_encoding)
    await python.connect()
    await python.ready(timeout=10)
    sub, seen = subscription(python, channel)
    await sub.subscribe()
    await sub.ready(timeout=10)
    link = await TcpProxy.for_nodes(node).start()  # the JS client's network path

    python_client_ids = [str(uuid.uuid4()) for _ in range(3)]

    async def publish_from_python() -> None:
        # The JS client saw its own message: now one from the Python SDK.
        await sub.publish(payload(sub, {"text": "hello from centrifuge-python", "client_id": python_client_ids[0]}))

    async def publish_while_js_is_away() -> None:
        link.backends = []
        assert await link.sever() >= 1
        for index, client_id in enumerate(python_client_ids[1:]):
            await sub.publish(payload(sub, {"text": f"while js is away #{index}", "client_id": client_id}))
        link.backends = [("127.0.0.1", node.port)]

    try:
        returncode, lines, stderr = await run_smoke(
            link.ws_url,
            member.access_token,
            channel,
            publish_from_python,
            encoding=js_encoding,
            when_awaiting_recovery=publish_while_js_is_away,
        )
    finally:
        await python.disconnect()
        await link.close()
    summary = lines[-1]
    print(f"\ncentrifuge-js ({js_encoding}) summary:", json.dumps(summary)[:2000])
    assert returncode == 0, f"node smoke.mjs exited {returncode}: {summary}\nstderr:\n{stderr}"
    assert summary["errors"] == [], summary["errors"]
    assert summary["connected"] is True and summary["client"] and summary["transport"] == "websocket"
    assert summary["server_subscriptions"] == [f"user#{member.id}"]
    assert summary["subscribed"] == channel

    # The encoding really used: the subprotocol the server accepted, the kind of every
    # frame each way, and the data the SDK handed to the app.
    wire = summary["wire"]
    assert summary["encoding"] == js_encoding and summary["connects"] == 2
    if js_encoding == "protobuf":
        assert wire["subprotocols"] == ["centrifuge-protobuf"] * 2, wire
        assert wire["received"]["text"] == wire["sent"]["text"] == 0, wire
        assert wire["received"]["binary"] > 0 and wire["sent"]["binary"] > 0, wire
        assert set(summary["data_kinds"]) == {"bytes"}, summary["data_kinds"]
    else:
        assert wire["subprotocols"] == ["", ""], wire
        assert wire["received"]["binary"] == wire["sent"]["binary"] == 0, wire
        assert wire["received"]["text"] > 0 and wire["sent"]["text"] > 0, wire
        assert set(summary["data_kinds"]) <= {"object", "none"}, summary["data_kinds"]

    stored = [p for p in summary["publications"] if p["offset"]]
    assert [p["offset"] for p in stored] == [1, 2, 3, 4], stored
    mine, theirs = stored[0]["data"], stored[1]["data"]
    assert mine["type"] == "message" and mine["message"]["text"] == "hello from centrifuge-js"
    assert mine["message"]["sender"]["id"] == member.id
    assert theirs["type"] == "message" and theirs["message"]["text"] == "hello from centrifuge-python"
    assert theirs["message"]["client_id"] == python_client_ids[0] and theirs["message"]["sender"]["id"] == mentor.id
    assert [p["data"]["message"]["client_id"] for p in stored] == [mine["message"]["client_id"], *python_client_ids]
    assert summary["presence_stats"] == {"num_clients": 2, "num_users": 2}
    assert summary["rpc"] == {"method": "typing", "data": None}
    assert summary["read"] == {"channel": channel, "last_read_offset": 2, "unread": 0}
    # Ephemeral publications reach it too: the typing and read notices its rpc calls made.
    ephemeral = [p["data"] for p in summary["publications"] if not p["offset"]]
    assert [e["type"] for e in ephemeral] == ["typing", "read"], ephemeral
    assert ephemeral[0]["user"]["id"] == member.id and ephemeral[1] == {
        "type": "read",
        "user_id": member.id,
        "offset": 2,
    }

    # Cut off, it came back and recovered exactly what it missed.
    first, again = summary["subscriptions"]
    assert not first["was_recovering"] and again == summary["recovery"]
    assert again["was_recovering"] is True and again["recovered"] is True and again["offset"] == 4, again

    # The Python SDK saw the same messages, in the same order.
    await seen.wait_for(lambda r: r.stored == [1, 2, 3, 4])
    assert [d for o, d in seen.publications if o] == [p["data"] for p in stored]
