"""The node's pub/sub links to every other node, after centrifuge's broker.

One sharded-subscribe connection per shard of the realtime Redis
(:mod:`server.streams.sharded_pubsub`; one server is one shard) carries the channels
of every hub, the personal channel of every user with a socket here, and the control
channel, each on the shard owning its slot. The links live and die together: after
any outage, failover or slot move, every shard is linked again from a fresh view of
the cluster, everything is subscribed again, and what was missed is read from the log.
Control events (a session revoked, a user disabled, a role changed, a channel's access
lost) act on this node's sockets as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import msgspec

from server.foundation.control import control_channel, decode_control
from server.foundation.redis import REDIS_ERRORS
from server.gateway import protocol
from server.gateway.hub import catch_up
from server.streams.broker import Wire, channel_of, pubsub_channel
from server.streams.sharded_pubsub import ShardLink, TopologyChanged, discover_shards, shard_of

if TYPE_CHECKING:
    from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")

REDIS_TIMEOUT = 1.0  # seconds a Redis call on a socket's path may take before the node carries on without it
PERSONAL_PREFIX = "user#"
wire_decoder = msgspec.json.Decoder(Wire)


class Subscriber:
    """Keeps the pub/sub links of ``node`` subscribed and hands what arrives to its hubs and sockets."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.reader: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set once the first links are up
        self._links: dict[str, ShardLink] = {}  # shard name -> its link, while linked
        self._linked = False  # every channel of the node is subscribed (False: relinking)
        self._control = control_channel(node.prefix)
        self._control_bytes = self._control.encode()
        self.closing = False  # set by the node's stop: no new link after that

    def start(self) -> None:
        self.reader = asyncio.create_task(self._read_forever(), name="realtime-pubsub")

    async def close(self) -> None:
        """Close the links (their reader is cancelled by the node)."""
        for link in list(self._links.values()):
            await link.close()

    async def listen(self, redis_channel: str) -> None:
        """Subscribe ``redis_channel`` and return once its shard confirmed it (so what is
        published after this returns is heard), or after ``REDIS_TIMEOUT`` on a loaded node
        (a publication in between is then found by the hub's gap fill or catch-up). Never
        fails: with Redis away (or the cluster reshaping) the links are rebuilt, subscribe
        every hub and user, and catch up from the log."""
        if not self._linked:
            return  # the reader subscribes it when it (re)links
        link = self._link_for(redis_channel)
        if link is None:  # the channel's slot moved to a shard this node has no link to
            self._relink()
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT * 2):  # the send; the confirmation waits REDIS_TIMEOUT
                await link.subscribe(redis_channel, wait=REDIS_TIMEOUT)
        except REDIS_ERRORS as exc:
            log.warning("pub/sub subscribe failed; relinking", extra={"channel": redis_channel, "error": repr(exc)})
            self._relink()

    async def unlisten(self, redis_channel: str) -> None:
        """Unsubscribe ``redis_channel`` (nothing to do while relinking). Never fails: a link
        that cannot say it is lost, and its successor will not subscribe the channel."""
        link = self._link_for(redis_channel) if self._linked else None
        if link is None:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await link.unsubscribe(redis_channel)
        except REDIS_ERRORS as exc:
            log.warning("pub/sub unsubscribe failed; relinking", extra={"channel": redis_channel, "error": repr(exc)})
            self._relink()

    def _link_for(self, redis_channel: str) -> ShardLink | None:
        """The link to the shard serving ``redis_channel``, if there is one."""
        shard = shard_of(self.node.state.realtime_redis, redis_channel)
        return self._links.get(shard) if shard is not None else None

    def _relink(self) -> None:
        """Drop the links and start new ones, which subscribe everything again and catch up."""
        if self.closing:
            return
        self._linked = False
        self.node.tally.relinked()
        if self.reader is not None:
            self.reader.cancel()
        self.reader = asyncio.create_task(self._read_forever(), name="realtime-pubsub")

    async def _read_forever(self) -> None:
        """Keep a link to every shard alive; after any outage, resubscribe and catch up."""
        node = self.node
        delay = 0.1
        while not self.closing:  # a cancellation swallowed inside redis-py must not keep it alive
            links: dict[str, ShardLink] = {}
            readers: list[asyncio.Task[None]] = []
            try:
                for shard in await discover_shards(node.state.realtime_redis):
                    links[shard.name] = link = ShardLink(shard)
                    async with asyncio.timeout(REDIS_TIMEOUT * 5):
                        await link.connect()
                self._links = links
                readers = [
                    asyncio.create_task(link.run(self._on_message), name=f"realtime-pubsub:{name}")
                    for name, link in links.items()
                ]
                await self._subscribe_all()
                self._linked = True
                for hub in node.hubs.values():
                    hub.forget_ring()
                await catch_up(list(node.hubs.values()))
                self.subscribed.set()
                delay = 0.1
                await _first_failure(readers)
            except REDIS_ERRORS as exc:
                node.tally.relinked()
                log.warning("Redis pub/sub lost; relinking", extra={"error": repr(exc), "retry_in": delay})
            except Exception:
                node.tally.relinked()
                log.exception("realtime pub/sub reader failed; restarting")
            finally:
                if self._links is links:  # a relink may have started the next links already
                    self._links = {}
                    self._linked = False
                for reader in readers:
                    reader.cancel()
                for link in links.values():
                    with contextlib.suppress(*REDIS_ERRORS):
                        await link.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _subscribe_all(self) -> None:
        """Subscribe new links to control, every hub and every user of this node, including
        those added while they subscribed (until nothing is missing, with no await in between)."""
        node = self.node
        subscribed: set[str] = set()
        while True:
            names = [*node.hubs, *(personal_channel(user_id) for user_id in node.by_user)]
            missing = {self._control, *(pubsub_channel(node.prefix, name) for name in names)} - subscribed
            if not missing:
                return
            by_link: dict[ShardLink, list[str]] = {}
            for channel in missing:
                link = self._link_for(channel)
                if link is None:
                    raise TopologyChanged(f"no shard serves {channel!r} yet")
                by_link.setdefault(link, []).append(channel)
            subscribing = asyncio.gather(*(link.subscribe(*channels) for link, channels in by_link.items()))
            async with asyncio.timeout(REDIS_TIMEOUT * 10):
                # A reader that fails meanwhile fails its link's subscriptions too.
                await subscribing
            subscribed |= missing

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._control_bytes:
            self._on_control(data)
            return
        name = channel_of(self.node.prefix, channel)
        if name is None:
            return
        node = self.node
        node.tally.from_redis += 1
        hub = node.hubs.get(name)
        if hub is not None:
            hub.on_wire(wire_decoder.decode(data))
        elif name.startswith(PERSONAL_PREFIX):
            node.push_personal(name, wire_decoder.decode(data))

    def _on_control(self, payload: bytes) -> None:
        node = self.node
        try:
            event = decode_control(payload)
        except msgspec.DecodeError:
            log.warning("malformed control event")
            return
        node.domain.control_received(event)
        if event.kind == "session.revoked":
            for session_id in event.session_ids:
                for connection in node.by_session.get(session_id):
                    connection.abort(protocol.DISCONNECT_INVALID_TOKEN, "session revoked")
        elif event.kind == "user.disabled":
            for connection in node.by_user.get(event.user_id):
                connection.abort(protocol.DISCONNECT_FORCE_NO_RECONNECT, "account disabled")
        elif event.kind == "user.role_changed":
            if event.user_id in node.by_user:
                node.spawn(node.sweeps.refresh_role(event.user_id))
        elif event.kind == "channel.access_lost" and event.channel:
            for connection in node.by_user.get(event.user_id):
                if event.channel in connection.subs:
                    node.take_away(connection, event.channel, event.reason or "access lost")


def personal_channel(user_id: uuid.UUID) -> str:
    """The ``user#<id>`` channel every socket of a user is subscribed to by the server."""
    return f"{PERSONAL_PREFIX}{user_id}"


async def _first_failure(readers: list[asyncio.Task[None]]) -> None:
    """Wait until one of the links' readers ends (they end only by failing) and raise its error."""
    done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
    for reader in done:
        reader.result()
