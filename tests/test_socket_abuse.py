"""Hostile input on the socket, against a real web process and a raw ``websockets``
client: every bad command is answered with a Centrifuge error code that names the
client's mistake (never ``100 internal error``), floods of failing commands and
frames of too many commands are bounded, and the node keeps serving everyone else.

- ``test_hostile_values_are_answered_107_not_100``: integers beyond 64 bits in ids
  and offsets, NUL characters in stored text, nesting deeper than the decoder goes.
- ``test_failed_commands_are_capped_with_3509``: 10,000 subscribes to missing lounges
  end the socket with 3509 after ``WS_MAX_ERRORS``, not 10,000 database lookups later.
- ``test_a_json_array_of_commands_is_answered_per_command``: an array is refused by
  each command's id; 10,000 of them in one frame close the socket (3501), not silence.
- ``test_a_frame_of_too_many_commands_closes_with_3501``: more than
  ``MAX_COMMANDS_PER_FRAME`` commands in a frame run none of them.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from server.foundation.settings import Settings
from server.gateway.protocol import MAX_COMMANDS_PER_FRAME
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.test_realtime_protocol import error_code, lounge_with_member, message, raw

MAX_ERRORS = 30
NODE_ENV = {"WS_MAX_ERRORS": str(MAX_ERRORS), "PUBLISH_RATE_LIMIT": "100000/1", "DRAIN_SECONDS": "0"}


@pytest.fixture(scope="module")
async def node(settings: Settings) -> AsyncIterator[WebNode]:
    web = await WebNode(settings, **NODE_ENV).start()
    yield web
    await web.stop()


async def still_serves(node: WebNode, community: Community) -> None:
    """Another client connects, subscribes and publishes on the node."""
    _, member, lounge = await lounge_with_member(community)
    async with raw(node.ws_url, member.access_token) as sock:
        assert "subscribe" in await sock.call("subscribe", {"channel": lounge["channel"]})
        assert (await sock.call("publish", {"channel": lounge["channel"], "data": message()})).get("publish") == {}


async def test_hostile_values_are_answered_107_not_100(node: WebNode, community: Community) -> None:
    _, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    deep = "[" * 5_000 + "]" * 5_000  # deeper than the decoder goes, within the frame limit
    async with raw(node.ws_url, member.access_token) as sock:
        assert (await sock.call("publish", {"channel": channel, "data": message("first")})).get("publish") == {}
        answers: dict[str, Any] = {}
        answers["subscribe offset 2**64"] = await sock.call(
            "subscribe", {"channel": channel, "recover": True, "offset": 2**64 + 1, "epoch": ""}
        )
        answers["history since 2**70"] = await sock.call(
            "history", {"channel": channel, "limit": 10, "since": {"offset": 2**70, "epoch": ""}}
        )
        answers["reaction offset 2**64"] = await sock.call(
            "rpc", {"method": "reaction", "data": {"channel": channel, "offset": 2**64, "emoji": "🔥"}}
        )
        answers["edit offset 2**63-1"] = await sock.call(
            "rpc", {"method": "message.edit", "data": {"channel": channel, "offset": 2**63 - 1, "text": "x"}}
        )
        answers["NUL in a message"] = await sock.call(
            "publish", {"channel": channel, "data": message("before\u0000after")}
        )
        answers["NUL in an edit"] = await sock.call(
            "rpc", {"method": "message.edit", "data": {"channel": channel, "offset": 1, "text": "a\u0000b"}}
        )
        answers["NUL in a reaction"] = await sock.call(
            "rpc", {"method": "reaction", "data": {"channel": channel, "offset": 1, "emoji": "\u0000"}}
        )
        quoted = json.dumps(channel)
        deep_frames = {
            "deep in an unknown field": '{"id": 501, "presence_stats": {"channel": ' + quoted + '}, "x": ' + deep + "}",
            "deep in send": '{"id": 502, "send": {"data": ' + deep + "}}",
            "deep in publish data": '{"id": 503, "publish": {"channel": ' + quoted + ', "data": ' + deep + "}}",
            "deep in rpc data": '{"id": 504, "rpc": {"method": "read", "data": {"channel": ' + deep + "}}}",
        }
        for command_id, (name, frame) in enumerate(deep_frames.items(), start=501):
            await sock.send_raw(frame)
            answers[name] = await sock.reply(command_id)
        # An id beyond the protocol's uint32 cannot be echoed: answered with id 0.
        await sock.send_raw('{"id": ' + str(2**64 + 7) + ', "presence_stats": {"channel": ' + quoted + "}}")
        answers["id 2**64"] = await sock.next(lambda m: "error" in m and m.get("id", 0) == 0)
        codes = {name: error_code(reply) for name, reply in answers.items()}
        assert codes == dict.fromkeys(answers, 107), json.dumps(answers, default=str)[:3000]
        # The socket is still fine, and nothing hostile was stored.
        history = await sock.call("history", {"channel": channel, "limit": 10})
        assert [p["data"]["message"]["text"] for p in history["history"]["publications"]] == ["first"]
    await still_serves(node, community)


@pytest.mark.usefixtures("encoding")
async def test_failed_commands_are_capped_with_3509(node: WebNode, community: Community) -> None:
    user = await community.user(f"prober-{uuid.uuid4().hex[:8]}@example.com")
    async with raw(node.ws_url, user.access_token) as sock:
        with contextlib.suppress(ConnectionClosed):  # the server closes the socket on the way
            for _ in range(50):  # 50 frames of 200 subscribes to lounges that do not exist
                await sock.send(*({"subscribe": {"channel": f"lounge:{uuid.uuid4()}"}} for _ in range(200)))
        code, reason = await sock.closed(timeout=10)
        failed = [m["error"]["code"] for m in sock.inbox if "error" in m]
        assert code == 3509 and reason == "too many errors", (code, reason, len(failed))
        # Each answered subscribe cost one lookup; the socket ended at the cap, not after 10,000.
        assert 0 < len(failed) <= MAX_ERRORS and set(failed) == {102}, failed
    await still_serves(node, community)


async def test_a_json_array_of_commands_is_answered_per_command(node: WebNode, community: Community) -> None:
    _, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with raw(node.ws_url, member.access_token) as sock:
        await sock.send_raw(json.dumps([{"id": n, "presence_stats": {"channel": channel}} for n in (11, 12, 13)]))
        for command_id in (11, 12, 13):
            reply = await sock.reply(command_id, timeout=3)
            assert error_code(reply) == 107 and "one per line" in reply["error"]["message"], reply
        assert "presence_stats" in await sock.call("presence_stats", {"channel": channel})

        # 10,000 commands in one array are more than a frame may carry: the socket is closed, not left in silence.
        flood = [{"id": n, "subscribe": {"channel": f"lounge:{uuid.uuid4()}"}} for n in range(1, 10_001)]
        await sock.send_raw(json.dumps(flood, separators=(",", ":")))
        assert await sock.closed(timeout=10) == (3501, "too many commands")
    await still_serves(node, community)


@pytest.mark.usefixtures("encoding")
async def test_a_frame_of_too_many_commands_closes_with_3501(node: WebNode, community: Community) -> None:
    _, member, lounge = await lounge_with_member(community)
    channel = lounge["channel"]
    async with raw(node.ws_url, member.access_token) as sock:
        # A frame of exactly the maximum runs in full.
        fits = [{"id": n, "presence_stats": {"channel": channel}} for n in range(1, MAX_COMMANDS_PER_FRAME + 1)]
        await sock.send(*fits)
        for command_id in range(1, MAX_COMMANDS_PER_FRAME + 1):
            assert "presence_stats" in await sock.reply(command_id)
        publishes = [{"publish": {"channel": channel, "data": message()}} for _ in range(MAX_COMMANDS_PER_FRAME + 1)]
        await sock.send(*publishes)
        assert await sock.closed(timeout=10) == (3501, "too many commands")
    async with raw(node.ws_url, member.access_token) as sock:
        history = await sock.call("history", {"channel": channel, "limit": 10})
        assert history["history"]["publications"] == [], "a refused frame ran none of its commands"
