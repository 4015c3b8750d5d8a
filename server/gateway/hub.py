"""One stream channel (a lounge or a thread) on this node: its local subscribers and
delivery position, after centrifuge's hub.

Ordering (guarantee 2). Stored publications carry the channel offset assigned
in PostgreSQL. Two writers on different nodes may publish to Redis out of
order, so each hub delivers strictly by offset: a publication arriving early
waits in ``pending`` while the missing ones either arrive or are read from the
log (they are committed: a later offset is only taken after the earlier
writer's commit). Duplicates (offset ≤ delivered) are dropped. After a Redis
outage the node resubscribes and reads from the log what it missed
(:func:`catch_up`).

Fan-out. A publication is encoded once per hub and encoding in use among its
subscribers (JSON, Protobuf: :mod:`server.gateway.codec`) and queued on every
subscriber; the node's :class:`~server.gateway.flusher.Flusher` writes the sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from server.streams import history
from server.streams.broker import WIRE_JOIN, WIRE_PUBLICATION, WIRE_REWRITE, Wire

if TYPE_CHECKING:
    from server.gateway.codec import Codec, PushEncoder
    from server.gateway.connection import Connection
    from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")

RING_SIZE = 256  # recent publications kept per hub for instant recovery
GAP_GRACE = 0.05  # seconds to wait for an out-of-order publication before reading the log


class Hub:
    """A channel's subscribers on ``node`` and what has been delivered to them.
    ``ready`` once positioned at the channel's top."""

    __slots__ = (
        "_ready_waiter",
        "encoders",
        "epoch",
        "filling",
        "name",
        "node",
        "offset",
        "pending",
        "ready",
        "rewrites",
        "rewritten",
        "ring",
        "subscribers",
        "versions",
    )

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.encoders: dict[Codec, PushEncoder] = {}
        self.subscribers: set[Connection] = set()
        self.offset = 0
        self.epoch = ""
        self.ready = False
        self._ready_waiter: asyncio.Future[None] | None = None  # only while someone waits
        self.pending: dict[int, bytes] = {}
        self.filling = False
        self.ring: deque[tuple[int, bytes]] | None = None  # created at the first publication
        self.rewritten: dict[int, bytes] = {}  # new versions of offsets not delivered yet
        self.rewrites = 0  # the channel's rewrite count this hub has seen (channels.rewrites)
        self.versions: dict[int, int] = {}  # offset -> the rewrite count of its version held here

    @property
    def current(self) -> bool:
        """Still the node's hub for its channel (not closed, nor replaced)."""
        return self.node.hubs.get(self.name) is self

    def push_frames(self, codec: Codec) -> PushEncoder:
        """This channel's push encoder for ``codec``."""
        encoder = self.encoders.get(codec)
        if encoder is None:
            encoder = self.encoders[codec] = codec.push_frames(self.name)
        return encoder

    # -- positioning -------------------------------------------------------------------------

    async def position(self) -> None:
        """Start at the channel's top in the log."""
        position = await history.stream_position(self.name)
        if position is not None:
            self.offset, self.epoch, self.rewrites = position
        # Anything that arrived while positioning and is already covered is dropped.
        for offset in [o for o in self.pending if o <= self.offset]:
            del self.pending[offset]
        for offset in [o for o in self.rewritten if o <= self.offset]:
            del self.rewritten[offset]

    def set_ready(self) -> None:
        self.ready = True
        if self._ready_waiter is not None and not self._ready_waiter.done():
            self._ready_waiter.set_result(None)
        self._ready_waiter = None

    def abandon(self) -> None:
        """Positioning failed and the hub is dropped: whoever waits gets the error."""
        if self._ready_waiter is not None and not self._ready_waiter.done():
            self._ready_waiter.set_exception(ConnectionError(f"channel {self.name} could not be opened"))
        self._ready_waiter = None

    async def wait_ready(self) -> None:
        if self.ready:
            return
        if self._ready_waiter is None:
            self._ready_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._ready_waiter)

    # -- the ring of recent publications -----------------------------------------------------

    def remember(self, offset: int, data: bytes) -> None:
        if self.ring is None:
            self.ring = deque(maxlen=RING_SIZE)
        self.ring.append((offset, data))

    def rewrite(self, offset: int, data: bytes, count: int) -> None:
        """A stored publication was rewritten (an edit, a deletion, an erasure), bringing the
        channel's rewrite count to ``count``: the ring holds the new version from now on. One
        not delivered yet (its original may still be on its way, or in ``pending``) is replaced
        when it is delivered. Writers publish out of order, so an older version of an entry
        rewritten again is ignored; a count that skips one means a rewrite never arrived, and
        the ring, which may hold what it replaced, is dropped."""
        if count <= self.versions.get(offset, 0):
            return
        if count > self.rewrites + 1:
            self.forget_ring()
        self.rewrites = max(self.rewrites, count)
        if len(self.versions) >= 2 * RING_SIZE:  # only offsets still held, or still to deliver, matter
            oldest = self.ring[0][0] if self.ring else self.offset + 1
            self.versions = {o: c for o, c in self.versions.items() if o >= oldest or o in self.rewritten}
        self.versions[offset] = count
        if offset > self.offset or not self.ready:
            self.rewritten[offset] = data
            return
        if self.ring:
            for index, (held, _) in enumerate(self.ring):
                if held == offset:
                    self.ring[index] = (offset, data)
                    break

    def forget_ring(self) -> None:
        """Rewrites may have been missed (pub/sub was down, or a writer's broadcast was lost):
        recovery reads Redis or the log until the ring refills."""
        self.ring = None

    def ring_after(self, after: int) -> list[tuple[int, bytes]] | None:
        """Publications after ``after`` from memory, if the ring still holds them all."""
        if after >= self.offset:
            return []
        if not self.ring or self.ring[0][0] > after + 1:
            return None
        return [entry for entry in self.ring if entry[0] > after]

    # -- delivery ----------------------------------------------------------------------------

    def on_wire(self, wire: Wire) -> None:
        """A wire message of this channel, from Redis or from this process."""
        if wire.kind == WIRE_REWRITE:
            self.rewrite(wire.offset, bytes(wire.data), wire.rewrites)
            return
        if wire.kind != WIRE_PUBLICATION:
            info = bytes(wire.data)
            join = wire.kind == WIRE_JOIN
            frames: dict[Codec, bytes] = {}
            for connection in self.subscribers:
                sub = connection.subs.get(self.name)
                if sub is not None and sub.join_leave and not sub.recovering:
                    frame = frames.get(connection.codec)
                    if frame is None:
                        encoder = self.push_frames(connection.codec)
                        frame = frames[connection.codec] = encoder.join(info) if join else encoder.leave(info)
                    connection.enqueue(frame)
            return
        if wire.offset == 0:
            self._broadcast(0, bytes(wire.data))
            return
        if wire.offset <= self.offset and self.ready:
            return  # duplicate
        self.pending.setdefault(wire.offset, bytes(wire.data))
        if self.ready:
            self.advance()

    def advance(self) -> None:
        """Deliver every pending publication that is next in line; start a gap fill
        if something is still waiting."""
        pending = self.pending
        while self.offset + 1 in pending:
            self.offset += 1
            self._deliver(self.offset, pending.pop(self.offset))
        if pending and not self.filling:
            self.filling = True
            self.node.spawn(self._fill_gap())

    def _deliver(self, offset: int, data: bytes) -> None:
        if self.rewritten:
            data = self.rewritten.pop(offset, data)
        self.remember(offset, data)
        self._broadcast(offset, data)

    def _broadcast(self, offset: int, data: bytes) -> None:
        """Push a publication to every subscriber, encoded once per encoding among them."""
        frames: dict[Codec, bytes] = {}
        name = self.name
        subscribers = self.subscribers
        for connection in subscribers:
            codec = connection.codec
            frame = frames.get(codec)
            if frame is None:
                frame = frames[codec] = self.push_frames(codec).publication(data, offset)
            connection.push(name, offset, frame)
        tally = self.node.tally
        tally.deliveries += len(subscribers)
        if self.node.flusher.busy:
            tally.fanned_out()

    async def _fill_gap(self) -> None:
        try:
            await asyncio.sleep(GAP_GRACE)
            while self.pending and self.offset + 1 not in self.pending and self.current:
                missing_until = min(self.pending) - 1
                self.node.tally.gap_fill("gap")
                entries = await history.from_log(self.name, self.offset, missing_until - self.offset)
                if not entries:
                    log.error("gap not in the log", extra={"channel": self.name, "after": self.offset})
                    break
                self.merge(entries)
                pending = self.pending
                while self.offset + 1 in pending:
                    self.offset += 1
                    self._deliver(self.offset, pending.pop(self.offset))
        except Exception:
            log.exception("gap fill failed", extra={"channel": self.name})
        finally:
            self.filling = False
        if self.pending and self.current:
            self.advance()

    def merge(self, entries: list[tuple[int, bytes]]) -> None:
        """Add publications read from the log to ``pending``, except those Redis
        delivered while the log was being read (they would never leave ``pending``)."""
        for offset, data in entries:
            if offset > self.offset:
                self.pending.setdefault(offset, data)


async def catch_up(hubs: list[Hub]) -> None:
    """Read from the log whatever was committed beyond what these hubs delivered
    (after a Redis outage, or a publisher that died between commit and publish), and
    drop the ring of a hub that missed a rewrite (its broadcast was lost)."""
    hubs = [hub for hub in hubs if hub.ready]
    if not hubs:
        return
    tops = await history.stream_tops([hub.name for hub in hubs])
    for hub in hubs:
        top, rewrites = tops.get(hub.name, (0, 0))
        if not hub.current:
            continue
        if rewrites > hub.rewrites:
            hub.forget_ring()
            hub.rewrites = rewrites
        if top <= hub.offset:
            continue
        hub.node.tally.gap_fill("catch_up")
        hub.merge(await history.from_log(hub.name, hub.offset, top - hub.offset))
        hub.advance()
