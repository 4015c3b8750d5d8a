"""JSON and Protobuf clients in one lounge across two nodes see one and the same room.

Two ``python -m server serve`` nodes on a private Redis (tests/support/cluster.py), an
arq worker running the offline coach, and in one lounge: centrifuge-python clients
in JSON and in Protobuf on each node, two more behind TCP proxies (one of each
encoding) whose links are cut, and the official centrifuge-js SDK in its Protobuf
build. Each encoding carries the same JSON documents (in Protobuf as bytes), so once
decoded every subscriber must hold exactly the same stored publications (the same
offsets, the same data, in order, no gap, no duplicate), the same coach stream, and
the same join and leave pushes.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from centrifuge import Client, ClientState

from server.foundation.settings import Settings
from tests.support.cluster import Cluster, message, stored_log, wait_until
from tests.support.community import Community
from tests.support.js_sdk import JsListener
from tests.support.nodes import WorkerProcess
from tests.support.sdk import Encoding, Recorder, decoded, payload, subscription

# The coach answers with the offline provider (~70 words, a few dozen deltas); no model to load.
COACH_ENV = {"AI_PROVIDERS": "offline", "EMBEDDINGS_PROVIDER": "hashing", "AI_OFFLINE_WORDS_PER_SECOND": "100"}
PER_PUBLISHER_LIVE = 12
PER_PUBLISHER_WHILE_CUT = 4


@pytest.fixture
async def coach_worker(cluster: Cluster, settings: Settings) -> AsyncIterator[WorkerProcess]:
    """An arq worker on the cluster's private Redis, where its nodes queue the coach's replies."""
    on_private = msgspec.structs.replace(settings, redis_url=cluster.redis.url)
    worker = await WorkerProcess(on_private, **COACH_ENV).start()
    yield worker
    await worker.stop()


def stored_stream(publications: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Stored publications as (offset, decoded data), in arrival order."""
    return [(offset, data) for offset, data in publications if offset]


def coach_stream(publications: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """The coach's frames (ephemeral and stored), in arrival order."""
    return [(offset, data) for offset, data in publications if str(data.get("type", "")).startswith("ai.")]


def presence_events(watcher: Recorder | JsListener, clients: set[str]) -> list[tuple[str, str, str, Any]]:
    """The join and leave pushes a watcher got about ``clients``: (kind, client, user, conn_info
    decoded), joins first."""
    if isinstance(watcher, JsListener):
        joins = [(i["client"], i["user"], i["conn_info"]) for i in watcher.joins]
        leaves = [(i["client"], i["user"], i["conn_info"]) for i in watcher.leaves]
    else:
        joins = [(j.info.client, j.info.user, decoded(j.info.conn_info)) for j in watcher.joins]
        leaves = [(j.info.client, j.info.user, decoded(j.info.conn_info)) for j in watcher.leaves]
    return sorted(("join", *j) for j in joins if j[0] in clients) + sorted(
        ("leave", *j) for j in leaves if j[0] in clients
    )


async def test_json_and_protobuf_clients_share_one_room_across_two_nodes(
    cluster: Cluster, community: Community, coach_worker: WorkerProcess
) -> None:
    """Four publishers (JSON and Protobuf on each node) post at once; every subscriber
    (both encodings on both nodes, and centrifuge-js in Protobuf) sees the same stored
    stream. A JSON and a Protobuf subscriber lose their link while the room keeps
    talking and recover, each on the other node, exactly what they missed. Join and
    leave pushes and a coach reply's stream reach every encoding alike."""
    tag = uuid.uuid4().hex[:8]
    (node_a, node_b), mentor = await asyncio.gather(
        cluster.start_nodes(**COACH_ENV), community.mentor(f"mixed-mentor-{tag}@example.com")
    )
    lounge = await community.lounge(mentor, ai_reply_policy="mention")
    channel = lounge["channel"]
    members = []
    for index in range(6):
        member = await community.user(f"mixed-member-{index}-{tag}@example.com")
        assert (await community.join(member, lounge)).status_code in (200, 201)
        members.append(member)
    alice, bob, carol, dave, erin, frank = members

    # Subscribers, named by encoding and node, all asking for join and leave pushes.
    recorders: dict[str, Recorder] = {}
    publishers: dict[str, Client] = {}

    async def join_room(name: str, url: str, account: Any, encoding: Encoding) -> Client:
        client, _ = await cluster.connect(url, account, encoding=encoding)
        sub, recorders[name] = subscription(client, channel, join_leave=True)
        await sub.subscribe()
        await sub.ready(timeout=10)
        return client

    publishers["json@A"] = await join_room("json@A", node_a.ws_url, mentor, "json")
    publishers["protobuf@A"] = await join_room("protobuf@A", node_a.ws_url, alice, "protobuf")
    publishers["json@B"] = await join_room("json@B", node_b.ws_url, bob, "json")
    publishers["protobuf@B"] = await join_room("protobuf@B", node_b.ws_url, carol, "protobuf")
    # Each behind its own network path, cut later; each comes back on the other node.
    link_to_a = await cluster.proxy(node_a)
    link_to_b = await cluster.proxy(node_b)
    cut = {
        "protobuf@A, cut": await join_room("protobuf@A, cut", link_to_a.ws_url, dave, "protobuf"),
        "json@B, cut": await join_room("json@B, cut", link_to_b.ws_url, erin, "json"),
    }

    async with JsListener(node_b.ws_url, frank.access_token, channel, encoding="protobuf", join_leave=True) as js:
        watchers: dict[str, Recorder | JsListener] = {**recorders, "centrifuge-js protobuf@B": js}
        published: list[str] = []

        async def talk(per_publisher: int, phase: str) -> None:
            async def publish(name: str, client: Client) -> None:
                for index in range(per_publisher):
                    client_id = str(uuid.uuid4())
                    await client.publish(channel, payload(client, message(f"{name} {phase} #{index}", client_id)))
                    published.append(client_id)  # acknowledged; any error fails the test

            async with asyncio.timeout(30):
                await asyncio.gather(*(publish(name, client) for name, client in publishers.items()))

        async def everyone_has(count: int, timeout: float = 15) -> None:
            try:
                await wait_until(lambda: all(len(w.stored) >= count for w in watchers.values()), timeout, "")
            except AssertionError:
                lagging = {n: (len(w.stored), w.stored[-3:]) for n, w in watchers.items() if len(w.stored) < count}
                raise AssertionError(f"after {timeout} s these lack some of {count} publications: {lagging}") from None

        # 1) Everyone talks at once, from both nodes and in both encodings.
        await talk(PER_PUBLISHER_LIVE, "live")
        live = len(publishers) * PER_PUBLISHER_LIVE
        await everyone_has(live)

        # 2) Two subscribers (one per encoding) lose their link; the room keeps talking.
        for link in (link_to_a, link_to_b):
            link.backends = []
            assert await link.sever() >= 1
        await wait_until(
            lambda: all(client.state == ClientState.CONNECTING for client in cut.values()), 5, "the cut clients notice"
        )
        await talk(PER_PUBLISHER_WHILE_CUT, "while two are cut off")
        link_to_a.backends = [("127.0.0.1", node_b.port)]
        link_to_b.backends = [("127.0.0.1", node_a.port)]
        total = live + len(publishers) * PER_PUBLISHER_WHILE_CUT
        await everyone_has(total)
        for name in cut:
            context = recorders[name].subscribed[-1]
            assert len(recorders[name].subscribed) == 2 and context.was_recovering and context.recovered, name
        assert link_to_a.routed[-1] == node_b.port and link_to_b.routed[-1] == node_a.port

        # 3) A newcomer comes and goes in each encoding, on each node: everyone hears of it alike.
        newcomers = {}
        for url, encoding in ((node_a.ws_url, "json"), (node_b.ws_url, "protobuf")):
            newcomer, _ = await cluster.connect(url, frank, encoding=encoding)
            sub, _ = subscription(newcomer, channel)
            await sub.subscribe()
            await sub.ready(timeout=10)
            newcomers[newcomer.client_id] = sub
        clients = set(newcomers)
        await wait_until(
            lambda: all(
                len([e for e in presence_events(w, clients) if e[0] == "join"]) == 2 for w in watchers.values()
            ),
            10,
            "every subscriber hears both joins",
        )
        for sub in newcomers.values():
            await sub.unsubscribe()
        await wait_until(
            lambda: all(len(presence_events(w, clients)) == 4 for w in watchers.values()),
            10,
            "every subscriber hears both leaves",
        )

        # 4) The coach answers a mention: its streamed reply reaches every encoding alike.
        await publishers["json@B"].publish(
            channel, payload(publishers["json@B"], message("@coach how do I keep a steady pace?"))
        )
        await wait_until(
            lambda: all(
                any(d.get("type") == "ai.end" for _, d in coach_stream(w.publications)) for w in watchers.values()
            ),
            30,
            "every subscriber has the coach's ai.end",
        )
        await asyncio.sleep(0.3)  # a late duplicate would arrive now
    assert js.errors == [] and js.summary is not None, (js.errors, js.summary)

    # The log: every acknowledged message once, then the mention and the coach's reply.
    log = await stored_log(channel)
    everything = total + 2
    assert [offset for offset, _ in log] == list(range(1, everything + 1))
    assert sorted(client_id for _, client_id in log[:total]) == sorted(published)

    # Every subscriber: exactly that log, decoded to the same data, in the same order.
    reference = stored_stream(recorders["json@A"].publications)
    assert [offset for offset, _ in reference] == list(range(1, everything + 1)), [o for o, _ in reference]
    assert [d["message"]["client_id"] for _, d in reference[:total]] == [c for _, c in log[:total]]
    assert reference[-2][1]["type"] == "message" and reference[-1][1]["type"] == "ai.end"
    authors = [d["message"]["text"].split(" ")[0] for _, d in reference[:live]]
    switches = sum(1 for before, after in itertools.pairwise(authors) if before != after)
    assert len(set(authors)) == 4 and switches >= 3, f"the publishers did not run concurrently: {authors}"
    for name, watcher in watchers.items():
        stream = stored_stream(watcher.publications)
        offsets = [offset for offset, _ in stream]
        assert offsets == list(range(1, everything + 1)), f"{name}: offsets {offsets}"
        assert stream == reference, f"{name} decoded other data than json@A"

    # The coach's stream: the same frames in the same order for everyone.
    coach = coach_stream(recorders["json@A"].publications)
    kinds = [d["type"] for _, d in coach]
    assert kinds[0] == "ai.start" and kinds[-1] == "ai.end" and kinds.count("ai.delta") >= 3, kinds
    assert [d["seq"] for _, d in coach if d["type"] == "ai.delta"] == list(range(1, kinds.count("ai.delta") + 1))
    assert all(offset == 0 for offset, d in coach if d["type"] != "ai.end")
    assert coach[-1][0] == everything and coach[-1][1]["message"]["status"] == "complete"
    text = "".join(d["text"] for _, d in coach if d["type"] == "ai.delta")
    assert text == coach[-1][1]["message"]["text"]
    for name, watcher in watchers.items():
        assert coach_stream(watcher.publications) == coach, f"{name} saw another coach stream than json@A"

    # Join and leave: one each per newcomer, the same for everyone.
    expected = [
        *sorted(("join", client, frank.id) for client in clients),
        *sorted(("leave", client, frank.id) for client in clients),
    ]
    events = {name: presence_events(watcher, clients) for name, watcher in watchers.items()}
    for name, seen_events in events.items():
        assert [e[:3] for e in seen_events] == expected, f"{name}: {seen_events}"
        assert seen_events == events["json@A"], f"{name}: {seen_events} != json@A's {events['json@A']}"

    # centrifuge-js really spoke Protobuf.
    assert set(js.data_kinds) == {"bytes"} and js.summary["wire"]["subprotocols"] == ["centrifuge-protobuf"]
    assert js.summary["wire"]["received"]["text"] == js.summary["wire"]["sent"]["text"] == 0
