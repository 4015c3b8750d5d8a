"""Socket fuzzing: hypothesis generates frames no SDK would send (random and mutated
commands, wrong types, numbers beyond 64 bits, unknown fields, NUL and lone
surrogates, invalid UTF-8, deep nesting, JSON arrays, giant frames, floods of
lines) and each is sent to a real web process on a fresh raw WebSocket.

For every frame: each reply is a JSON protocol object, none is ``100 internal
error``; a socket the server closes is closed with a documented code for the
client's mistake (never 3004 "internal error"); the node answers a command sent
after it, never crashes, and its memory stays bounded over the whole run.

Hypothesis runs in a worker thread, each example in its own event loop, so a
failing frame is shrunk to a minimal one. Bounded to roughly a minute.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from server.foundation.settings import Settings
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.rawws import RawClient
from tests.test_realtime_protocol import lounge_with_member, rss_bytes

EXAMPLES = 700
MAX_FRAME = 8192
NODE_ENV = {"WS_MAX_FRAME_BYTES": str(MAX_FRAME), "PUBLISH_RATE_LIMIT": "100000/1", "DRAIN_SECONDS": "0"}
# What the server may close a fuzzed socket with: the client's mistakes, and the web
# server's own limit for frames past max(4 x WS_MAX_FRAME_BYTES, 1 MiB).
CLIENT_FAULT_CLOSES = {3500, 3501, 3509, 1009}
SENTINEL = 4_000_000_000
WEB_SERVER_LIMIT = max(4 * MAX_FRAME, 1024 * 1024)
FUZZ_SETTINGS = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

METHODS = ["connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "rpc"]
METHODS += ["refresh", "send", "ping", "sub_refresh", "frobnicate", ""]
RPC_METHODS = ["typing", "read", "message.edit", "message.delete", "reaction", "ai.cancel", "nope"]
FIELDS = ["channel", "offset", "epoch", "recover", "limit", "since", "data", "method", "token", "flag", "text"]
FIELDS += ["client_id", "reply_to", "emoji", "stream_id", "join_leave", "reverse", "attachments", "x" * 40]

numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30])
)
texts = st.text(max_size=40) | st.sampled_from(["\u0000", "a\u0000b", "\ud800", "\udfff\u0000", "🔥" * 10])
scalars = st.none() | st.booleans() | numbers | st.floats(allow_nan=False) | texts


def channels(lounge: str, thread: str, personal: str) -> st.SearchStrategy[str]:
    return st.sampled_from([lounge, thread, personal, "lounge:", f"lounge:{uuid.uuid4()}", "thread:x"]) | texts


def json_values(channel: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    leaves = scalars | channel
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | texts, inner, max_size=5),
        max_leaves=12,
    )


def commands(channel: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A command-shaped object: an id (any number), one or more methods with a request of fields."""
    values = json_values(channel)
    request = st.fixed_dictionaries(
        {},
        optional={
            "channel": channel | values,
            "offset": numbers | values,
            "epoch": texts,
            "recover": st.booleans() | values,
            "limit": numbers,
            "since": st.fixed_dictionaries({}, optional={"offset": numbers, "epoch": texts}) | values,
            "method": st.sampled_from(RPC_METHODS) | texts,
            "data": values
            | st.fixed_dictionaries(
                {},
                optional={
                    "channel": channel,
                    "text": texts,
                    "client_id": st.uuids().map(str) | texts,
                    "offset": numbers,
                    "emoji": texts,
                    "reply_to": numbers,
                    "attachments": st.lists(texts, max_size=3),
                },
            ),
            "token": texts,
            "flag": numbers,
        },
    )
    command = st.fixed_dictionaries({}, optional={"id": numbers | values, "x-unknown": values}).flatmap(
        lambda base: st.dictionaries(st.sampled_from(METHODS), request | values, min_size=0, max_size=2).map(
            lambda methods: {**base, **methods}
        )
    )
    return command | values


def deep(depth: int, opener: str) -> str:
    closer = "]" if opener == "[" else "}"
    inner = '{"a":' * depth if opener == "{" else "[" * depth
    return inner + "1" + closer * depth


def frames(lounge: str, thread: str, personal: str) -> st.SearchStrategy[bytes | str]:
    channel = channels(lounge, thread, personal)
    one = commands(channel).map(lambda c: json.dumps(c))
    lines = st.lists(one, min_size=1, max_size=6).map("\n".join)

    def mutate(text: str, data: st.DataObject) -> str:
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(text)))
            action = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
            piece = data.draw(st.sampled_from(['"', "{", "}", "[", "]", ",", ":", "\\", "\n", "\u0000", "9" * 25]))
            if action == "insert":
                text = text[:at] + piece + text[at:]
            elif action == "delete":
                text = text[:at] + text[at + 1 :]
            elif action == "replace":
                text = text[:at] + piece + text[at + 1 :]
            else:
                text = text[:at]
        return text

    mutated = st.tuples(lines, st.data()).map(lambda pair: mutate(*pair))
    arrays = st.lists(commands(channel), max_size=20).map(json.dumps)
    nested = st.tuples(st.integers(200, 1500), st.sampled_from(["[", "{"])).map(
        lambda spec: '{"id": 7, "publish": {"channel": ' + json.dumps(lounge) + ', "data": ' + deep(*spec) + "}}"
    )
    giant = st.sampled_from([MAX_FRAME + 1, 4 * MAX_FRAME, 1024 * 1024 + 10]).map(
        lambda size: json.dumps({"id": 9, "publish": {"channel": lounge, "data": {"text": "x" * size}}})
    )
    flood = st.integers(50, 400).map(
        lambda n: "\n".join(
            json.dumps({"id": i + 1, "subscribe": {"channel": f"lounge:{uuid.uuid4()}"}}) for i in range(n)
        )
    )
    invalid_utf8 = st.binary(min_size=1, max_size=200).map(lambda b: b"\xff" + b)
    return st.one_of(lines, mutated, arrays, nested, giant, flood, invalid_utf8)


async def probe(url: str, token: str, frame: bytes | str, connect_first: bool, lounge: str) -> None:
    """Send one fuzzed frame (and a sentinel command after it) and check what comes back."""
    sock = await RawClient.open(url)
    try:
        if connect_first:
            await sock.connect(token)
        try:
            await sock.ws.send(frame)
            await sock.send_raw(json.dumps({"id": SENTINEL, "presence_stats": {"channel": lounge}}))
            await sock.reply(SENTINEL, timeout=10)
        except ConnectionClosed:
            pass
        code = sock.ws.close_code
        errors = [m["error"] for m in sock.inbox if "error" in m]
        assert all(error["code"] != 100 for error in errors), errors
        allowed = CLIENT_FAULT_CLOSES
        if len(frame) > WEB_SERVER_LIMIT:  # uvicorn drops the connection mid-frame: 1009, or a reset (1006)
            allowed = allowed | {1006}
        assert code is None or code in allowed, (code, sock.ws.close_reason)
        if code is None and connect_first:
            await sock.send({"id": SENTINEL + 1, "presence_stats": {"channel": lounge}})  # ids the frame did not use
            assert "error" not in await sock.reply(SENTINEL + 1), "the socket works on"
    finally:
        await sock.close()


async def test_fuzzed_frames_get_protocol_errors_never_a_crash(settings: Settings, community: Community) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    thread = (await community.client.post("/api/v1/chat/threads", json={}, headers=member.headers)).json()
    web = await WebNode(settings, **NODE_ENV).start()
    try:
        assert web.process is not None
        url, token, channel = web.ws_url, member.access_token, lounge["channel"]
        rss_before = rss_bytes(web.process.pid)

        @FUZZ_SETTINGS
        @given(
            frame=frames(channel, thread["channel"], f"user#{member.id}"),
            connect_first=st.booleans() | st.just(True),
        )
        def fuzz(frame: bytes | str, connect_first: bool) -> None:
            asyncio.run(probe(url, token, frame, connect_first, channel))
            assert web.process is not None and web.process.poll() is None, "the node died"

        await asyncio.to_thread(fuzz)

        grown = rss_bytes(web.process.pid) - rss_before
        assert grown < 64 * 1024 * 1024, f"the node grew by {grown / 2**20:.0f} MiB over the run"
        # Still serving: an official-shaped session works end to end.
        sock = await RawClient.open(url)
        try:
            await sock.connect(mentor.access_token)
            assert "subscribe" in await sock.call("subscribe", {"channel": channel})
        finally:
            await sock.close()
    finally:
        await web.stop()
