"""``python -m server serve --workers 2``: two nodes forked by one supervisor share the port.

Sockets land on both processes; a publication reaches the subscribers of both (they meet
through Redis, like nodes on two hosts); SIGTERM drains both together and the supervisor
exits once they are done; a child killed on its own is replaced while the other serves.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import httpx
import psutil
import pytest

from server.foundation.settings import Settings
from server.gateway.protocol import DISCONNECT_SHUTDOWN
from tests.support.cluster import lounge_with_members, message, wait_until
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import ClientRecorder, Recorder, payload, sdk_client, subscription

WORKERS = 2
SUBSCRIBERS = 16


@pytest.fixture
async def group(settings: Settings) -> AsyncIterator[WebNode]:
    web = WebNode(settings, args=("--workers", str(WORKERS)), DRAIN_SECONDS="1", PUBLISH_RATE_LIMIT="1000/1")
    await web.start()
    try:
        yield web
    finally:
        await web.stop()


def children(web: WebNode) -> list[psutil.Process]:
    assert web.process is not None
    return psutil.Process(web.process.pid).children()


def sockets_held(process: psutil.Process, port: int) -> int:
    """Established TCP connections of ``process`` on the node's port (its WebSocket clients)."""
    return sum(
        1
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


async def test_two_processes_share_the_port_and_the_traffic(group: WebNode, community: Community) -> None:
    lounge, (mentor, *members) = await lounge_with_members(community, 3)
    channel = lounge["channel"]
    assert len(children(group)) == WORKERS
    clients, recorders, events = [], [], []
    try:
        for index in range(SUBSCRIBERS):
            client, client_events = sdk_client(group.ws_url, members[index % len(members)].access_token)
            await client.connect()
            await client.ready(timeout=10)
            sub, recorder = subscription(client, channel)
            await sub.subscribe()
            await sub.ready(timeout=10)
            clients.append(client)
            recorders.append(recorder)
            events.append(client_events)
        held = {p.pid: sockets_held(p, group.port) for p in children(group)}
        assert sum(held.values()) == SUBSCRIBERS and all(held.values()), f"sockets per process: {held}"

        # Published on one process, delivered by both, in order.
        publisher, _ = sdk_client(group.ws_url, mentor.access_token)
        clients.append(publisher)
        await publisher.connect()
        await publisher.ready(timeout=10)
        for index in range(5):
            await publisher.publish(channel, payload(publisher, message(f"to both #{index}")))
        for recorder in recorders:
            await recorder.wait_for(lambda r: r.stored == [1, 2, 3, 4, 5])

        # SIGTERM to the supervisor: every socket is told to reconnect (3001), both nodes
        # drain at once, and the group exits cleanly within the drain.
        assert group.process is not None
        started = time.monotonic()
        group.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(group.process.wait, 20)
        took = time.monotonic() - started
        assert code == 0, code
        assert took < 10, f"the group took {took:.1f} s to stop"
        for client_events in events:
            await wait_until(lambda e=client_events: bool(e.connecting[1:]), 5, "a client noticed the drain")
            codes = [c.code for c in client_events.connecting]
            assert DISCONNECT_SHUTDOWN in codes, codes
    finally:
        for client in clients:
            await client.disconnect()


async def test_a_killed_process_is_replaced_while_the_other_serves(group: WebNode, community: Community) -> None:
    lounge, (mentor, member) = await lounge_with_members(community, 2)
    first, second = children(group)
    first.kill()
    # The survivor keeps serving meanwhile.
    async with httpx.AsyncClient() as http:
        for _ in range(10):
            assert (await http.get(f"{group.url}/health", timeout=5)).status_code == 200
    await wait_until(
        lambda: len(children(group)) == WORKERS and first.pid not in {p.pid for p in children(group)},
        15,
        "a replacement process",
    )
    replacement = next(p for p in children(group) if p.pid != second.pid)
    assert replacement.pid != first.pid and second.is_running()
    # The new process serves sockets too: connect until one lands on it.
    recorder: Recorder | None = None
    client_events: list[ClientRecorder] = []
    clients = []
    try:
        async with asyncio.timeout(20):
            while not sockets_held(replacement, group.port):
                client, events = sdk_client(group.ws_url, member.access_token)
                clients.append(client)
                client_events.append(events)
                await client.connect()
                await client.ready(timeout=10)
                if recorder is None:
                    sub, recorder = subscription(client, lounge["channel"])
                    await sub.subscribe()
                    await sub.ready(timeout=10)
        assert recorder is not None
        poster, _ = sdk_client(group.ws_url, mentor.access_token)
        clients.append(poster)
        await poster.connect()
        await poster.publish(lounge["channel"], payload(poster, message("after the replacement")))
        await recorder.wait_for(lambda r: r.stored == [1])
    finally:
        for client in clients:
            await client.disconnect()
