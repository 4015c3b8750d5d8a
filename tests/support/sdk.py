"""The official centrifuge-python SDK, wired to collect what a test needs to check."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerPublicationContext,
    SubscribedContext,
    Subscription,
    SubscriptionEventHandler,
    UnsubscribedContext,
)


@dataclass
class Recorder(SubscriptionEventHandler):
    """Everything one subscription saw."""

    publications: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    subscribed: list[SubscribedContext] = field(default_factory=list)
    unsubscribed: list[UnsubscribedContext] = field(default_factory=list)
    joins: list[JoinContext] = field(default_factory=list)
    leaves: list[LeaveContext] = field(default_factory=list)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.append((ctx.pub.offset, ctx.pub.data))

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.append(ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx)

    @property
    def stored(self) -> list[int]:
        """Offsets of stored publications, in arrival order."""
        return [offset for offset, _ in self.publications if offset]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, data in self.publications if data.get("type") == kind]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.02)


@dataclass
class ClientRecorder(ClientEventHandler):
    connected: list[ConnectedContext] = field(default_factory=list)
    connecting: list[ConnectingContext] = field(default_factory=list)
    disconnected: list[DisconnectedContext] = field(default_factory=list)
    personal: list[dict[str, Any]] = field(default_factory=list)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.append(ctx)

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting.append(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.personal.append(ctx.pub.data)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.02)


def sdk_client(url: str, token: str, **options: Any) -> tuple[Client, ClientRecorder]:
    events = ClientRecorder()
    options.setdefault("max_reconnect_delay", 1.0)
    return Client(url, token=token, events=events, **options), events


def subscription(client: Client, channel: str, **options: Any) -> tuple[Subscription, Recorder]:
    recorder = Recorder()
    options.setdefault("recoverable", True)
    options.setdefault("positioned", True)
    return client.new_subscription(channel, events=recorder, **options), recorder
