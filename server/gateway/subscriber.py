"""The node's one Redis pub/sub link to every other node, after centrifuge's broker.

One connection carries every hub's channel, the personal channel of every user
with a socket here, and the control channel. After any outage the link is
rebuilt: it subscribes everything again and catches up from the log what it
missed. Control events (a session revoked, a user disabled, a role changed, a
channel's access lost) act on this node's sockets as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import msgspec
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from server.foundation.control import control_channel, decode_control
from server.gateway import protocol
from server.gateway.hub import catch_up
from server.streams.broker import Wire, pubsub_channel

if TYPE_CHECKING:
    from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")

REDIS_TIMEOUT = 1.0  # seconds a Redis call on a socket's path may take before the node carries on without it
PERSONAL_PREFIX = "user#"
wire_decoder = msgspec.json.Decoder(Wire)


class Subscriber:
    """Keeps the pub/sub link of ``node`` subscribed and hands what arrives to its hubs and sockets."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.reader: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set once the first link is up
        self._pubsub: PubSub | None = None
        self._linked = False  # the link is subscribed to every hub and user (False: it is reconnecting)
        self._control = control_channel(node.prefix)
        self.closing = False  # set by the node's stop: no new link after that

    def start(self) -> None:
        self.reader = asyncio.create_task(self._read_forever(), name="realtime-pubsub")

    async def close(self) -> None:
        """Close the link (its reader is cancelled by the node)."""
        if self._pubsub is not None:
            await self._pubsub.aclose()

    async def listen(self, redis_channel: str) -> None:
        """Subscribe the link to ``redis_channel``. Never fails: with Redis away the
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

    async def unlisten(self, redis_channel: str) -> None:
        """Unsubscribe the link from ``redis_channel`` (nothing to do while it is down). Raises ``RedisError``."""
        if self._pubsub is not None:
            await self._pubsub.unsubscribe(redis_channel)

    def _relink(self) -> None:
        """Drop the link and start a new one, which subscribes everything again and catches up."""
        if self.closing:
            return
        self._linked = False
        if self.reader is not None:
            self.reader.cancel()
        self.reader = asyncio.create_task(self._read_forever(), name="realtime-pubsub")

    async def _read_forever(self) -> None:
        """Keep one pub/sub connection alive; after any outage, resubscribe and catch up."""
        node = self.node
        delay = 0.1
        while not self.closing:  # a cancellation swallowed inside redis-py must not keep it alive
            pubsub = node.state.redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            try:
                await self._subscribe_all(pubsub)
                self._linked = True
                for hub in node.hubs.values():
                    hub.forget_ring()
                await catch_up(list(node.hubs.values()))
                self.subscribed.set()
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
        node = self.node
        subscribed: set[str] = set()
        while True:
            names = [*node.hubs, *(personal_channel(user_id) for user_id in node.by_user)]
            missing = {self._control, *(pubsub_channel(node.prefix, name) for name in names)} - subscribed
            if not missing:
                return
            await pubsub.subscribe(*missing)
            subscribed |= missing

    async def _consume(self, pubsub: PubSub) -> None:
        node = self.node
        prefix = f"{node.prefix}:ch:".encode()
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
                hub = node.hubs.get(name)
                if hub is not None:
                    hub.on_wire(wire_decoder.decode(message["data"]))
                elif name.startswith(PERSONAL_PREFIX):
                    node.push_personal(name, wire_decoder.decode(message["data"]))

    def _on_control(self, payload: bytes) -> None:
        node = self.node
        try:
            event = decode_control(payload)
        except msgspec.DecodeError:
            log.warning("malformed control event")
            return
        if event.kind == "session.revoked":
            for session_id in event.session_ids:
                for connection in list(node.by_session.get(session_id, ())):
                    connection.abort(protocol.DISCONNECT_INVALID_TOKEN, "session revoked")
        elif event.kind == "user.disabled":
            for connection in list(node.by_user.get(event.user_id, ())):
                connection.abort(protocol.DISCONNECT_FORCE_NO_RECONNECT, "account disabled")
        elif event.kind == "user.role_changed":
            if event.user_id in node.by_user:
                node.spawn(node.sweeps.refresh_role(event.user_id))
        elif event.kind == "channel.access_lost" and event.channel:
            for connection in list(node.by_user.get(event.user_id, ())):
                if event.channel in connection.subs:
                    node.take_away(connection, event.channel, event.reason or "access lost")


def personal_channel(user_id: uuid.UUID) -> str:
    """The ``user#<id>`` channel every socket of a user is subscribed to by the server."""
    return f"{PERSONAL_PREFIX}{user_id}"
