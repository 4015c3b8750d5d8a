"""A web process's share of the realtime system: its sockets, its channel hubs,
and one Redis pub/sub connection that links it to every other node.

Ordering (guarantee 2). Stored publications carry the channel offset assigned
in PostgreSQL. Two writers on different nodes may publish to Redis out of
order, so each hub delivers strictly by offset: a publication arriving early
waits in ``pending`` while the missing ones either arrive or are read from the
log (they are committed: a later offset is only taken after the earlier
writer's commit). Duplicates (offset ≤ delivered) are dropped. After a Redis
outage the node resubscribes and reads from the log what it missed.

Personal channels (``user#<id>``) carry ephemeral pushes only: they have no hub;
the node subscribes to a user's channel on Redis while it holds a socket of
that user and hands each push to ``by_user``.

Fan-out. A publication is encoded once per hub and queued on every subscriber;
the node flushes the sockets that have frames queued, at most ``FLUSH_BATCH``
per event-loop turn, so a broadcast to a large room never holds the
loop for one long iteration (the publish path's database and Redis replies
interleave with it) and frames that queue meanwhile leave in one WebSocket frame.
A frame queued alone (the common case of a broadcast) is framed once for all the
sockets it goes to (:meth:`Node.wire_frame`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any

import msgspec
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from server.domain.accounts.tables import User, UserSession
from server.domain.chat.messages import channel_access
from server.foundation.control import control_channel, decode_control
from server.foundation.errors import AppError
from server.foundation.state import AppState
from server.gateway import protocol
from server.gateway.connection import Connection
from server.gateway.frame_writer import text_frame
from server.gateway.presence import Presence
from server.streams import history
from server.streams.broker import (
    WIRE_JOIN,
    WIRE_LEAVE,
    WIRE_PUBLICATION,
    WIRE_REWRITE,
    Wire,
    encode_wire,
    pubsub_channel,
)

log = logging.getLogger("lounges.realtime")

RING_SIZE = 256  # recent publications kept per hub for instant recovery
GAP_GRACE = 0.05  # seconds to wait for an out-of-order publication before reading the log
FLUSH_BATCH = 16  # sockets flushed per event-loop iteration
REDIS_TIMEOUT = 1.0  # seconds a Redis call on a socket's path may take before the node carries on without it
WIRE_FRAMES_KEPT = 64  # broadcast frames remembered while sockets wait for a flush
PERSONAL_PREFIX = "user#"
_wire_decoder = msgspec.json.Decoder(Wire)


class Hub:
    """One stream channel (lounge or thread) on this node: its local subscribers
    and delivery position. ``ready`` once positioned at the channel's top."""

    __slots__ = (
        "_ready_waiter",
        "epoch",
        "filling",
        "frames",
        "name",
        "offset",
        "pending",
        "ready",
        "rewrites",
        "rewritten",
        "ring",
        "subscribers",
        "versions",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames = protocol.PushFrames(name)
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


class Node:
    """Sockets and channel hubs of this process, linked to the others through Redis."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings
        self.node_id = uuid.uuid4().hex[:12]
        self.prefix = state.settings.redis_prefix
        self.connections: set[Connection] = set()
        self.hubs: dict[str, Hub] = {}
        self.by_user: dict[uuid.UUID, set[Connection]] = {}
        self.by_session: dict[uuid.UUID, set[Connection]] = {}
        self.presence = Presence(state)
        self.draining = False
        self._pubsub: PubSub | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._control = control_channel(self.prefix)
        self._subscribed_ok = asyncio.Event()
        self._to_flush: deque[Connection] = deque()
        self._flushing = False
        # id(payload) -> (payload, frame) until the sockets waiting for a flush are done
        self._wire_frames: dict[int, tuple[bytes, bytes]] = {}
        self._linked = False  # the pub/sub link is subscribed to every hub and user (False: it is reconnecting)
        state.local_delivery = self.deliver_local  # this process's broadcasts reach its own sockets first

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="realtime-pubsub")
        self._ticker = asyncio.create_task(self._tick_forever(), name="realtime-ticker")
        try:
            await asyncio.wait_for(self._subscribed_ok.wait(), timeout=5)
        except TimeoutError:
            log.warning("realtime node started without Redis; it keeps retrying")

    async def stop(self) -> None:
        if self.state.local_delivery == self.deliver_local:
            self.state.local_delivery = None
        for connection in list(self.connections):
            connection.abort(protocol.DISCONNECT_SHUTDOWN, "shutdown")
        for task in (self._reader, self._ticker, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._reader, self._ticker, *self._tasks) if t), return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()

    async def drain(self) -> None:
        """Stop taking sockets and ask every client to reconnect elsewhere, spread
        over ``DRAIN_SECONDS`` so the other nodes are not hit all at once."""
        self.draining = True
        connections = list(self.connections)
        if not connections:
            return
        pause = self.settings.drain_seconds / len(connections)
        push = protocol.disconnect_push(protocol.DISCONNECT_SHUTDOWN, "shutdown")
        for connection in connections:
            if connection.connected and not connection.closed:
                with contextlib.suppress(Exception):  # a peer already gone needs no goodbye
                    await asyncio.wait_for(connection.send_now(push), timeout=1.0)
            connection.abort(protocol.DISCONNECT_SHUTDOWN, "shutdown")
            if pause:
                await asyncio.sleep(pause)

    async def bounded(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Await ``coroutine`` for at most ``timeout`` seconds, then raise ``TimeoutError``
        without waiting for it to wind down: it is cancelled and left to finish on its own.
        (A query cancelled on a stalled PostgreSQL holds its pooled connection, and whoever
        waits for it, until the server answers or ``DB_COMMAND_TIMEOUT`` passes.)"""
        task = asyncio.ensure_future(coroutine)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except BaseException:
            if not task.done():
                task.cancel()
                self._tasks.add(task)
                task.add_done_callback(_discard_abandoned(self._tasks))
            raise

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a background coroutine owned by the node (kept referenced until done)."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections -------------------------------------------------------------------------

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)

    def schedule_flush(self, connection: Connection) -> None:
        """Flush ``connection``'s queued frames soon, at most ``FLUSH_BATCH`` sockets per loop iteration."""
        self._to_flush.append(connection)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        to_flush = self._to_flush
        try:
            for _ in range(min(FLUSH_BATCH, len(to_flush))):
                to_flush.popleft().flush()
        finally:
            if to_flush:
                asyncio.get_running_loop().call_soon(self._flush)
            else:
                self._flushing = False
                self._wire_frames.clear()

    def wire_frame(self, payload: bytes) -> bytes:
        """``payload`` as a WebSocket frame, built once for every socket it goes to in this round of flushes."""
        cached = self._wire_frames.get(id(payload))
        if cached is not None and cached[0] is payload:
            return cached[1]
        frame = text_frame(payload)
        if len(self._wire_frames) >= WIRE_FRAMES_KEPT:  # flushes that never run dry keep no history
            self._wire_frames.clear()
        self._wire_frames[id(payload)] = (payload, frame)  # holding payload keeps its id unique
        return frame

    async def join_personal(self, connection: Connection) -> None:
        """Index an authenticated socket by user and session; the user's first socket
        on this node subscribes the node to their personal channel."""
        principal = connection.principal
        assert principal is not None
        self.by_session.setdefault(principal.session_id, set()).add(connection)
        group = self.by_user.get(principal.user_id)
        if group is not None:
            group.add(connection)
            return
        self.by_user[principal.user_id] = {connection}
        await self._listen(pubsub_channel(self.prefix, personal_channel(principal.user_id)))

    def move_session(self, connection: Connection, old_session: uuid.UUID) -> None:
        """A refreshed token may belong to another session of the same user."""
        assert connection.principal is not None
        self._discard(self.by_session, old_session, connection)
        self.by_session.setdefault(connection.principal.session_id, set()).add(connection)

    async def _leave_personal(self, connection: Connection) -> None:
        principal = connection.principal
        if principal is None:
            return
        self._discard(self.by_session, principal.session_id, connection)
        if self._discard(self.by_user, principal.user_id, connection) and self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(pubsub_channel(self.prefix, personal_channel(principal.user_id)))
            except RedisError as exc:
                log.warning("unsubscribe from Redis failed", extra={"user": str(principal.user_id), "error": repr(exc)})

    @staticmethod
    def _discard(index: dict[uuid.UUID, set[Connection]], key: uuid.UUID, connection: Connection) -> bool:
        """Remove ``connection`` from ``index[key]``; True when that emptied the group."""
        group = index.get(key)
        if group is None or connection not in group:
            return False
        group.discard(connection)
        if group:
            return False
        del index[key]
        return True

    async def remove(self, connection: Connection) -> None:
        """The socket is gone: leave every channel and forget it."""
        connection.closed = True
        if connection not in self.connections:
            return  # already removed (an abort and the endpoint's own end both land here)
        self.connections.discard(connection)
        await self._leave_personal(connection)
        for channel in list(connection.subs):
            await self.unsubscribe(connection, channel)
        await connection.stop_writer()

    # -- hubs --------------------------------------------------------------------------------

    async def hub(self, name: str) -> Hub:
        """This node's hub for ``name``, subscribing to it on Redis first if needed."""
        hub = self.hubs.get(name)
        if hub is None:
            hub = Hub(name)
            self.hubs[name] = hub
            try:
                await self._listen(pubsub_channel(self.prefix, name))
                await self._position(hub)
            except BaseException:
                self.hubs.pop(name, None)
                hub.abandon()
                raise
            hub.set_ready()
            self._advance(hub)
        else:
            await hub.wait_ready()
        return hub

    async def _listen(self, redis_channel: str) -> None:
        """Subscribe the pub/sub link to ``redis_channel``. Never fails: with Redis away the
        reader, reconnecting, subscribes every hub and user and catches up from the log."""
        pubsub = self._pubsub
        if pubsub is None or not self._linked:
            return  # the reader subscribes it when it (re)connects
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await pubsub.subscribe(redis_channel)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("pub/sub subscribe failed; relinking", extra={"channel": redis_channel, "error": repr(exc)})
            self._relink()

    def _relink(self) -> None:
        """Drop the pub/sub link and start a new one, which subscribes everything again and catches up."""
        self._linked = False
        if self._reader is not None:
            self._reader.cancel()
        self._reader = asyncio.create_task(self._read_forever(), name="realtime-pubsub")

    def deliver_local(self, channel: str, payload: bytes) -> None:
        """A wire message published by this process, handed to its own sockets at once: two
        clients of one node talk even while Redis is away. The copy that comes back through
        Redis is dropped as a duplicate (by offset); ephemeral ones are handed here only when
        Redis did not take them."""
        hub = self.hubs.get(channel)
        if hub is not None:
            self._on_wire(hub, _wire_decoder.decode(payload))
        elif channel.startswith(PERSONAL_PREFIX):
            self._on_personal(channel, _wire_decoder.decode(payload))

    async def _position(self, hub: Hub) -> None:
        position = await history.stream_position(hub.name)
        if position is not None:
            hub.offset, hub.epoch, hub.rewrites = position
        # Anything that arrived while positioning and is already covered is dropped.
        for offset in [o for o in hub.pending if o <= hub.offset]:
            del hub.pending[offset]
        for offset in [o for o in hub.rewritten if o <= hub.offset]:
            del hub.rewritten[offset]

    async def _close_hub(self, hub: Hub) -> None:
        self.hubs.pop(hub.name, None)
        if self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(pubsub_channel(self.prefix, hub.name))
            except RedisError as exc:
                log.warning("unsubscribe from Redis failed", extra={"channel": hub.name, "error": repr(exc)})

    def release_if_idle(self, hub: Hub) -> None:
        """Close ``hub`` if nobody subscribes to it any more (a subscribe failed after opening it)."""
        if not hub.subscribers and self.hubs.get(hub.name) is hub:
            self.spawn(self._close_if_idle(hub))

    async def _close_if_idle(self, hub: Hub) -> None:
        if not hub.subscribers and self.hubs.get(hub.name) is hub:
            await self._close_hub(hub)

    async def unsubscribe(self, connection: Connection, channel: str) -> None:
        sub = connection.subs.pop(channel, None)
        hub = self.hubs.get(channel)
        if sub is None or hub is None:
            return
        hub.subscribers.discard(connection)
        if connection.principal is not None:
            info = self.presence.client_info(connection)
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    await self.presence.remove(channel, connection.client_id)
            except (RedisError, OSError, TimeoutError) as exc:  # the entry expires within PRESENCE_TTL
                log.warning("presence remove failed", extra={"channel": channel, "error": repr(exc)})
            await self._publish_presence(channel, WIRE_LEAVE, info)
        if not hub.subscribers:
            await self._close_hub(hub)

    async def announce_join(self, connection: Connection, channel: str) -> None:
        """Enter presence and tell the channel. Never fails (the subscription stands): without
        Redis the next presence refresh enters the client."""
        info = self.presence.client_info(connection)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self.presence.add(channel, connection.client_id, info)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("presence add failed", extra={"channel": channel, "error": repr(exc)})
        await self._publish_presence(channel, WIRE_JOIN, info)

    async def _publish_presence(self, channel: str, kind: int, info: bytes) -> None:
        payload = encode_wire(kind, 0, "", info)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self.state.redis.publish(pubsub_channel(self.prefix, channel), payload)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "presence push failed; this node's subscribers only", extra={"channel": channel, "error": repr(exc)}
            )
            self.deliver_local(channel, payload)

    # -- delivery ----------------------------------------------------------------------------

    def _on_wire(self, hub: Hub, wire: Wire) -> None:
        if wire.kind == WIRE_REWRITE:
            hub.rewrite(wire.offset, bytes(wire.data), wire.rewrites)
            return
        if wire.kind != WIRE_PUBLICATION:
            frame = hub.frames.join(wire.data) if wire.kind == WIRE_JOIN else hub.frames.leave(wire.data)
            for connection in hub.subscribers:
                sub = connection.subs.get(hub.name)
                if sub is not None and sub.join_leave and not sub.recovering:
                    connection.enqueue(frame)
            return
        if wire.offset == 0:
            frame = hub.frames.publication(wire.data, 0)
            for connection in hub.subscribers:
                connection.push(hub.name, 0, frame)
            return
        if wire.offset <= hub.offset and hub.ready:
            return  # duplicate
        hub.pending.setdefault(wire.offset, bytes(wire.data))
        if hub.ready:
            self._advance(hub)

    def _on_personal(self, name: str, wire: Wire) -> None:
        try:
            user_id = uuid.UUID(name[len(PERSONAL_PREFIX) :])
        except ValueError:
            return
        connections = self.by_user.get(user_id)
        if not connections or wire.kind != WIRE_PUBLICATION:
            return
        frame = protocol.PushFrames(name).publication(wire.data, 0)
        for connection in connections:
            connection.push(name, 0, frame)

    def _advance(self, hub: Hub) -> None:
        """Deliver every pending publication that is next in line; start a gap fill
        if something is still waiting."""
        pending = hub.pending
        while hub.offset + 1 in pending:
            hub.offset += 1
            self._deliver(hub, hub.offset, pending.pop(hub.offset))
        if pending and not hub.filling:
            hub.filling = True
            self.spawn(self._fill_gap(hub))

    def _deliver(self, hub: Hub, offset: int, data: bytes) -> None:
        if hub.rewritten:
            data = hub.rewritten.pop(offset, data)
        hub.remember(offset, data)
        frame = hub.frames.publication(data, offset)
        name = hub.name
        for connection in hub.subscribers:
            connection.push(name, offset, frame)

    async def _fill_gap(self, hub: Hub) -> None:
        try:
            await asyncio.sleep(GAP_GRACE)
            while hub.pending and hub.offset + 1 not in hub.pending and self.hubs.get(hub.name) is hub:
                missing_until = min(hub.pending) - 1
                entries = await history.from_log(hub.name, hub.offset, missing_until - hub.offset)
                if not entries:
                    log.error("gap not in the log", extra={"channel": hub.name, "after": hub.offset})
                    break
                self._merge(hub, entries)
                pending = hub.pending
                while hub.offset + 1 in pending:
                    hub.offset += 1
                    self._deliver(hub, hub.offset, pending.pop(hub.offset))
        except Exception:
            log.exception("gap fill failed", extra={"channel": hub.name})
        finally:
            hub.filling = False
        if hub.pending and self.hubs.get(hub.name) is hub:
            self._advance(hub)

    async def catch_up(self, hubs: list[Hub]) -> None:
        """Read from the log whatever was committed beyond what these hubs delivered
        (after a Redis outage, or a publisher that died between commit and publish), and
        drop the ring of a hub that missed a rewrite (its broadcast was lost)."""
        hubs = [hub for hub in hubs if hub.ready]
        if not hubs:
            return
        tops = await history.stream_tops([hub.name for hub in hubs])
        for hub in hubs:
            top, rewrites = tops.get(hub.name, (0, 0))
            if self.hubs.get(hub.name) is not hub:
                continue
            if rewrites > hub.rewrites:
                hub.forget_ring()
                hub.rewrites = rewrites
            if top <= hub.offset:
                continue
            self._merge(hub, await history.from_log(hub.name, hub.offset, top - hub.offset))
            self._advance(hub)

    @staticmethod
    def _merge(hub: Hub, entries: list[tuple[int, bytes]]) -> None:
        """Add publications read from the log to ``pending``, except those Redis
        delivered while the log was being read (they would never leave ``pending``)."""
        for offset, data in entries:
            if offset > hub.offset:
                hub.pending.setdefault(offset, data)

    # -- Redis pub/sub -----------------------------------------------------------------------

    async def _read_forever(self) -> None:
        """Keep one pub/sub connection alive; after any outage, resubscribe and catch up."""
        delay = 0.1
        while True:
            pubsub = self.state.redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            try:
                await self._subscribe_all(pubsub)
                self._linked = True
                for hub in self.hubs.values():
                    hub.forget_ring()
                await self.catch_up(list(self.hubs.values()))
                self._subscribed_ok.set()
                delay = 0.1
                await self._consume(pubsub)
            except (RedisError, OSError) as exc:
                log.warning("Redis pub/sub lost; reconnecting", extra={"error": repr(exc), "retry_in": delay})
            except Exception:
                log.exception("realtime pub/sub reader failed; restarting")
            finally:
                if self._pubsub is pubsub:  # a relink may have started the next link already
                    self._pubsub = None
                    self._linked = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        """Subscribe a new link to control, every hub and every user of this node, including
        those added while it subscribed (until nothing is missing, with no await in between)."""
        subscribed: set[str] = set()
        while True:
            names = [*self.hubs, *(personal_channel(user_id) for user_id in self.by_user)]
            missing = {self._control, *(pubsub_channel(self.prefix, name) for name in names)} - subscribed
            if not missing:
                return
            await pubsub.subscribe(*missing)
            subscribed |= missing

    async def _consume(self, pubsub: PubSub) -> None:
        prefix = f"{self.prefix}:ch:".encode()
        control = self._control.encode()
        while True:
            message = await pubsub.get_message(timeout=5.0)  # wakes up to let redis-py health-check the link
            if message is None or message["type"] != "message":
                continue
            channel: bytes = message["channel"]
            if channel == control:
                self._on_control(message["data"])
            elif channel.startswith(prefix):
                name = channel[len(prefix) :].decode()
                hub = self.hubs.get(name)
                if hub is not None:
                    self._on_wire(hub, _wire_decoder.decode(message["data"]))
                elif name.startswith(PERSONAL_PREFIX):
                    self._on_personal(name, _wire_decoder.decode(message["data"]))

    def _on_control(self, payload: bytes) -> None:
        try:
            event = decode_control(payload)
        except msgspec.DecodeError:
            log.warning("malformed control event")
            return
        if event.kind == "session.revoked":
            for session_id in event.session_ids:
                for connection in list(self.by_session.get(session_id, ())):
                    connection.abort(protocol.DISCONNECT_INVALID_TOKEN, "session revoked")
        elif event.kind == "user.disabled":
            for connection in list(self.by_user.get(event.user_id, ())):
                connection.abort(protocol.DISCONNECT_FORCE_NO_RECONNECT, "account disabled")
        elif event.kind == "user.role_changed":
            if event.user_id in self.by_user:
                self.spawn(self._refresh_role(event.user_id))
        elif event.kind == "channel.access_lost" and event.channel:
            for connection in list(self.by_user.get(event.user_id, ())):
                if event.channel in connection.subs:
                    self._take_away(connection, event.channel, event.reason or "access lost")

    def _take_away(self, connection: Connection, channel: str, reason: str) -> None:
        """Unsubscribe ``connection`` from ``channel`` on the server's order (the socket stays)."""
        connection.enqueue(protocol.unsubscribe_push(channel, protocol.UNSUBSCRIBE_SERVER, reason))
        self.spawn(self.unsubscribe(connection, channel))

    async def _refresh_role(self, user_id: uuid.UUID, role: str | None = None) -> None:
        """The user's role changed (to ``role``, read here when not given): their sockets act
        with the new one at once, and lose the channels only the old one could read (an admin
        reading a lounge they never joined)."""
        if role is None:
            rows = await User.raw("SELECT role FROM users WHERE id = {}", user_id)
            if not rows:
                return
            role = rows[0]["role"]
        for connection in list(self.by_user.get(user_id, ())):
            principal = connection.principal
            if principal is None or principal.role == role:
                continue
            connection.principal = dataclasses.replace(principal, role=role)
            for channel in list(connection.subs):
                if channel.startswith(PERSONAL_PREFIX):
                    continue
                try:
                    await channel_access(connection.principal, channel, write=False)
                except AppError:
                    if channel in connection.subs:
                        self._take_away(connection, channel, "access lost")

    # -- housekeeping ------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        """Once a second: pings, dead peers, expired tokens; every few seconds presence
        refresh, a revocation sweep (in case a control event was missed) and stream catch-up."""
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            self._duty("connection checks", self._check_connections, time.monotonic())
            if tick % max(1, self.settings.presence_ttl // 3) == 0:
                await self._async_duty("presence refresh", self._refresh_presence)
            if tick % 10 == 0:
                await self._async_duty("revocation sweep", self._sweep_revoked)
                await self._async_duty("stream catch-up", self.catch_up, list(self.hubs.values()))

    @staticmethod
    def _duty(what: str, duty: Any, *args: Any) -> None:
        """Run one periodic duty; its failure is logged and stops no other duty."""
        try:
            duty(*args)
        except Exception:
            log.exception("realtime housekeeping failed", extra={"duty": what})

    async def _async_duty(self, what: str, duty: Any, *args: Any) -> None:
        try:
            await self.bounded(duty(*args), self.settings.ws_command_timeout)
        except (RedisError, OSError, TimeoutError) as exc:  # a dependency is away: next round
            log.warning("realtime housekeeping failed", extra={"duty": what, "error": repr(exc)})
        except Exception:
            log.exception("realtime housekeeping failed", extra={"duty": what})

    async def _refresh_presence(self) -> None:
        await self.presence.refresh(self)
        await self.state.redis.set(f"{self.prefix}:node:{self.node_id}", len(self.connections), ex=15)

    def _check_connections(self, now: float) -> None:
        settings = self.settings
        for connection in list(self.connections):
            if connection.closed:
                continue
            if not connection.connected:
                if now > connection.deadline:
                    connection.abort(protocol.DISCONNECT_BAD_REQUEST, "connect timeout")
                continue
            if connection.pong_due and now > connection.pong_due:
                connection.abort(protocol.DISCONNECT_NO_PONG, "no pong")
            elif connection.expires_at and time.time() > connection.expires_at + settings.ws_expired_close_delay:
                connection.abort(protocol.DISCONNECT_EXPIRED, "connection expired")
            elif now >= connection.next_ping:
                connection.enqueue(protocol.PING)
                connection.next_ping = now + settings.ws_ping_interval
                connection.pong_due = now + settings.ws_pong_timeout

    async def _sweep_revoked(self) -> None:
        """Revoked sessions closed, changed roles applied: in case a control event was missed."""
        sessions, roles = [], []
        for session_id, group in self.by_session.items():
            for connection in group:
                if connection.principal is not None:
                    sessions.append(session_id)
                    roles.append(connection.principal.role)
                    break
        if not sessions:
            return
        rows = await UserSession.raw(
            """SELECT s.id, s."user", u.role, s.revoked_at IS NOT NULL OR NOT u.is_active AS revoked
               FROM unnest({}::uuid[], {}::text[]) AS c(session, role)
               JOIN user_sessions s ON s.id = c.session JOIN users u ON u.id = s."user"
               WHERE s.revoked_at IS NOT NULL OR NOT u.is_active OR u.role <> c.role""",
            sessions,
            roles,
        )
        for row in rows:
            if row["revoked"]:
                for connection in list(self.by_session.get(row["id"], ())):
                    connection.abort(protocol.DISCONNECT_INVALID_TOKEN, "session revoked")
            else:
                await self._refresh_role(row["user"], row["role"])


def _discard_abandoned(tasks: set[asyncio.Task[Any]]) -> Any:
    """A done-callback forgetting an abandoned task and its outcome (nobody waits for it any more)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("abandoned task failed", extra={"error": repr(task.exception())})

    return done


def personal_channel(user_id: uuid.UUID) -> str:
    """The ``user#<id>`` channel every socket of a user is subscribed to by the server."""
    return f"{PERSONAL_PREFIX}{user_id}"
