"""Sharded pub/sub links: one subscriber connection per shard of the realtime Redis.

Publications travel as ``SPUBLISH`` on the channel's own shard (the primary owning its
slot) and are heard by ``SSUBSCRIBE`` on that shard only, so pub/sub work spreads over a
Redis Cluster instead of being broadcast to every node of it. One server is a cluster of
one shard (Redis 7+ speaks the same commands there). redis-py's asyncio client has no
sharded pub/sub (and its cluster client no pub/sub at all), so a :class:`ShardLink` drives
one of its connections directly: it sends ``SSUBSCRIBE``/``SUNSUBSCRIBE`` one channel
per command (a cluster refuses several slots in one), waits for each confirmation, and
hands every ``smessage`` to its reader's callback.

A link ends (``run`` raises) when its connection is lost, when it goes silent past
:data:`SILENCE_LIMIT`, when the server answers a subscription with an error (``MOVED``:
the slot now lives elsewhere) and when the server unsubscribes a channel on its own (a
failover or a slot migration). Its owner then relinks every shard from a fresh view of
the cluster and catches up from the log, as after any outage.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from server.foundation.redis import RealtimeRedis

PING_INTERVAL = 5.0  # seconds between keep-alive pings of an idle link
SILENCE_LIMIT = 12.0  # seconds without a byte from the server before the link is declared dead
SINGLE = "single"  # the name of the only shard of a realtime Redis that is one server


class TopologyChanged(RedisConnectionError):
    """The server moved a channel away from this link (failover, slot migration, MOVED)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """A primary of the realtime Redis and how to open a connection to it."""

    name: str
    connect: Callable[[], AbstractConnection]


async def discover_shards(redis: RealtimeRedis) -> list[Shard]:
    """The primaries serving the realtime Redis now (for a cluster: asked afresh)."""
    if isinstance(redis, RedisCluster):
        await redis.nodes_manager.initialize()
        return [
            Shard(node.name, _factory(node.connection_class, node.connection_kwargs)) for node in redis.get_primaries()
        ]
    pool = redis.connection_pool
    return [Shard(SINGLE, _factory(pool.connection_class, pool.connection_kwargs))]


def shard_of(redis: RealtimeRedis, channel: str) -> str | None:
    """The name of the shard serving ``channel`` as last discovered (None: no shard serves its slot)."""
    if isinstance(redis, RedisCluster):
        try:
            node = redis.get_node_from_key(channel)
        except SlotNotCoveredError:
            return None
        return node.name if node is not None else None
    return SINGLE


def _factory(connection_class: type[AbstractConnection], kwargs: dict[str, object]) -> Callable[[], AbstractConnection]:
    # No health-check PING from redis-py: in subscribed mode its answer is not "PONG".
    # The link's own keep-alive watches it instead.
    options = {**kwargs, "health_check_interval": 0, "socket_timeout": None}
    return lambda: connection_class(**options)  # type: ignore[arg-type]


class ShardLink:
    """One connection in sharded-subscribe mode. ``await connect()``, start ``run(on_message)``
    as a task, then ``subscribe``/``unsubscribe`` channels while it runs."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self._connection = shard.connect()
        self._waiting: dict[bytes, collections.deque[asyncio.Future[None]]] = {}
        self._leaving: collections.Counter[bytes] = collections.Counter()
        self._heard = 0.0

    async def connect(self) -> None:
        await self._connection.connect()
        self._heard = asyncio.get_running_loop().time()

    async def subscribe(self, *channels: str, wait: float | None = None) -> None:
        """Subscribe ``channels`` and return once the server confirmed each, or after ``wait``
        seconds (the confirmations still come, to the reader: a busy event loop may read them
        late, and a lost link ends the reader anyway). Raises on a link that failed."""
        if not channels:
            return
        loop = asyncio.get_running_loop()
        futures = []
        for channel in channels:
            future: asyncio.Future[None] = loop.create_future()
            future.add_done_callback(_retrieve)
            self._waiting.setdefault(channel.encode(), collections.deque()).append(future)
            futures.append(future)
        await self._send([("SSUBSCRIBE", channel) for channel in channels])
        done, _ = await asyncio.wait(futures, timeout=wait)
        for future in done:
            future.result()

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe ``channel`` (its confirmation is read, not awaited). Raises on a lost link."""
        self._leaving[channel.encode()] += 1
        await self._send([("SUNSUBSCRIBE", channel)])

    async def _send(self, commands: list[tuple[str, str]]) -> None:
        connection = self._connection
        await connection.send_packed_command(connection.pack_commands(commands), check_health=False)

    async def run(self, on_message: Callable[[bytes, bytes], None]) -> None:
        """Read until the link fails, handing each ``(channel, data)`` to ``on_message``. Always raises."""
        keeper = asyncio.create_task(self._keep_alive(), name=f"shard-link-ping:{self.shard.name}")
        try:
            while True:
                reply = await self._connection.read_response(push_request=True)
                self._heard = asyncio.get_running_loop().time()
                if not isinstance(reply, list) or not reply:
                    continue
                kind = reply[0]
                if kind == b"smessage":
                    on_message(reply[1], reply[2])
                elif kind == b"ssubscribe":
                    waiting = self._waiting.get(reply[1])
                    if waiting:
                        waiting.popleft().set_result(None)
                        if not waiting:
                            del self._waiting[reply[1]]
                elif kind == b"sunsubscribe":
                    if self._leaving[reply[1]] <= 0:
                        raise TopologyChanged(f"{self.shard.name} unsubscribed {reply[1]!r} on its own")
                    self._leaving[reply[1]] -= 1
                    if not self._leaving[reply[1]]:
                        del self._leaving[reply[1]]
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else RedisConnectionError("link closed")
            for waiting in self._waiting.values():
                for future in waiting:
                    if not future.done():
                        future.set_exception(failure)
            self._waiting.clear()
            raise
        finally:
            keeper.cancel()

    async def _keep_alive(self) -> None:
        """Ping every :data:`PING_INTERVAL`; a link silent past :data:`SILENCE_LIMIT`, or one a
        ping cannot be written to, is disconnected, which ends the reader with an error."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # a ping that cannot be written: the link is lost
            while loop.time() - self._heard <= SILENCE_LIMIT:
                await asyncio.sleep(PING_INTERVAL)
                await self._send([("PING", "")])
        await self._connection.disconnect(nowait=True)

    async def close(self) -> None:
        await self._connection.disconnect(nowait=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a confirmation's failure as seen: the reader reports the lost link itself."""
    if not future.cancelled():
        future.exception()
