"""The node's housekeeping, once a second: pings and dead peers, expired tokens, presence
refresh, and the sweeps that apply what a missed control event would have (a revoked
session, a changed role), and a stream catch-up."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from server.foundation.errors import AppError
from server.foundation.redis import REDIS_ERRORS
from server.gateway import protocol
from server.gateway.hub import catch_up
from server.gateway.subscriber import PERSONAL_PREFIX

if TYPE_CHECKING:
    from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")


class Sweeps:
    """The periodic duties of ``node``, and the role refresh a control event also asks for."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.ticker = asyncio.create_task(self._tick_forever(), name="realtime-ticker")

    async def _tick_forever(self) -> None:
        """Once a second: pings, dead peers, expired tokens; every few seconds presence
        refresh, a revocation sweep (in case a control event was missed) and stream catch-up."""
        node = self.node
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            self._duty("connection checks", self._check_connections, time.monotonic())
            if tick % max(1, node.settings.presence_ttl // 3) == 0:
                await self._async_duty("presence refresh", self._refresh_presence)
            if tick % 10 == 0:
                await self._async_duty("revocation sweep", self._sweep_revoked)
                await self._async_duty("stream catch-up", catch_up, list(node.hubs.values()))

    @staticmethod
    def _duty(what: str, duty: Callable[..., None], *args: Any) -> None:
        """Run one periodic duty; its failure is logged and stops no other duty."""
        try:
            duty(*args)
        except Exception:
            log.exception("realtime housekeeping failed", extra={"duty": what})

    async def _async_duty(self, what: str, duty: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        try:
            await self.node.bounded(duty(*args), self.node.settings.ws_command_timeout)
        except REDIS_ERRORS as exc:  # a dependency is away: next round
            log.warning("realtime housekeeping failed", extra={"duty": what, "error": repr(exc)})
        except Exception:
            log.exception("realtime housekeeping failed", extra={"duty": what})

    async def _refresh_presence(self) -> None:
        node = self.node
        await node.presence.refresh(node)
        await node.state.redis.set(f"{node.prefix}:node:{node.node_id}", len(node.connections), ex=15)

    def _check_connections(self, now: float) -> None:
        settings = self.node.settings
        for connection in list(self.node.connections):
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
                connection.enqueue(connection.codec.ping)
                connection.next_ping = now + settings.ws_ping_interval
                connection.pong_due = now + settings.ws_pong_timeout

    async def _sweep_revoked(self) -> None:
        """Revoked sessions closed, changed roles applied: in case a control event was missed."""
        node = self.node
        sessions: list[tuple[uuid.UUID, str]] = []
        for session_id in node.by_session:
            for connection in node.by_session.get(session_id):
                if connection.principal is not None:
                    sessions.append((session_id, connection.principal.role))
                    break
        if not sessions:
            return
        for change in await node.domain.session_changes(sessions):
            if change.revoked:
                for connection in node.by_session.get(change.session_id):
                    connection.abort(protocol.DISCONNECT_INVALID_TOKEN, "session revoked")
            else:
                await self.refresh_role(change.user_id, change.role)

    async def refresh_role(self, user_id: uuid.UUID, role: str | None = None) -> None:
        """The user's role changed (to ``role``, read here when not given): their sockets act
        with the new one at once, and lose the channels only the old one could read (an admin
        reading a lounge they never joined)."""
        node = self.node
        if role is None:
            role = await node.domain.current_role(user_id)
            if role is None:
                return
        for connection in node.by_user.get(user_id):
            principal = connection.principal
            if principal is None or principal.role == role:
                continue
            connection.principal = node.domain.with_role(principal, role)
            for channel in list(connection.subs):
                if channel.startswith(PERSONAL_PREFIX):
                    continue
                try:
                    await node.domain.authorize(connection.principal, channel, write=False)
                except AppError:
                    if channel in connection.subs:
                        node.take_away(connection, channel, "access lost")
