"""One client socket: its identity, subscriptions and bounded outbound queue.

Frames for a socket are queued and written by one writer task that joins all
queued frames into a single WebSocket text frame (newline-separated, as the
protocol allows). The node wakes writers in batches (``Node.wake_writer``), so
frames queued for one socket between two wake-ups leave together. A client
that does not read falls behind; once ``WS_OUTBOUND_MAX_BYTES`` are queued it
is disconnected as a slow consumer (3008), so one stuck phone cannot make the
server's memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

from litestar.types import Send

from server.accounts.services import Principal
from server.realtime import protocol

if TYPE_CHECKING:
    from server.realtime.node import Node

log = logging.getLogger("lounges.realtime")


class Subscription:
    """A connection's subscription to one channel. While ``recovering``, live
    publications (stored and ephemeral) are buffered until the subscribe reply
    has been sent."""

    __slots__ = ("buffer", "join_leave", "recovering")

    def __init__(self, join_leave: bool) -> None:
        self.join_leave = join_leave
        self.recovering = True
        self.buffer: list[tuple[int, bytes]] = []


class Connection:
    """A WebSocket client speaking the Centrifuge protocol."""

    __slots__ = (
        "_send",
        "_wake_pending",
        "_wakeup",
        "_writer",
        "client_id",
        "close_code",
        "closed",
        "connected",
        "deadline",
        "expires_at",
        "full_name",
        "next_ping",
        "node",
        "pong_due",
        "principal",
        "queue",
        "queued_bytes",
        "subs",
    )

    def __init__(self, node: Node, send: Send) -> None:
        self.node = node
        self._send = send
        self.client_id = uuid.uuid4().hex
        self.principal: Principal | None = None
        self.full_name = ""
        self.subs: dict[str, Subscription] = {}
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None  # set while the writer waits
        self._wake_pending = False
        self.closed = False
        self.connected = False
        self.close_code = 0
        self.expires_at = 0.0
        now = time.monotonic()
        self.deadline = now + node.settings.ws_connect_timeout  # to send connect
        self.next_ping = 0.0
        self.pong_due = 0.0

    # -- writing -----------------------------------------------------------------------------

    def start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())

    def enqueue(self, frame: bytes) -> None:
        """Queue a frame for this client; a client too far behind is disconnected."""
        if self.closed:
            return
        # What already waits unsent tells a slow consumer. One frame larger than the
        # limit on its own (a subscribe reply carrying a recovery, a long history page)
        # still goes to a client that keeps up: memory stays under the limit + one frame.
        if self.queued_bytes > self.node.settings.ws_outbound_max_bytes:
            self.abort(protocol.DISCONNECT_SLOW, "slow consumer")
            return
        self.queued_bytes += len(frame)
        self.queue.append(frame)
        if self._wakeup is not None and not self._wake_pending:
            self._wake_pending = True
            self.node.wake_writer(self)

    def wake(self) -> None:
        """Let the writer send what is queued (called by the node, batched per loop turn)."""
        self._wake_pending = False
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def send_now(self, frame: bytes) -> None:
        """Write a frame directly (before the writer runs, e.g. the connect reply)."""
        await self._send({"type": "websocket.send", "text": frame.decode()})

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.closed:
                if not self.queue:
                    self._wakeup = loop.create_future()
                    try:
                        await self._wakeup
                    finally:
                        self._wakeup = None
                    continue
                frames, self.queue = self.queue, []
                self.queued_bytes = 0
                await self._send({"type": "websocket.send", "text": b"\n".join(frames).decode()})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket is gone; the reader sees the disconnect
            log.debug("write failed", extra={"client": self.client_id, "error": repr(exc)})
            self.closed = True

    def push(self, channel: str, offset: int, frame: bytes) -> None:
        """Deliver a channel frame, or buffer it while the subscription recovers."""
        sub = self.subs.get(channel)
        if sub is None:
            return
        if sub.recovering:
            sub.buffer.append((offset, frame))
            return
        self.enqueue(frame)

    # -- closing -----------------------------------------------------------------------------

    def abort(self, code: int, reason: str) -> None:
        """Close the socket with a disconnect code (reconnect advice is in the code)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.queue.clear()
        self.queued_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self.node.spawn(self._close(code, reason))
        # Gone for everyone else now (presence, leave pushes, deliveries), even if the peer
        # never reads again and the close frame waits behind a full socket; the endpoint's
        # own remove() when the socket finally ends finds nothing left to do.
        self.node.spawn(self.node.remove(self))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as exc:  # already closed by the peer
            log.debug("close failed", extra={"client": self.client_id, "error": repr(exc)})

    async def stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
