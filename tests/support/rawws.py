"""A tiny raw client of the gateway on the ``websockets`` library, for frames the
official SDKs would never send (malformed lines, unknown methods, oversized
frames, commands before ``connect``) and for peers that misbehave on purpose
(never answer pings, stop reading).

A client speaks the encoding of the test (``sdk.current_encoding``) unless told one.
In JSON, frames are one or more JSON objects separated by newlines. In Protobuf, commands
written as the same dicts are built into the official SDK's ``client_pb2.Command``
(bytes fields carry the JSON document, as a Protobuf client must send them) and framed
length-delimited; replies are parsed with its ``client_pb2.Reply`` and read back into
the JSON encoding's shape (64-bit numbers as ints, bytes as the JSON they carry, absent
scalars at their defaults), so a test's assertions hold on both. Everything received is
split into messages and kept in ``inbox`` until a test takes it; replies are matched by
command id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from centrifuge.protocol import client_pb2 as pb
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict, ParseDict
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import sdk

Message = dict[str, Any]


class RawClient:
    """One WebSocket to the gateway, driven command by command."""

    def __init__(self, ws: ClientConnection, *, answer_pings: bool, encoding: sdk.Encoding) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.protobuf = encoding == "protobuf"
        self.inbox: deque[Message] = deque()
        self.pings = 0
        self._next_id = 0

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        answer_pings: bool = True,
        rcvbuf: int | None = None,
        mss: int | None = None,
        max_queue: int | None = 16,
        encoding: sdk.Encoding | None = None,
    ) -> RawClient:
        """Connect a WebSocket (no protocol ``connect`` yet).

        For a client that stops reading: ``rcvbuf`` sets SO_RCVBUF and ``mss``
        TCP_MAXSEG before the TCP handshake. A small receive window and a small
        segment size keep the kernels' buffers for the connection small (on
        loopback the MSS is ~64 KiB and the server's send buffer autotunes to
        MiBs), so the server's own writes back up after a few dozen KiB.
        ``max_queue=1`` makes the library stop reading from the socket as soon as
        one frame waits unread.
        """
        sock = None
        if rcvbuf is not None or mss is not None:
            parts = urlsplit(url)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        encoding = encoding or sdk.current_encoding
        ws = await connect(
            url,
            sock=sock,
            subprotocols=["centrifuge-protobuf"] if encoding == "protobuf" else None,  # type: ignore[list-item]
            compression=None,  # byte counts on the wire are what the test reasons about
            proxy=None,
            ping_interval=None,  # no WebSocket-level pings: only the protocol's own
            max_size=None,
            max_queue=max_queue,
            open_timeout=10,
            close_timeout=2,
        )
        return cls(ws, answer_pings=answer_pings, encoding=encoding)

    # -- sending -------------------------------------------------------------------------

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame exactly as given: text for ``str``, binary for ``bytes``."""
        await self.ws.send(frame)

    async def send(self, *commands: Message) -> list[int]:
        """Send commands in one frame (newline-separated); an ``id`` is added to each
        command that has none. Returns the ids."""
        ids = []
        for command in commands:
            command.setdefault("id", self.new_id())
            ids.append(command["id"])
        if self.protobuf:
            await self.send_raw(b"".join(_delimited(_command_bytes(c)) for c in commands))
        else:
            await self.send_raw("\n".join(json.dumps(c) for c in commands))
        return ids

    async def call(self, method: str, params: Message | None = None, timeout: float = 10.0) -> Message:
        """Send one command and wait for its reply (``{"id", method: ...}`` or ``{"id", "error"}``)."""
        [command_id] = await self.send({method: params or {}})
        return await self.reply(command_id, timeout)

    async def connect(self, token: str, timeout: float = 10.0) -> Message:
        reply = await self.call("connect", {"token": token, "name": "rawws"}, timeout)
        assert "connect" in reply, reply
        return reply["connect"]

    # -- receiving -----------------------------------------------------------------------

    async def _read(self) -> None:
        """Read one frame into the inbox (answering pings if asked to)."""
        frame = await self.ws.recv()
        if self.protobuf:
            assert isinstance(frame, bytes), f"a text frame on a Protobuf socket: {frame!r}"
            messages = _replies(frame)
        else:
            if isinstance(frame, bytes):
                frame = frame.decode()
            messages = [json.loads(line) for line in frame.split("\n") if line.strip()]
        for message in messages:
            if message == {} or message == {"id": 0}:
                self.pings += 1
                if self.answer_pings:
                    await self.send_raw(b"\x00" if self.protobuf else "{}")
                continue
            self.inbox.append(message)

    async def next(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        """The first message (already received or still to come) that matches."""
        async with asyncio.timeout(timeout):
            while True:
                for message in list(self.inbox):
                    if predicate(message):
                        self.inbox.remove(message)
                        return message
                await self._read()

    async def reply(self, command_id: int, timeout: float = 10.0) -> Message:
        return await self.next(lambda m: m.get("id") == command_id, timeout)

    async def push(self, predicate: Callable[[Message], bool] = lambda p: True, timeout: float = 10.0) -> Message:
        """The next push whose ``push`` object matches ``predicate``."""
        message = await self.next(lambda m: "push" in m and predicate(m["push"]), timeout)
        return message["push"]

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Read (and keep) everything until the server closes; returns its close code and reason."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._read()
        except ConnectionClosed:
            pass
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()

    @property
    def local_port(self) -> int:
        return self.ws.transport.get_extra_info("sockname")[1]


# -- the Protobuf encoding, through the official SDK's client_pb2 ----------------------------


def _delimited(message: bytes) -> bytes:
    length, prefix = len(message), bytearray()
    while length >= 0x80:
        prefix.append((length & 0x7F) | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix) + message


def _command_bytes(command: Message) -> bytes:
    """A JSON-shaped command as a ``client_pb2.Command`` (a method unknown to the protocol is
    dropped, as an encoder that does not know it would: the server sees an id alone)."""
    return ParseDict(
        _to_protobuf_json(pb.Command.DESCRIPTOR, command), pb.Command(), ignore_unknown_fields=True
    ).SerializeToString()


def _to_protobuf_json(descriptor: Descriptor, value: Message) -> Message:
    """Bytes fields (``data``) as the base64 of the JSON document they carry (ParseDict's form)."""
    out: Message = {}
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            out[name] = item
        elif field.type == FieldDescriptor.TYPE_BYTES:
            raw = item if isinstance(item, bytes) else json.dumps(item).encode()
            out[name] = base64.b64encode(raw).decode()
        elif (
            field.message_type is not None and not field.message_type.GetOptions().map_entry and isinstance(item, dict)
        ):
            out[name] = _to_protobuf_json(field.message_type, item)
        else:
            out[name] = item
    return out


def _replies(frame: bytes) -> list[Message]:
    replies, position = [], 0
    while position < len(frame):
        length = shift = 0
        while True:
            byte = frame[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        reply = pb.Reply()
        reply.ParseFromString(frame[position : position + length])
        position += length
        plain = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        replies.append(_from_protobuf_json(pb.Reply.DESCRIPTOR, plain))
    return replies


def _from_protobuf_json(descriptor: Descriptor, value: Message) -> Message:
    """MessageToDict's output in the JSON encoding's shape: 64-bit numbers as ints, bytes as the
    JSON they carry (or the bytes, when they carry none)."""
    out: Message = {}
    for name, item in value.items():
        field = descriptor.fields_by_name[name]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                entry = field.message_type.fields_by_name["value"]
                out[name] = {
                    k: _from_protobuf_json(entry.message_type, v) if entry.message_type is not None else v
                    for k, v in item.items()
                }
            elif field.is_repeated:
                out[name] = [_from_protobuf_json(field.message_type, element) for element in item]
            else:
                out[name] = _from_protobuf_json(field.message_type, item)
        elif field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
            out[name] = int(item)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            raw = base64.b64decode(item)
            if raw:
                try:
                    out[name] = json.loads(raw)
                except ValueError:
                    out[name] = raw
        else:
            out[name] = item
    return out
