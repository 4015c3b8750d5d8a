"""A tiny raw client of the gateway on the ``websockets`` library, for frames the
official SDKs would never send (malformed lines, unknown methods, oversized
frames, commands before ``connect``) and for peers that misbehave on purpose
(never answer pings, stop reading).

Frames are Centrifuge protocol v2 JSON: one or more JSON objects separated by
newlines. Everything received is split into messages and kept in ``inbox``
until a test takes it; replies are matched by command id.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Message = dict[str, Any]


class RawClient:
    """One WebSocket to the gateway, driven command by command."""

    def __init__(self, ws: ClientConnection, *, answer_pings: bool) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
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
        ws = await connect(
            url,
            sock=sock,
            compression=None,  # byte counts on the wire are what the test reasons about
            proxy=None,
            ping_interval=None,  # no WebSocket-level pings: only the protocol's own
            max_size=None,
            max_queue=max_queue,
            open_timeout=10,
            close_timeout=2,
        )
        return cls(ws, answer_pings=answer_pings)

    # -- sending -------------------------------------------------------------------------

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a text frame exactly as given."""
        await self.ws.send(frame if isinstance(frame, str) else frame.decode())

    async def send(self, *commands: Message) -> list[int]:
        """Send commands in one frame (newline-separated); an ``id`` is added to each
        command that has none. Returns the ids."""
        ids = []
        for command in commands:
            command.setdefault("id", self.new_id())
            ids.append(command["id"])
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
        if isinstance(frame, bytes):
            frame = frame.decode()
        for line in frame.split("\n"):
            if not line.strip():
                continue
            message = json.loads(line)
            if message == {}:
                self.pings += 1
                if self.answer_pings:
                    await self.send_raw("{}")
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
