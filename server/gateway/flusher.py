"""When queued frames leave: the node's flush scheduler.

A socket with frames queued asks for a flush; the flusher runs them on later
event-loop turns, at most ``FLUSH_BATCH`` sockets per turn, so a broadcast to a
large room never holds the loop for one long iteration (the publish path's
database and Redis replies interleave with it) and frames that queue meanwhile
leave in one WebSocket frame. A frame queued alone (the common case of a
broadcast) is framed once for all the sockets it goes to (:meth:`Flusher.wire_frame`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.gateway.codec import Codec
    from server.gateway.connection import Connection
    from server.gateway.metrics import Tally

FLUSH_BATCH = 16  # sockets flushed per event-loop iteration
WIRE_FRAMES_KEPT = 64  # broadcast frames remembered while sockets wait for a flush


class Flusher:
    """The sockets waiting for a flush, and the broadcast frames built for them."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally  # frames and bytes written are added up per batch of sockets
        self._to_flush: deque[Connection] = deque()
        self._flushing = False
        # id(payload) -> (payload, frame) until the sockets waiting for a flush are done
        self._wire_frames: dict[int, tuple[bytes, bytes]] = {}

    def schedule(self, connection: Connection) -> None:
        """Flush ``connection``'s queued frames soon, at most ``FLUSH_BATCH`` sockets per loop iteration."""
        self._to_flush.append(connection)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    @property
    def busy(self) -> bool:
        """Sockets wait for a flush (a flush round is under way)."""
        return self._flushing

    def _flush(self) -> None:
        to_flush = self._to_flush
        frames = written = 0
        try:
            for _ in range(min(FLUSH_BATCH, len(to_flush))):
                sent = to_flush.popleft().flush()
                if sent:
                    frames += 1
                    written += sent
        finally:
            tally = self._tally
            tally.frames_written += frames
            tally.bytes_written += written
            if to_flush:
                asyncio.get_running_loop().call_soon(self._flush)
            else:
                self._flushing = False
                self._wire_frames.clear()
                tally.round_ended()

    def wire_frame(self, payload: bytes, codec: Codec) -> bytes:
        """``payload`` (in ``codec``'s encoding) as a WebSocket frame, built once for every socket
        it goes to in this round of flushes."""
        cached = self._wire_frames.get(id(payload))
        if cached is not None and cached[0] is payload:
            return cached[1]
        frame = codec.ws_frame(payload)
        if len(self._wire_frames) >= WIRE_FRAMES_KEPT:  # flushes that never run dry keep no history
            self._wire_frames.clear()
        self._wire_frames[id(payload)] = (payload, frame)  # holding payload keeps its id unique
        return frame
