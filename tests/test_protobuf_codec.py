"""The Protobuf encoding, byte for byte against what the official centrifuge-python SDK ships
(its generated ``client_pb2`` of the upstream ``client.proto`` and its length-delimited
framing), and at its limits: frames the SDKs would never send."""

from __future__ import annotations

import msgspec
import pytest
from centrifuge.codecs import _ProtobufCodec as SdkCodec
from centrifuge.protocol import client_pb2 as pb

from server.gateway import protobuf_codec as codec
from server.gateway.codec import negotiate
from server.gateway.json_codec import JSON
from server.gateway.protobuf_codec import PROTOBUF
from server.gateway.protocol import (
    ERROR_BAD_REQUEST,
    MAX_COMMANDS_PER_FRAME,
    ClientInfo,
    Command,
    ProtocolError,
    Publication,
    ReplyError,
)

DOC = b'{"type":"message","message":{"text":"hi \xc3\xa9"}}'
INFO = ClientInfo(user="u-1", client="c-1", conn_info={"name": "Ada"})


def sdk_frame(*replies: pb.Reply) -> bytes:
    """What the upstream schema writes for ``replies``, framed as the protocol frames them."""
    return b"".join(codec.delimited(reply.SerializeToString()) for reply in replies)


def sdk_reads(frame: bytes) -> list[dict]:
    """``frame`` as the SDK's own decoder reads it."""
    return SdkCodec.decode_replies(frame)


# -- replies: byte for byte ------------------------------------------------------------------

REPLIES = {
    "connect": (
        {
            "client": "c-1",
            "version": "lounges 0.1",
            "expires": True,
            "ttl": 900,
            "ping": 25,
            "pong": True,
            "subs": {"user#u-1": {}},
        },
        pb.ConnectResult(
            client="c-1",
            version="lounges 0.1",
            expires=True,
            ttl=900,
            ping=25,
            pong=True,
            subs={"user#u-1": pb.SubscribeResult()},
        ),
    ),
    "refresh": (
        {"client": "c-1", "version": "v", "expires": True, "ttl": 60},
        pb.RefreshResult(client="c-1", version="v", expires=True, ttl=60),
    ),
    "subscribe": (
        {
            "recoverable": True,
            "positioned": True,
            "epoch": "e1",
            "offset": 2**63 - 1,
            "recovered": True,
            "was_recovering": True,
            "publications": [
                Publication(data=msgspec.Raw(DOC), offset=7),
                Publication(data=msgspec.Raw(b"{}"), offset=8),
            ],
        },
        pb.SubscribeResult(
            recoverable=True,
            positioned=True,
            epoch="e1",
            offset=2**63 - 1,
            recovered=True,
            was_recovering=True,
            publications=[pb.Publication(data=DOC, offset=7), pb.Publication(data=b"{}", offset=8)],
        ),
    ),
    "history": (
        {"epoch": "e1", "offset": 3, "publications": [Publication(data=msgspec.Raw(DOC), offset=3)]},
        pb.HistoryResult(epoch="e1", offset=3, publications=[pb.Publication(data=DOC, offset=3)]),
    ),
    "presence": (
        {"presence": {"c-1": msgspec.to_builtins(INFO)}},
        pb.PresenceResult(presence={"c-1": pb.ClientInfo(user="u-1", client="c-1", conn_info=b'{"name":"Ada"}')}),
    ),
    "presence_stats": ({"num_clients": 3, "num_users": 2}, pb.PresenceStatsResult(num_clients=3, num_users=2)),
    "rpc": ({"data": msgspec.Raw(b'{"read":1}')}, pb.RPCResult(data=b'{"read":1}')),
    "publish": ({}, pb.PublishResult()),
    "unsubscribe": ({}, pb.UnsubscribeResult()),
}


@pytest.mark.parametrize("method", sorted(REPLIES))
def test_a_reply_is_byte_for_byte_the_upstream_schema(method: str) -> None:
    result, upstream = REPLIES[method]
    ours = PROTOBUF.reply(41, method, result)
    expected = pb.Reply(id=41)
    getattr(expected, method).CopyFrom(upstream)
    assert ours == sdk_frame(expected)
    (read,) = sdk_reads(ours)
    assert read["id"] == 41 and method in read


def test_errors_pushes_and_pings_are_byte_for_byte_the_upstream_schema() -> None:
    assert PROTOBUF.error_reply(9, ReplyError(code=107, message="bad", temporary=False)) == sdk_frame(
        pb.Reply(id=9, error=pb.Error(code=107, message="bad"))
    )
    assert PROTOBUF.error_reply(9, ReplyError(code=108, message="later", temporary=True)) == sdk_frame(
        pb.Reply(id=9, error=pb.Error(code=108, message="later", temporary=True))
    )
    frames = PROTOBUF.push_frames("lounge:1")
    assert frames.publication(DOC, 12) == sdk_frame(
        pb.Reply(push=pb.Push(channel="lounge:1", pub=pb.Publication(data=DOC, offset=12)))
    )
    # An ephemeral publication (a coach's delta, offset 0), even with empty data, is still a publication.
    assert frames.publication(b"", 0) == sdk_frame(pb.Reply(push=pb.Push(channel="lounge:1", pub=pb.Publication())))
    info = pb.ClientInfo(user="u-1", client="c-1", conn_info=b'{"name":"Ada"}')
    wire_info = msgspec.json.encode(INFO)
    assert frames.join(wire_info) == sdk_frame(pb.Reply(push=pb.Push(channel="lounge:1", join=pb.Join(info=info))))
    assert frames.leave(wire_info) == sdk_frame(pb.Reply(push=pb.Push(channel="lounge:1", leave=pb.Leave(info=info))))
    assert PROTOBUF.unsubscribe_push("lounge:1", 2000, "removed") == sdk_frame(
        pb.Reply(push=pb.Push(channel="lounge:1", unsubscribe=pb.Unsubscribe(code=2000, reason="removed")))
    )
    assert PROTOBUF.disconnect_push(3001, "shutdown") == sdk_frame(
        pb.Reply(push=pb.Push(disconnect=pb.Disconnect(code=3001, reason="shutdown")))
    )
    assert PROTOBUF.ping == sdk_frame(pb.Reply()) == b"\x00"
    # Several units queued for one socket leave as one message the SDK splits again.
    batch = PROTOBUF.batch([frames.publication(DOC, 1), PROTOBUF.ping, frames.publication(DOC, 2)])
    read = sdk_reads(batch)
    assert [r.get("push", {}).get("pub", {}).get("offset") for r in read] == ["1", None, "2"]


def test_a_large_reply_has_a_multi_byte_length_prefix() -> None:
    big = b'"' + b"x" * 70_000 + b'"'
    frame = PROTOBUF.push_frames("lounge:1").publication(big, 1)
    assert frame == sdk_frame(pb.Reply(push=pb.Push(channel="lounge:1", pub=pb.Publication(data=big, offset=1))))
    assert frame[0] & 0x80 and frame[1] & 0x80  # three bytes of varint
    assert sdk_reads(frame)[0]["push"]["channel"] == "lounge:1"


# -- commands: what the SDK writes, read back ------------------------------------------------


def sdk_commands(*commands: dict) -> bytes:
    """Commands framed by the SDK's own encoder (its dicts carry bytes as base64, as it writes them)."""
    return SdkCodec.encode_commands(list(commands))


def test_every_command_the_sdk_writes_is_read_as_the_json_encoding_reads_it() -> None:
    doc64 = "eyJ0ZXh0IjoiaGkifQ=="  # {"text":"hi"}
    frame = sdk_commands(
        {"id": 1, "connect": {"token": "t", "name": "js", "version": "5", "subs": {"user#1": {"recover": True}}}},
        {
            "id": 2,
            "subscribe": {"channel": "lounge:a", "recover": True, "epoch": "e", "offset": "5", "join_leave": True},
        },
        {"id": 3, "publish": {"channel": "lounge:a", "data": doc64}},
        {
            "id": 4,
            "history": {"channel": "lounge:a", "limit": 10, "since": {"offset": "2", "epoch": "e"}, "reverse": True},
        },
        {"id": 5, "presence": {"channel": "lounge:a"}},
        {"id": 6, "presence_stats": {"channel": "lounge:a"}},
        {"id": 7, "rpc": {"method": "read", "data": doc64}},
        {"id": 8, "refresh": {"token": "t2"}},
        {"id": 9, "unsubscribe": {"channel": "lounge:a"}},
        {},  # a pong
    )
    commands = PROTOBUF.decode_commands(frame)
    json_frame = b"\n".join(
        [
            b'{"id":1,"connect":{"token":"t","name":"js","version":"5","subs":{"user#1":{"recover":true}}}}',
            b'{"id":2,"subscribe":{"channel":"lounge:a","recover":true,"epoch":"e","offset":5,"join_leave":true}}',
            b'{"id":3,"publish":{"channel":"lounge:a","data":{"text":"hi"}}}',
            b'{"id":4,"history":{"channel":"lounge:a","limit":10,"since":{"offset":2,"epoch":"e"},"reverse":true}}',
            b'{"id":5,"presence":{"channel":"lounge:a"}}',
            b'{"id":6,"presence_stats":{"channel":"lounge:a"}}',
            b'{"id":7,"rpc":{"method":"read","data":{"text":"hi"}}}',
            b'{"id":8,"refresh":{"token":"t2"}}',
            b'{"id":9,"unsubscribe":{"channel":"lounge:a"}}',
            b"{}",
        ]
    )
    expected = JSON.decode_commands(json_frame)
    assert len(commands) == len(expected) == 10
    for ours, theirs in zip(commands, expected, strict=True):
        assert isinstance(ours, Command) and isinstance(theirs, Command)
        # Raw data compares by its bytes (JSON's is the document's text as sent).
        assert _plain(ours) == _plain(theirs)
    assert commands[9].method() is None and commands[9].id == 0  # the pong


def _plain(command: Command) -> object:
    return msgspec.json.decode(msgspec.json.encode(command))


# -- commands at the limits -------------------------------------------------------------------


def test_numbers_beyond_the_protocols_bounds_are_a_107_for_that_command() -> None:
    frame = sdk_commands(
        {"id": 3, "subscribe": {"channel": "lounge:a", "recover": True, "offset": str(2**64 - 1)}},
        {"id": 4, "history": {"channel": "lounge:a", "since": {"offset": str(2**63)}}},
        {"id": 5, "presence": {"channel": "lounge:a"}},
    )
    too_big, also, fine = PROTOBUF.decode_commands(frame)
    assert isinstance(too_big, ProtocolError) and too_big.command_id == 3 and too_big.error.code == ERROR_BAD_REQUEST
    assert isinstance(also, ProtocolError) and also.command_id == 4
    assert isinstance(fine, Command) and fine.id == 5


def test_broken_frames_are_errors_never_exceptions() -> None:
    good = sdk_commands({"id": 1, "presence": {"channel": "lounge:a"}})
    # A length prefix that runs past the frame's end: what came before still counts.
    (first, cut) = PROTOBUF.decode_commands(good + b"\x05\x08")
    assert isinstance(first, Command) and isinstance(cut, ProtocolError)
    # A varint that never ends.
    (broken,) = PROTOBUF.decode_commands(b"\xff" * 12)
    assert isinstance(broken, ProtocolError)
    # Bytes that are no Command (a wire type Command never uses); the leading id is salvaged.
    (garbage,) = PROTOBUF.decode_commands(codec.delimited(b"\x08\x07\x27"))
    assert isinstance(garbage, ProtocolError) and garbage.command_id == 7
    # A JSON text frame on a Protobuf socket.
    decoded = PROTOBUF.decode_commands('{"id":1,"connect":{}}')
    assert all(isinstance(item, ProtocolError) for item in decoded)
    # Publish data is the JSON document's bytes; what it holds is the domain's to judge.
    (raw,) = PROTOBUF.decode_commands(
        codec.delimited(pb.Command(id=2, publish=pb.PublishRequest(channel="c", data=b"\x00\xff")).SerializeToString())
    )
    assert isinstance(raw, Command) and bytes(raw.publish.data) == b"\x00\xff"


def test_a_flood_of_empty_commands_stops_decoding_past_the_limit() -> None:
    commands = PROTOBUF.decode_commands(b"\x00" * 1_000_000)
    assert len(commands) == MAX_COMMANDS_PER_FRAME + 1  # the caller closes the socket (3501)


def test_unknown_fields_are_skipped_as_the_protocol_expects() -> None:
    # A subscription filter (field 13, which this server does not declare) is ignored.
    command = pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="lounge:a", tf=pb.FilterNode(op="and")))
    (read,) = PROTOBUF.decode_commands(codec.delimited(command.SerializeToString()))
    assert isinstance(read, Command) and read.subscribe is not None and read.subscribe.channel == "lounge:a"


# -- choosing the encoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subprotocols", "query", "encoding", "accepted"),
    [
        ([], b"", "json", None),
        (["centrifuge-protobuf"], b"", "protobuf", "centrifuge-protobuf"),
        (["other", "centrifuge-protobuf"], b"", "protobuf", "centrifuge-protobuf"),
        ([], b"format=protobuf", "protobuf", None),
        ([], b"cf_ws_frame_ping_pong=true&format=protobuf", "protobuf", None),
        ([], b"format=json", "json", None),
        (["centrifuge-json"], b"", "json", None),
    ],
)
def test_the_handshake_chooses_the_encoding(
    subprotocols: list[str], query: bytes, encoding: str, accepted: str | None
) -> None:
    chosen, subprotocol = negotiate(subprotocols, query)
    assert chosen.name == encoding and subprotocol == accepted
