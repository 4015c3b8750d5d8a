"""A cluster for realtime tests: ``python -m server serve`` nodes on a private Redis,
TCP proxies to cut or stall their links, official-SDK clients, and the checks the
cluster and fault suites share (exact streams, the stored log, conversations)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from centrifuge import CentrifugeError, Client, Subscription

from server.domain.tables.chat import Message
from server.foundation.settings import Settings
from server.streams.tables import Channel
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.sdk import ClientRecorder, Recorder, payload, sdk_client, subscription

# Every node of these tests: the private Redis, no publish throttling, a short drain.
NODE_ENV = {"PUBLISH_RATE_LIMIT": "1000/1", "DRAIN_SECONDS": "1"}


class Cluster:
    """Nodes, proxies and SDK clients of one test; ``close()`` ends them all."""

    def __init__(self, settings: Settings, redis_server: RedisServer, realtime_url: str | None = None) -> None:
        self.settings = settings
        self.redis = redis_server
        # The nodes' REALTIME_REDIS_URL (e.g. a Valkey cluster); None: the private Redis serves both roles.
        self.realtime_url = realtime_url
        self.nodes: list[WebNode] = []
        self.proxies: list[TcpProxy] = []
        self.clients: list[Client] = []

    async def start_nodes(self, count: int = 2, **env: str) -> list[WebNode]:
        nodes = [WebNode(self.settings, **self._env(env)) for _ in range(count)]
        self.nodes.extend(nodes)
        await asyncio.gather(*(node.start() for node in nodes))
        return nodes

    async def start_node(self, **env: str) -> WebNode:
        node = WebNode(self.settings, **self._env(env))
        self.nodes.append(node)
        return await node.start()

    def _env(self, overrides: dict[str, str]) -> dict[str, str]:
        env = {"REDIS_URL": self.redis.url, **NODE_ENV, **overrides}
        if self.realtime_url is not None:
            env.setdefault("REALTIME_REDIS_URL", self.realtime_url)
        return env

    async def redis_link(self) -> tuple[TcpProxy, str]:
        """A link to the private Redis that can be stalled (``pause()``), and its URL."""
        link = await TcpProxy([("127.0.0.1", self.redis.port)]).start()
        self.proxies.append(link)
        return link, f"redis://127.0.0.1:{link.port}/0"

    async def proxy(self, *nodes: WebNode) -> TcpProxy:
        proxy = await TcpProxy.for_nodes(*nodes).start()
        self.proxies.append(proxy)
        return proxy

    async def connect(self, url: str, account: Account, **options: Any) -> tuple[Client, ClientRecorder]:
        options = {"max_reconnect_delay": 0.5, "timeout": 5.0, "proxy": None, **options}
        client, events = sdk_client(url, account.access_token, **options)
        self.clients.append(client)
        await client.connect()
        await client.ready(timeout=10)
        return client, events

    async def subscribe(self, client: Client, channel: str) -> tuple[Subscription, Recorder]:
        sub, recorder = subscription(client, channel)
        await sub.subscribe()
        await sub.ready(timeout=10)
        return sub, recorder

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 3)
        for proxy in self.proxies:
            proxy.resume()
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        for node in self.nodes:
            node.kill()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                await proxy.close()


# -- helpers -----------------------------------------------------------------------------------


async def lounge_with_members(community: Community, count: int) -> tuple[dict[str, Any], list[Account]]:
    """A lounge and ``count`` accounts that may post in it (its mentor first)."""
    tag = uuid.uuid4().hex[:8]
    mentor = await community.mentor(f"cluster-mentor-{tag}@example.com")
    lounge = await community.lounge(mentor, ai_reply_policy="off")  # only the test's own messages
    accounts = [mentor]
    for index in range(count - 1):
        member = await community.user(f"cluster-member-{index}-{tag}@example.com")
        response = await community.join(member, lounge)
        assert response.status_code in (200, 201), response.text
        accounts.append(member)
    return lounge, accounts


async def stored_log(channel: str) -> list[tuple[int, str]]:
    """What PostgreSQL committed in the channel: (offset, client_id), by offset."""
    rows = (
        await Message.select(Message.offset, Message.client_id)
        .where(Message.channel == channel)
        .order_by(Message.offset)
    )
    return [(row["offset"], str(row["client_id"])) for row in rows]


async def channel_top(channel: str) -> int:
    row = await Channel.select(Channel.last_offset).where(Channel.name == channel).first()
    return row["last_offset"]


def seen(recorder: Recorder) -> list[tuple[int, str]]:
    """The stored publications a subscriber received, in arrival order: (offset, client_id)."""
    result = []
    for offset, data in recorder.publications:
        if offset:
            assert data["type"] == "message", data
            result.append((offset, data["message"]["client_id"]))
    return result


def describe(got: list[tuple[int, str]], expected: list[tuple[int, str]]) -> str:
    offsets = [offset for offset, _ in got]
    duplicates = sorted({o for o in offsets if offsets.count(o) > 1})
    missing = sorted({o for o, _ in expected} - set(offsets))
    backwards = [(a, b) for a, b in itertools.pairwise(offsets) if b <= a]
    return (
        f"received {len(got)} of {len(expected)}; missing offsets {missing[:20]}, duplicates {duplicates[:20]}, "
        f"out of order {backwards[:10]}; offsets {offsets}"
    )


def assert_exact_stream(recorder: Recorder, expected: list[tuple[int, str]], who: str) -> None:
    """The subscriber saw exactly the committed log: every offset once, in order, same content."""
    got = seen(recorder)
    assert got == expected, f"{who}: {describe(got, expected)}"


async def wait_for_all(recorders: dict[str, Recorder], count: int, timeout: float) -> None:
    """Until every subscriber received ``count`` stored publications; on timeout, say who lags."""
    try:
        async with asyncio.timeout(timeout):
            while any(len(r.stored) < count for r in recorders.values()):
                await asyncio.sleep(0.02)
    except TimeoutError:
        lagging = {who: r.stored[-5:] for who, r in recorders.items() if len(r.stored) < count}
        raise AssertionError(f"after {timeout} s not every subscriber has {count} publications: {lagging}") from None
    await asyncio.sleep(0.2)  # a late duplicate would arrive now


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def message(text: str, client_id: str | None = None) -> dict[str, str]:
    return {"text": text, "client_id": client_id or str(uuid.uuid4())}


@dataclass
class Conversation:
    """Publishers that keep posting into one channel, retrying each message with
    the same ``client_id`` until it is acknowledged (as a real app does)."""

    channel: str
    acked: list[str] = field(default_factory=list)
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    sent: dict[str, list[str]] = field(default_factory=dict)

    async def publisher(self, client: Client, name: str, count: int, pause: float = 0.01) -> None:
        ids = self.sent.setdefault(name, [])
        for index in range(count):
            client_id = str(uuid.uuid4())
            ids.append(client_id)
            while True:
                try:
                    await client.publish(
                        self.channel, payload(client, message(f"{name} #{index}", client_id)), timeout=2
                    )
                except CentrifugeError as exc:
                    self.failures.append((name, index, repr(exc)))
                    await asyncio.sleep(0.05)
                    continue
                self.acked.append(client_id)
                break
            await asyncio.sleep(pause)
