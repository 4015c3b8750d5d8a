"""A web process's share of the realtime system, after centrifuge's node: its sockets
and their indexes (by user, by session), its channel hubs, and what links them to
every other node.

The node wires the rest: each channel's ordering and fan-out is its
:class:`~server.gateway.hub.Hub`'s, the Redis pub/sub link and control events the
:class:`~server.gateway.subscriber.Subscriber`'s, pings and sweeps the
:class:`~server.gateway.sweeps.Sweeps`', writing queued frames the
:class:`~server.gateway.flusher.Flusher`'s; who a client is and what it may do is
asked of the :class:`~server.gateway.ports.Domain` the app wires in.

Personal channels (``user#<id>``) carry ephemeral pushes only: they have no hub;
the node subscribes to a user's channel on Redis while it holds a socket of
that user and hands each push to ``by_user``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from server.foundation import metrics
from server.foundation.redis import REDIS_ERRORS
from server.foundation.state import AppState
from server.gateway import protocol
from server.gateway.connection import Connection, ConnectionIndex
from server.gateway.flusher import Flusher
from server.gateway.hub import Hub
from server.gateway.metrics import Tally
from server.gateway.ports import Domain
from server.gateway.presence import Presence
from server.gateway.subscriber import PERSONAL_PREFIX, REDIS_TIMEOUT, Subscriber, personal_channel, wire_decoder
from server.gateway.sweeps import Sweeps
from server.streams.broker import WIRE_JOIN, WIRE_LEAVE, WIRE_PUBLICATION, Wire, encode_wire, publish, pubsub_channel
from server.streams.online import mark_offline, mark_online

log = logging.getLogger("lounges.realtime")

# How long stop() waits for its cancelled tasks (the pub/sub reader, the sweeps) to end.
STOP_TIMEOUT = 5.0


class Node:
    """Sockets and channel hubs of this process, linked to the others through Redis."""

    def __init__(self, state: AppState, domain: Domain) -> None:
        self.state = state
        self.domain = domain
        self.settings = state.settings
        self.node_id = uuid.uuid4().hex[:12]
        self.prefix = state.settings.redis_prefix
        self.connections: set[Connection] = set()
        self.hubs: dict[str, Hub] = {}
        self.by_user = ConnectionIndex()
        self.by_session = ConnectionIndex()
        self.presence = Presence(state)
        self.draining = False
        self.tally = Tally(on=metrics.collecting)
        self.flusher = Flusher(self.tally)
        self.subscriber = Subscriber(self)
        self.sweeps = Sweeps(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        state.local_delivery = self.deliver_local  # this process's broadcasts reach its own sockets first

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        metrics.add_sampler(self._sample_metrics)
        self.subscriber.start()
        self.sweeps.start()
        try:
            await asyncio.wait_for(self.subscriber.subscribed.wait(), timeout=5)
        except TimeoutError:
            log.warning("realtime node started without Redis; it keeps retrying")

    async def stop(self) -> None:
        metrics.remove_sampler(self._sample_metrics)
        if self.state.local_delivery == self.deliver_local:
            self.state.local_delivery = None
        for connection in list(self.connections):
            connection.abort(protocol.DISCONNECT_SHUTDOWN, "shutdown")
        self.subscriber.closing = True
        tasks = [task for task in (self.subscriber.reader, self.sweeps.ticker, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task stuck in a client library (Redis going away mid-command) must not
            # hold the process's shutdown; it is left cancelled.
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.warning("realtime tasks did not stop in time", extra={"tasks": [t.get_name() for t in pending]})
        await self.subscriber.close()

    async def drain(self) -> None:
        """Stop taking sockets and ask every client to reconnect elsewhere, spread
        over ``DRAIN_SECONDS`` so the other nodes are not hit all at once."""
        self.draining = True
        connections = list(self.connections)
        if not connections:
            return
        pause = self.settings.drain_seconds / len(connections)
        for connection in connections:
            if connection.connected and not connection.closed:
                push = connection.codec.disconnect_push(protocol.DISCONNECT_SHUTDOWN, "shutdown")
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
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task failed", exc_info=error, extra={"task": task.get_name()})

    # -- connections -------------------------------------------------------------------------

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.tally.opened(connection.codec.name)

    def _sample_metrics(self) -> None:
        """Move the tally's counts into the counters; the channels and subscriptions now."""
        self.tally.report()
        self.tally.sample_channels(len(hub.subscribers) for hub in self.hubs.values())

    async def join_personal(self, connection: Connection) -> None:
        """Index an authenticated socket by user and session; the user's first socket
        on this node subscribes the node to their personal channel."""
        principal = connection.principal
        assert principal is not None
        self.by_session.add(principal.session_id, connection)
        if not self.by_user.add(principal.user_id, connection):
            return
        await self.subscriber.listen(pubsub_channel(self.prefix, personal_channel(principal.user_id)))
        self.spawn(self._set_online(principal.user_id, True))  # beside the connect: never delays it

    async def _set_online(self, user_id: uuid.UUID, online: bool) -> None:
        """Enter or leave this node in the user's online record (``server.streams.online``),
        unless the user's sockets here came or went meanwhile. Never fails: without Redis the
        presence refresh enters it again, or it lapses within ``PRESENCE_TTL``."""
        if online != (user_id in self.by_user):
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                if online:
                    await mark_online(
                        self.state.realtime_redis, self.prefix, user_id, self.node_id, self.settings.presence_ttl
                    )
                else:
                    await mark_offline(self.state.realtime_redis, self.prefix, user_id, self.node_id)
        except REDIS_ERRORS as exc:
            log.warning("online record not updated", extra={"user": str(user_id), "error": repr(exc)})

    def move_session(self, connection: Connection, old_session: uuid.UUID) -> None:
        """A refreshed token may belong to another session of the same user."""
        assert connection.principal is not None
        self.by_session.discard(old_session, connection)
        self.by_session.add(connection.principal.session_id, connection)

    async def _leave_personal(self, connection: Connection) -> None:
        principal = connection.principal
        if principal is None:
            return
        self.by_session.discard(principal.session_id, connection)
        if self.by_user.discard(principal.user_id, connection):
            await self.subscriber.unlisten(pubsub_channel(self.prefix, personal_channel(principal.user_id)))
            await self._set_online(principal.user_id, False)

    async def remove(self, connection: Connection) -> None:
        """The socket is gone: leave every channel and forget it."""
        connection.closed = True
        if connection not in self.connections:
            return  # already removed (an abort and the endpoint's own end both land here)
        self.connections.discard(connection)
        self.tally.closed(connection.codec.name)
        await self._leave_personal(connection)
        for channel in list(connection.subs):
            await self.unsubscribe(connection, channel)
        await connection.stop_writer()

    # -- hubs --------------------------------------------------------------------------------

    async def hub(self, name: str) -> Hub:
        """This node's hub for ``name``, subscribing to it on Redis first if needed."""
        hub = self.hubs.get(name)
        if hub is None:
            hub = Hub(self, name)
            self.hubs[name] = hub
            try:
                await self.subscriber.listen(pubsub_channel(self.prefix, name))
                await hub.position()
            except BaseException:
                self.hubs.pop(name, None)
                hub.abandon()
                raise
            hub.set_ready()
            hub.advance()
        else:
            await hub.wait_ready()
        return hub

    def deliver_local(self, channel: str, payload: bytes) -> None:
        """A wire message published by this process, handed to its own sockets at once: two
        clients of one node talk even while Redis is away. The copy that comes back through
        Redis is dropped as a duplicate (by offset); ephemeral ones are handed here only when
        Redis did not take them."""
        self.tally.from_local += 1
        hub = self.hubs.get(channel)
        if hub is not None:
            hub.on_wire(wire_decoder.decode(payload))
        elif channel.startswith(PERSONAL_PREFIX):
            self.push_personal(channel, wire_decoder.decode(payload))

    def push_personal(self, name: str, wire: Wire) -> None:
        """An ephemeral push to a user's personal channel, for their sockets on this node."""
        try:
            user_id = uuid.UUID(name[len(PERSONAL_PREFIX) :])
        except ValueError:
            return
        connections = self.by_user.get(user_id)
        if not connections or wire.kind != WIRE_PUBLICATION:
            return
        data = bytes(wire.data)
        for connection in connections:
            connection.push(name, 0, connection.codec.push_frames(name).publication(data, 0))

    async def _close_hub(self, hub: Hub) -> None:
        self.hubs.pop(hub.name, None)
        await self.subscriber.unlisten(pubsub_channel(self.prefix, hub.name))

    def release_if_idle(self, hub: Hub) -> None:
        """Close ``hub`` if nobody subscribes to it any more (a subscribe failed after opening it)."""
        if not hub.subscribers and hub.current:
            self.spawn(self._close_if_idle(hub))

    async def _close_if_idle(self, hub: Hub) -> None:
        if not hub.subscribers and hub.current:
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
            except REDIS_ERRORS as exc:  # the entry expires within PRESENCE_TTL
                log.warning("presence remove failed", extra={"channel": channel, "error": repr(exc)})
            await self._publish_presence(channel, WIRE_LEAVE, info)
        if not hub.subscribers:
            await self._close_hub(hub)

    def take_away(self, connection: Connection, channel: str, reason: str) -> None:
        """Unsubscribe ``connection`` from ``channel`` on the server's order (the socket stays)."""
        connection.enqueue(connection.codec.unsubscribe_push(channel, protocol.UNSUBSCRIBE_SERVER, reason))
        self.spawn(self.unsubscribe(connection, channel))

    async def announce_join(self, connection: Connection, channel: str) -> None:
        """Enter presence and tell the channel. Never fails (the subscription stands): without
        Redis the next presence refresh enters the client."""
        info = self.presence.client_info(connection)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self.presence.add(channel, connection.client_id, info)
        except REDIS_ERRORS as exc:
            log.warning("presence add failed", extra={"channel": channel, "error": repr(exc)})
        await self._publish_presence(channel, WIRE_JOIN, info)

    async def _publish_presence(self, channel: str, kind: int, info: bytes) -> None:
        payload = encode_wire(kind, 0, "", info)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await publish(self.state.realtime_redis, pubsub_channel(self.prefix, channel), payload)
        except REDIS_ERRORS as exc:
            log.warning(
                "presence push failed; this node's subscribers only", extra={"channel": channel, "error": repr(exc)}
            )
            self.deliver_local(channel, payload)


def _discard_abandoned(tasks: set[asyncio.Task[Any]]) -> Any:
    """A done-callback forgetting an abandoned task and its outcome (nobody waits for it any more)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("abandoned task failed", extra={"error": repr(task.exception())})

    return done
