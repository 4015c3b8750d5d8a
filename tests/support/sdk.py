"""The official centrifuge-python SDK, wired to collect what a test needs to check.

Clients speak JSON or Protobuf (``use_protobuf``, the SDK's own switch): the encoding
comes from the test's ``encoding`` parameter (tests/conftest.py) unless a test names
one. In Protobuf, publication, publish and rpc ``data`` are bytes carrying the JSON
document (docs/protocol.md): :func:`payload` encodes what a test sends the way a client
of that encoding must, and everything recorded is decoded back, so assertions read the
same on both.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

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
        self.publications.append((ctx.pub.offset, decoded(ctx.pub.data)))

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
        self.personal.append(decoded(ctx.pub.data))

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.02)


Encoding = Literal["json", "protobuf"]
ENCODINGS: tuple[Encoding, ...] = ("json", "protobuf")
current_encoding: Encoding = "json"  # set for each test by the `encoding` fixture
_encoding_of: weakref.WeakKeyDictionary[Client | Subscription, Encoding] = weakref.WeakKeyDictionary()


def sdk_client(
    url: str, token: str, *, encoding: Encoding | None = None, **options: Any
) -> tuple[Client, ClientRecorder]:
    events = ClientRecorder()
    encoding = encoding or current_encoding
    options.setdefault("max_reconnect_delay", 1.0)
    client = Client(url, token=token, events=events, use_protobuf=encoding == "protobuf", **options)
    _encoding_of[client] = encoding
    return client, events


def subscription(client: Client, channel: str, **options: Any) -> tuple[Subscription, Recorder]:
    recorder = Recorder()
    options.setdefault("recoverable", True)
    options.setdefault("positioned", True)
    sub = client.new_subscription(channel, events=recorder, **options)
    _encoding_of[sub] = _encoding_of.get(client, "json")
    return sub, recorder


def payload(sender: Client | Subscription, value: Any) -> Any:
    """``value`` as ``sender`` must hand it to ``publish``/``rpc``: the JSON document's bytes in Protobuf."""
    if _encoding_of.get(sender, "json") == "protobuf":
        return json.dumps(value).encode()
    return value


def decoded(data: Any) -> Any:
    """Publication or rpc ``data`` as the JSON value it carries, in either encoding."""
    return json.loads(data) if isinstance(data, bytes) else data
