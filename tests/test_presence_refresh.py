"""A node's presence refresh, in batches: every user's online record and every channel's
members are refreshed (and re-entered when Redis lost them), whatever the batch size."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import pytest
from litestar import Litestar

from server.foundation.state import AppState
from server.gateway import presence as presence_module
from server.gateway.presence import Presence
from server.streams.online import online_users


@dataclass(eq=False)
class _Principal:
    user_id: uuid.UUID


@dataclass(eq=False)
class _Connection:
    principal: _Principal
    client_id: str
    full_name: str
    subs: set[str]


@dataclass
class _Hub:
    name: str
    subscribers: list[_Connection] = field(default_factory=list)


@dataclass
class _Node:
    node_id: str
    by_user: dict[uuid.UUID, _Connection]
    hubs: dict[str, _Hub]


async def test_a_refresh_in_batches_reenters_every_user_and_channel_member(
    app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    state: AppState = app.state.app_state
    monkeypatch.setattr(presence_module, "REFRESH_BATCH", 3)  # 10 users and 7 channels: several batches each
    channels = [f"lounge:{uuid.uuid4()}" for _ in range(7)]
    connections = [
        _Connection(_Principal(uuid.uuid4()), uuid.uuid4().hex, f"user {i}", {channels[i % 7]}) for i in range(10)
    ]
    hubs = {name: _Hub(name) for name in channels}
    for connection in connections:
        for name in connection.subs:
            hubs[name].subscribers.append(connection)
    node = _Node(f"node-{uuid.uuid4().hex[:8]}", {c.principal.user_id: c for c in connections}, hubs)
    presence = Presence(state)

    await presence.refresh(node)  # type: ignore[arg-type]  # the attributes the refresh reads

    users = [c.principal.user_id for c in connections]
    assert await online_users(state.realtime_redis, state.settings.redis_prefix, users) == set(users)
    for name, hub in hubs.items():
        assert set(await presence.clients(name)) == {c.client_id for c in hub.subscribers}, name
    # What Redis lost comes back with the next refresh, not only what expired.
    await state.realtime_redis.delete(*(f"{state.settings.redis_prefix}:online:{u}" for u in users))
    started = time.monotonic()
    await presence.refresh(node)  # type: ignore[arg-type]
    assert await online_users(state.realtime_redis, state.settings.redis_prefix, users) == set(users)
    assert time.monotonic() - started < 5
