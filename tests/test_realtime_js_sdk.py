"""The official centrifuge-js SDK (npm ``centrifuge`` 5.x, pinned in tests/js) under
Node with the ``ws`` package talks to a real web process, next to a Python SDK client
(``tests/support/js_sdk.py`` installs and runs it)."""

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
from tests.support.sdk import sdk_client, subscription


@pytest.fixture
async def node(app: Any, settings: Settings) -> AsyncIterator[WebNode]:
    web = await WebNode(settings, DRAIN_SECONDS="0").start()
    yield web
    await web.stop()


async def test_centrifuge_js_connects_subscribes_publishes_and_receives(
    js_sdk: Path, node: WebNode, community: Community
) -> None:
    mentor = await community.mentor("js-mentor@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("js-member@example.com")
    assert (await community.join(member, lounge)).status_code == 200
    channel = lounge["channel"]

    python, _ = sdk_client(node.ws_url, mentor.access_token)
    await python.connect()
    await python.ready(timeout=10)
    sub, seen = subscription(python, channel)
    await sub.subscribe()
    await sub.ready(timeout=10)

    python_client_id = str(uuid.uuid4())

    async def publish_from_python() -> None:
        # The JS client saw its own message: now one from the Python SDK.
        await sub.publish({"text": "hello from centrifuge-python", "client_id": python_client_id})

    try:
        returncode, lines, stderr = await run_smoke(node.ws_url, member.access_token, channel, publish_from_python)
    finally:
        await python.disconnect()
    summary = lines[-1]
    print("\ncentrifuge-js summary:", json.dumps(summary)[:2000])
    assert returncode == 0, f"node smoke.mjs exited {returncode}: {summary}\nstderr:\n{stderr}"
    assert summary["errors"] == [], summary["errors"]
    assert summary["connected"] is True and summary["client"] and summary["transport"] == "websocket"
    assert summary["server_subscriptions"] == [f"user#{member.id}"]
    assert summary["subscribed"] == channel

    stored = [p for p in summary["publications"] if p["offset"]]
    assert [p["offset"] for p in stored] == [1, 2], stored
    mine, theirs = stored[0]["data"], stored[1]["data"]
    assert mine["type"] == "message" and mine["message"]["text"] == "hello from centrifuge-js"
    assert mine["message"]["sender"]["id"] == member.id
    assert theirs["type"] == "message" and theirs["message"]["text"] == "hello from centrifuge-python"
    assert theirs["message"]["client_id"] == python_client_id and theirs["message"]["sender"]["id"] == mentor.id
    assert summary["presence_stats"] == {"num_clients": 2, "num_users": 2}
    assert summary["rpc"] == {"method": "typing", "data": None}

    # The Python SDK saw the JS client's message too, in the same order.
    await seen.wait_for(lambda r: r.stored == [1, 2])
    assert seen.publications[0][1]["message"]["text"] == "hello from centrifuge-js"
