"""A lean WebSocket client for load generation: one ``asyncio.Protocol`` per socket.

The ``websockets`` library costs tens of microseconds per received message in
Python (a task per connection, a frame object, a message queue); a load
generator with 1,000 sockets receiving 100,000 messages/s on one CPU cannot
afford that. This client parses the server's (unmasked) frames straight from
the transport's buffer, splits text messages on newlines (the Centrifuge JSON
protocol's batching) and hands every line with one receive timestamp per
``data_received`` call to :meth:`RawWebSocket.on_line`; subclasses decode
only what they need (with msgspec), or take whole messages in
:meth:`RawWebSocket.on_message` (binary ones, e.g. Centrifuge's Protobuf encoding).
A subclass that sets :attr:`RawWebSocket.subprotocol` offers it in the handshake
and refuses an answer that does not accept it (:class:`SubprotocolRefused`).

Client frames are masked as RFC 6455 requires (a random key per socket). Only
what the benchmarks need is implemented: text and binary messages (with
continuation frames), ping/pong, close. No extensions, no TLS, no redirects.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time

CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_HANDSHAKE = 16384

clock = time.monotonic  # CLOCK_MONOTONIC: comparable across processes on Linux


class HandshakeError(ConnectionError):
    pass


class SubprotocolRefused(RuntimeError):
    """The server's 101 answer did not accept the subprotocol offered. Not an ``OSError``:
    callers that count failed sockets must not swallow it (the run would silently
    measure another encoding)."""


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key`` (one big-int operation, no Python loop)."""
    n = len(payload)
    if not n:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One masked client frame with FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in an HTTP head, or ``None``."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class RawWebSocket(asyncio.Protocol):
    """A client WebSocket. ``opened`` resolves after the 101 answer, ``done`` when the TCP
    connection is gone (with the close code the server sent, or 1006)."""

    subprotocol: str | None = None  # offered in the handshake (Sec-WebSocket-Protocol) when set

    def __init__(self, host: str, port: int, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[int] = loop.create_future()
        self.close_code: int | None = None
        self.close_reason = ""
        self._key = os.urandom(4)
        self._handshaking = True
        self._head = b""
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._closing = False
        self.frames_received = 0
        self.bytes_received = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n" if self.subprotocol else ""
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{offer}User-Agent: lounges-bench\r\n\r\n"
        )
        self.transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        now = clock()
        self.bytes_received += len(data)
        if self._handshaking:
            data = self._handshake(data)
            if not data:
                return
        if self._buffer:
            self._buffer += data
            self._parse(self._buffer, now)
        else:
            rest = self._parse_bytes(data, now)
            if rest:
                self._buffer += rest

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("closed during the handshake"))
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        if not self.done.done():
            self.done.set_result(self.close_code)
        self.on_closed()

    # -- parsing -------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_HANDSHAKE:
                self._fail_handshake("handshake answer too long")
            self._head = head
            return b""
        status = head[: head.find(b"\r\n")]
        self._head = b""
        self._handshaking = False
        if not status.startswith(b"HTTP/1.1 101"):
            self._fail_handshake(status.decode(errors="replace"))
            return b""
        if self.subprotocol:
            accepted = _header(head[:end], b"sec-websocket-protocol")
            if accepted != self.subprotocol.encode():
                self._fail_handshake(
                    f"offered subprotocol {self.subprotocol!r}, the server accepted {accepted!r}", SubprotocolRefused
                )
                return b""
        self.opened.set_result(None)
        return head[end + 4 :]

    def _fail_handshake(self, why: str, error: type[Exception] = HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(error(why))
        assert self.transport is not None
        self.transport.close()

    def _parse_bytes(self, data: bytes, now: float) -> bytes:
        """Frames from ``data`` (the common case: the buffer is empty); returns the incomplete rest."""
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            stop = start + length
            if stop > end:
                break
            if b0 == 0x81 or b0 == 0x82:  # a whole text/binary message: the hot path, no detour through _frame
                self.frames_received += 1
                self.on_message(data[start:stop], now)
            else:
                self._frame(b0, data[start:stop], now)
            pos = stop
        return data[pos:] if pos < end else b""

    def _parse(self, buffer: bytearray, now: float) -> None:
        """Frames from the reassembly buffer (a frame spanned several reads)."""
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            b0, b1 = buffer[pos], buffer[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            stop = start + length
            if stop > end:
                break
            self._frame(b0, bytes(buffer[start:stop]), now)
            pos = stop
        del buffer[:pos]

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        self.frames_received += 1
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode in (_OP_TEXT, _OP_BINARY):
            if fin:
                self.on_message(payload, now)
            else:
                self._fragments = [payload]
        elif opcode == _OP_CONT:
            if self._fragments is None:
                return
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments = None
                self.on_message(message, now)
        elif opcode == _OP_PING:
            self._write(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NO_STATUS
            self.close_reason = payload[2:].decode(errors="replace")
            if not self._closing:
                self._closing = True
                self._write(_OP_CLOSE, payload[:2])
            assert self.transport is not None
            self.transport.close()

    # -- for subclasses ------------------------------------------------------------------------

    def on_message(self, payload: bytes, now: float) -> None:
        """A complete message (text or binary): split into lines (the JSON protocol batches with ``\\n``)."""
        if b"\n" in payload:
            for line in payload.split(b"\n"):
                if line:
                    self.on_line(line, now)
        else:
            self.on_line(payload, now)

    def on_line(self, line: bytes, now: float) -> None:
        pass

    def on_closed(self) -> None:
        pass

    # -- sending -------------------------------------------------------------------------------

    def _write(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frame(opcode, payload, self._key))

    def send_text(self, payload: bytes) -> None:
        self._write(_OP_TEXT, payload)

    def send_binary(self, payload: bytes) -> None:
        self._write(_OP_BINARY, payload)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the transport closes when the server echoes it."""
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        self._closing = True
        self._write(_OP_CLOSE, code.to_bytes(2, "big"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_socket(
    factory: type[RawWebSocket], host: str, port: int, path: str, timeout: float = 10.0, **kwargs
) -> RawWebSocket:
    """Connect ``factory(host, port, path, **kwargs)`` and wait for the 101 answer."""
    loop = asyncio.get_running_loop()

    async def connect() -> RawWebSocket:
        _, protocol = await loop.create_connection(lambda: factory(host, port, path, **kwargs), host, port)
        try:
            await protocol.opened
        except BaseException:
            protocol.abort()
            raise
        return protocol

    return await asyncio.wait_for(connect(), timeout)
