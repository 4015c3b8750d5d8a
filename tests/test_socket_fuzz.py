"""Socket fuzzing: hypothesis generates frames no SDK would send (random and mutated
commands, wrong types, numbers beyond 64 bits, unknown fields, NUL and lone
surrogates, invalid UTF-8, deep nesting, JSON arrays, giant frames, floods of
lines) and each is sent to a real web process on a fresh raw WebSocket; then the
same for the Protobuf encoding (commands the upstream schema encodes, mutated bytes,
random bytes, giant frames, floods of empty commands).

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

from centrifuge.protocol import client_pb2 as pb
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from server.foundation.settings import Settings
from server.gateway.protobuf_codec import delimited
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.rawws import RawClient
from tests.support.sdk import Encoding
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


async def probe(url: str, token: str, frame: bytes | str, connect_first: bool, lounge: str, encoding: Encoding) -> None:
    """Send one fuzzed frame (and a sentinel command after it, in ``encoding``) and check what comes back."""
    sock = await RawClient.open(url, encoding=encoding)
    try:
        if connect_first:
            await sock.connect(token)
        try:
            await sock.ws.send(frame)
            await sock.send({"id": SENTINEL, "presence_stats": {"channel": lounge}})
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
            asyncio.run(probe(url, token, frame, connect_first, channel, "json"))
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


# -- the Protobuf encoding ---------------------------------------------------------------------


def utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


PROTOBUF_EXAMPLES = 500


def protobuf_frames(lounge: str, thread: str, personal: str) -> st.SearchStrategy[bytes]:
    """Binary frames for a Protobuf socket: commands the upstream schema can encode (any
    method, any field values its types allow, 64-bit extremes included), then the same
    bytes mutated (flipped, cut, spliced), random bytes, giant and flooded frames."""
    # Protobuf strings are UTF-8: a lone surrogate cannot even be encoded (the mutations
    # below still send invalid UTF-8 where a string goes).
    channel = channels(lounge, thread, personal).filter(utf8)
    utf8_texts = texts.filter(utf8)
    uint64 = st.sampled_from([0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
    int64 = st.sampled_from([0, -1, -(2**63), 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)
    documents = json_values(channel).map(lambda v: json.dumps(v).encode()) | st.binary(max_size=60)
    requests = {
        "connect": st.builds(lambda t: pb.ConnectRequest(token=t), utf8_texts),
        "subscribe": st.builds(
            lambda c, r, o, e, f, j: pb.SubscribeRequest(channel=c, recover=r, offset=o, epoch=e, flag=f, join_leave=j),
            channel,
            st.booleans(),
            uint64,
            utf8_texts,
            int64,
            st.booleans(),
        ),
        "unsubscribe": st.builds(lambda c: pb.UnsubscribeRequest(channel=c), channel),
        "publish": st.builds(lambda c, d: pb.PublishRequest(channel=c, data=d), channel, documents),
        "presence": st.builds(lambda c: pb.PresenceRequest(channel=c), channel),
        "presence_stats": st.builds(lambda c: pb.PresenceStatsRequest(channel=c), channel),
        "history": st.builds(
            lambda c, n, o, r: pb.HistoryRequest(channel=c, limit=n, since=pb.StreamPosition(offset=o), reverse=r),
            channel,
            st.integers(-(2**31), 2**31 - 1),
            uint64,
            st.booleans(),
        ),
        "rpc": st.builds(
            lambda m, d: pb.RPCRequest(method=m, data=d), st.sampled_from(RPC_METHODS) | utf8_texts, documents
        ),
        "refresh": st.builds(lambda t: pb.RefreshRequest(token=t), utf8_texts),
        "sub_refresh": st.builds(lambda c: pb.SubRefreshRequest(channel=c), channel),
        "send": st.builds(lambda d: pb.SendRequest(data=d), documents),
        "ping": st.just(pb.PingRequest()),
    }

    def command(method: str, request: Any, command_id: int) -> bytes:
        message = pb.Command(id=command_id)
        getattr(message, method).CopyFrom(request)
        return message.SerializeToString()

    one = st.sampled_from(sorted(requests)).flatmap(
        lambda method: st.builds(command, st.just(method), requests[method], st.integers(0, 2**32 - 1))
    )
    framed = st.lists(one, min_size=1, max_size=6).map(lambda cs: b"".join(delimited(c) for c in cs))

    def mutate(frame: bytes, data: st.DataObject) -> bytes:
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(frame)))
            action = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
            piece = data.draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b"\xff" * 10, b"\x7f", b"\x00"]))
            if action == "insert":
                frame = frame[:at] + piece + frame[at:]
            elif action == "delete":
                frame = frame[:at] + frame[at + 1 :]
            elif action == "replace":
                frame = frame[:at] + piece + frame[at + len(piece) :]
            else:
                frame = frame[:at]
        return frame

    mutated = st.tuples(framed, st.data()).map(lambda pair: mutate(*pair))
    giant = st.sampled_from([MAX_FRAME + 1, 4 * MAX_FRAME, 1024 * 1024 + 10]).map(
        lambda size: delimited(command("publish", pb.PublishRequest(channel=lounge, data=b'"' + b"x" * size + b'"'), 9))
    )
    flood = st.integers(50, 5000).map(lambda n: b"\x00" * n)  # empty commands: pongs, past the per-frame cap
    return st.one_of(framed, mutated, st.binary(min_size=1, max_size=300), giant, flood)


async def test_fuzzed_protobuf_frames_get_protocol_errors_never_a_crash(
    settings: Settings, community: Community
) -> None:
    mentor, member, lounge = await lounge_with_member(community)
    thread = (await community.client.post("/api/v1/chat/threads", json={}, headers=member.headers)).json()
    web = await WebNode(settings, **NODE_ENV).start()
    try:
        assert web.process is not None
        url, token, channel = web.ws_url, member.access_token, lounge["channel"]
        rss_before = rss_bytes(web.process.pid)

        @hypothesis_settings(FUZZ_SETTINGS, max_examples=PROTOBUF_EXAMPLES)
        @given(
            frame=protobuf_frames(channel, thread["channel"], f"user#{member.id}"),
            connect_first=st.booleans() | st.just(True),
        )
        def fuzz(frame: bytes, connect_first: bool) -> None:
            asyncio.run(probe(url, token, frame, connect_first, channel, "protobuf"))
            assert web.process is not None and web.process.poll() is None, "the node died"

        await asyncio.to_thread(fuzz)

        grown = rss_bytes(web.process.pid) - rss_before
        assert grown < 64 * 1024 * 1024, f"the node grew by {grown / 2**20:.0f} MiB over the run"
        sock = await RawClient.open(url, encoding="protobuf")
        try:
            await sock.connect(mentor.access_token)
            assert "subscribe" in await sock.call("subscribe", {"channel": channel})
        finally:
            await sock.close()
    finally:
        await web.stop()
