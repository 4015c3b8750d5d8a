"""Who is in a channel, across every node, in Redis.

Each channel has a hash (client id → client info) and a sorted set (client id →
expiry time). Nodes refresh the expiry of their own clients every
``PRESENCE_TTL / 3`` seconds; the clients of a node that died simply expire, so
presence converges within ``PRESENCE_TTL`` seconds without any cleanup job.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from server.foundation.redis import register_script
from server.foundation.state import AppState
from server.gateway.protocol import ClientInfo
from server.streams.online import queue_refresh

if TYPE_CHECKING:
    from server.gateway.connection import Connection
    from server.gateway.node import Node

# Drop expired entries, then return the live ones' info.
_LIVE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  redis.call('HDEL', KEYS[1], unpack(expired))
end
return redis.call('HVALS', KEYS[1])
"""

REFRESH_BATCH = 250  # users or channels per pipeline of a presence refresh

_encoder = msgspec.json.Encoder()
_info_decoder = msgspec.json.Decoder(ClientInfo)


class Presence:
    def __init__(self, state: AppState) -> None:
        self._redis = state.realtime_redis
        self._prefix = state.settings.redis_prefix
        self._ttl = state.settings.presence_ttl
        self._live = register_script(self._redis, _LIVE)

    def _keys(self, channel: str) -> tuple[str, str]:
        """The channel's two presence keys, on its shard (the hash tag of its other keys)."""
        return f"{self._prefix}:presence:{{{channel}}}", f"{self._prefix}:presence-exp:{{{channel}}}"

    @staticmethod
    def client_info(connection: Connection) -> bytes:
        assert connection.principal is not None
        return _encoder.encode(
            ClientInfo(
                user=str(connection.principal.user_id),
                client=connection.client_id,
                conn_info={"name": connection.full_name},
            )
        )

    async def add(self, channel: str, client_id: str, info: bytes) -> None:
        info_key, expiry_key = self._keys(channel)
        async with self._redis.pipeline(transaction=False) as pipe:
            # redis-py types hash values as str; bytes are sent as they are.
            pipe.hset(info_key, client_id, info)  # type: ignore[arg-type]
            pipe.zadd(expiry_key, {client_id: time.time() + self._ttl})
            pipe.expire(info_key, self._ttl * 4)
            pipe.expire(expiry_key, self._ttl * 4)
            await pipe.execute()

    async def remove(self, channel: str, client_id: str) -> None:
        info_key, expiry_key = self._keys(channel)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(info_key, client_id)
            pipe.zrem(expiry_key, client_id)
            await pipe.execute()

    async def refresh(self, node: Node) -> None:
        """Extend the expiry of every client of ``node`` in every channel it is in, and enter
        those missing (their join fell into a Redis outage, or Redis came back empty); the
        same for the node's entries in its users' online records.

        In pipelines of :data:`REFRESH_BATCH` users or channels: building and reading one
        pipeline runs on the event loop without a pause, and one of every user and channel
        of a node holding 10,000 sockets stalled every socket for ~0.5 s."""
        users = list(node.by_user)  # snapshots: sockets come and go between the batches
        for start in range(0, len(users), REFRESH_BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                if queue_refresh(pipe, self._prefix, users[start : start + REFRESH_BATCH], node.node_id, self._ttl):
                    await pipe.execute()
        hubs = list(node.hubs.values())
        for start in range(0, len(hubs), REFRESH_BATCH):
            expiry = time.time() + self._ttl
            async with self._redis.pipeline(transaction=False) as pipe:
                queued = False
                for hub in hubs[start : start + REFRESH_BATCH]:
                    members = [c for c in hub.subscribers if c.principal is not None and hub.name in c.subs]
                    if not members:
                        continue
                    info_key, expiry_key = self._keys(hub.name)
                    pipe.hset(info_key, mapping={c.client_id: self.client_info(c) for c in members})
                    pipe.zadd(expiry_key, {c.client_id: expiry for c in members})
                    pipe.expire(info_key, self._ttl * 4)
                    pipe.expire(expiry_key, self._ttl * 4)
                    queued = True
                if queued:
                    await pipe.execute()

    async def clients(self, channel: str) -> dict[str, dict[str, Any]]:
        """Live clients of ``channel``: client id → ``{user, client, conn_info}``."""
        info_key, expiry_key = self._keys(channel)
        values = await self._live(keys=[info_key, expiry_key], args=[time.time()])
        result = {}
        for value in values:
            info = _info_decoder.decode(value)
            result[info.client] = msgspec.to_builtins(info)
        return result
