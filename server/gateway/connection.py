"""One client socket: its identity, subscriptions and bounded outbound queue.

Frames for a socket are queued and flushed by the node on a later event-loop turn
(:class:`~server.gateway.flusher.Flusher`): all frames queued for one socket since its last flush
leave in a single WebSocket message, joined as the socket's encoding allows
(:mod:`server.gateway.codec`: newline-separated JSON text, or length-delimited Protobuf). Under uvicorn with the gateway's protocol the frame is written straight
to the socket (:mod:`server.gateway.frame_writer`; a broadcast's frame is built
once for all its sockets); elsewhere a writer task sends it through ASGI. A client
that does not read falls behind; once more than ``WS_OUTBOUND_MAX_BYTES`` wait
unsent it is disconnected as a slow consumer (3008), so one stuck phone cannot make
the server's memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from server.gateway import protocol
from server.gateway.codec import Codec
from server.gateway.frame_writer import FrameWriter
from server.gateway.json_codec import JSON
from server.gateway.ports import Principal

if TYPE_CHECKING:
    from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")

Send = Callable[[Any], Awaitable[None]]  # an ASGI ``send`` (each server types its messages its own way)


ERROR_WINDOW = 10.0  # seconds over which WS_MAX_ERRORS failed commands are counted


class Subscription:
    """A connection's subscription to one channel. While ``recovering``, live
    publications (stored and ephemeral) are buffered until the subscribe reply
    has been sent; the buffer counts towards the connection's outbound limit.
    A live subscription holds no buffer (``go_live``)."""

    __slots__ = ("buffer", "buffered_bytes", "join_leave", "recovering")

    def __init__(self, join_leave: bool, recovering: bool = True) -> None:
        self.join_leave = join_leave
        self.recovering = recovering
        self.buffer: list[tuple[int, bytes]] = [] if recovering else _NO_BUFFER
        self.buffered_bytes = 0

    def go_live(self) -> list[tuple[int, bytes]]:
        """Stop buffering; what was buffered, in order."""
        buffered, self.buffer = self.buffer, _NO_BUFFER
        self.recovering = False
        self.buffered_bytes = 0
        return buffered


_NO_BUFFER: list[tuple[int, bytes]] = []  # never appended to: only a recovering subscription buffers

PERSONAL = Subscription(join_leave=False, recovering=False)
"""Every connection's subscription to its user's personal channel: live from the start,
never buffering, no join/leave, so one instance serves them all."""


class Connection:
    """A WebSocket client speaking the Centrifuge protocol."""

    __slots__ = (
        "_flush_pending",
        "_frames",
        "_send",
        "_started",
        "_wakeup",
        "_writer",
        "client_id",
        "close_code",
        "closed",
        "codec",
        "connected",
        "deadline",
        "errors",
        "errors_since",
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

    def __init__(self, node: Node, send: Send, frames: FrameWriter | None = None, codec: Codec = JSON) -> None:
        self.node = node
        self.codec = codec
        self._send = send
        self._frames = frames  # writes frames synchronously; None: send through ASGI
        self.client_id = uuid.uuid4().hex
        self.principal: Principal | None = None
        self.full_name = ""
        self.subs: dict[str, Subscription] = {}
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        self._started = False  # frames are flushed once the connect reply went out
        self._flush_pending = False
        self._writer: asyncio.Task[None] | None = None  # ASGI only
        self._wakeup: asyncio.Future[None] | None = None  # set while the ASGI writer waits
        self.closed = False
        self.connected = False
        self.close_code = 0
        self.expires_at = 0.0
        now = time.monotonic()
        self.deadline = now + node.settings.ws_connect_timeout  # to send connect
        self.next_ping = 0.0
        self.pong_due = 0.0
        self.errors = 0  # failed commands since errors_since
        self.errors_since = now

    def count_failure(self) -> None:
        """A command failed by the client's doing; more than ``WS_MAX_ERRORS`` per
        ``ERROR_WINDOW`` seconds closes the socket (3509): each costs the server work."""
        now = time.monotonic()
        if now - self.errors_since > ERROR_WINDOW:
            self.errors, self.errors_since = 0, now
        self.errors += 1
        if self.errors > self.node.settings.ws_max_errors:
            self.abort(protocol.DISCONNECT_TOO_MANY_ERRORS, "too many errors")

    # -- writing -----------------------------------------------------------------------------

    def start_writer(self) -> None:
        """Start flushing queued frames (after the connect reply was sent)."""
        self._started = True
        if self._frames is None:
            self._writer = asyncio.create_task(self._write_loop())
        elif self.queue:
            self._request_flush()

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
        if self._started and not self._flush_pending:
            self._request_flush()

    def _request_flush(self) -> None:
        self._flush_pending = True
        self.node.flusher.schedule(self)

    def flush(self) -> int:
        """Send what is queued as one frame (called by the flusher); the bytes written (0: none,
        or handed to the ASGI writer task, which counts its own)."""
        self._flush_pending = False
        if self.closed or not self.queue:
            return 0
        if self._frames is None:  # ASGI: the writer task sends it
            wakeup = self._wakeup
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)
            return 0
        frames, self.queue = self.queue, []
        codec = self.codec
        # A frame queued alone (a broadcast's, usually) is framed once for all its sockets.
        frame = (
            self.node.flusher.wire_frame(frames[0], codec) if len(frames) == 1 else codec.ws_frame(codec.batch(frames))
        )
        unsent = self._frames.write_frame(frame)
        if unsent < 0:  # the socket is closing; the reader sees the disconnect
            self.closed = True
            self.queue.clear()
            self.queued_bytes = 0
            return 0
        # The transport keeps what the peer has not taken yet: that is this client's backlog.
        self.queued_bytes = unsent
        if unsent > self.node.settings.ws_outbound_max_bytes:
            self.abort(protocol.DISCONNECT_SLOW, "slow consumer")
        return len(frame)

    async def send_now(self, frame: bytes) -> None:
        """Write a frame directly, ahead of the queue (the connect reply, a goodbye)."""
        tally = self.node.tally
        if self._frames is not None:
            wire = self.codec.ws_frame(frame)
            if self._frames.write_frame(wire) < 0:
                raise ConnectionError("the socket is closed")
            tally.frames_written += 1
            tally.bytes_written += len(wire)
            return
        await self._send(self.codec.asgi_message(frame))
        tally.frames_written += 1
        tally.bytes_written += len(frame)

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
                payload = self.codec.batch(frames)
                await self._send(self.codec.asgi_message(payload))
                tally = self.node.tally
                tally.frames_written += 1
                tally.bytes_written += len(payload)
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
            # Bounded like the outbound queue: a subscribe that takes longer than the
            # client can be buffered for ends as a slow consumer (it reconnects and recovers).
            sub.buffered_bytes += len(frame)
            if sub.buffered_bytes > self.node.settings.ws_outbound_max_bytes:
                self.abort(protocol.DISCONNECT_SLOW, "slow consumer")
                return
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
        self.node.tally.disconnect(code)
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


class ConnectionIndex:
    """This node's connections by a key (a user, a session). A key with one connection maps
    to it directly, and to a set only while it has more: most users hold one socket, and a
    set of one would cost each of them some 200 bytes."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[uuid.UUID, Connection | set[Connection]] = {}

    def add(self, key: uuid.UUID, connection: Connection) -> bool:
        """Index ``connection`` under ``key``; True when ``key`` had no connection before."""
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = connection
            return True
        if isinstance(group, set):
            group.add(connection)
        elif group is not connection:
            self._groups[key] = {group, connection}
        return False

    def discard(self, key: uuid.UUID, connection: Connection) -> bool:
        """Remove ``connection`` from ``key``; True when that left ``key`` without connections."""
        group = self._groups.get(key)
        if group is connection:
            del self._groups[key]
            return True
        if isinstance(group, set) and connection in group:
            group.discard(connection)
            if len(group) == 1:
                self._groups[key] = group.pop()
        return False

    def get(self, key: uuid.UUID) -> tuple[Connection, ...]:
        """The connections of ``key`` now (a snapshot: safe to act on while they leave)."""
        group = self._groups.get(key)
        if group is None:
            return ()
        return tuple(group) if isinstance(group, set) else (group,)

    def __contains__(self, key: object) -> bool:
        return key in self._groups

    def __iter__(self) -> Iterator[uuid.UUID]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)
