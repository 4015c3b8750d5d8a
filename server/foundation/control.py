"""The control bus: cross-node orders for live connections, over the realtime Redis's pub/sub.

Services publish here *after* their transaction commits (e.g. "session S was
revoked"); every web node's realtime gateway listens and acts on its own
sockets. Pub/sub is fire-and-forget, so these orders are also checked again on
each socket's next token refresh: a missed order delays, never cancels, the effect.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec

from server.foundation.redis import RealtimeRedis

# user.updated: the verified flag or the name changed (what an authenticated caller carries).
ControlKind = Literal["session.revoked", "user.disabled", "user.role_changed", "user.updated", "channel.access_lost"]


class ControlEvent(msgspec.Struct, frozen=True):
    kind: ControlKind
    user_id: uuid.UUID
    session_ids: list[uuid.UUID] = msgspec.field(default_factory=list)
    channel: str | None = None
    reason: str = ""


def control_channel(prefix: str) -> str:
    return f"{prefix}:control"


async def publish_control(redis: RealtimeRedis, prefix: str, event: ControlEvent) -> None:
    """Send ``event`` to every node (a sharded pub/sub channel: on a cluster, its one shard)."""
    await redis.execute_command("SPUBLISH", control_channel(prefix), msgspec.json.encode(event))


def decode_control(payload: bytes) -> ControlEvent:
    return msgspec.json.decode(payload, type=ControlEvent)
