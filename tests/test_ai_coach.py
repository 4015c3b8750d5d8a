"""The coach in rooms: streamed to every subscriber, resumable, cancellable, accounted.

Real parts: a web process, an arq worker process running the replies, the
official centrifuge-python SDK as clients, and the official openai SDK (inside
the worker) talking to a local stand-in that streams like OpenAI does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from centrifuge import ReplyError

from server.domain.tables.ai import AIUsage
from server.domain.tables.chat import Message, SenderType
from server.domain.tables.knowledge import KnowledgeChunk
from server.foundation.settings import Settings
from tests.support.community import Community
from tests.support.llm_standins import OpenAIStandin, running_openai_standin
from tests.support.nodes import WebNode, WorkerProcess
from tests.support.sdk import Recorder, payload, sdk_client, subscription

KEY = "sk-test-coach"
REPLY = " ".join(f"word{i}" for i in range(60))
LOUNGES = "/api/v1/lounges"


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[OpenAIStandin]:
    async with running_openai_standin() as standin:
        yield standin


@pytest.fixture(scope="module")
async def processes(settings: Settings, llm: OpenAIStandin) -> AsyncIterator[WebNode]:
    """A web node and a worker whose coach streams from the OpenAI stand-in (then the offline one)."""
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": llm.base_url,
        "AI_PROVIDERS": "openai,offline",
        "EMBEDDINGS_PROVIDER": "hashing",
        "AI_MAX_RETRIES": "0",
    }
    node, worker = await asyncio.gather(WebNode(settings, **env).start(), WorkerProcess(settings, **env).start())
    yield node
    await asyncio.gather(worker.stop(), node.stop())


@pytest.fixture
def stack(app, processes: WebNode, llm: OpenAIStandin) -> tuple[WebNode, OpenAIStandin]:
    llm.reset(reply=REPLY, api_key=KEY, chunk_size=8, chunk_delay=0.02)  # ~50 chunks over ~1 s
    return processes, llm


def coach_frames(recorder: Recorder) -> list[tuple[int, dict[str, Any]]]:
    return [(o, d) for o, d in recorder.publications if str(d.get("type", "")).startswith("ai.")]


def streamed_text(recorder: Recorder, stream_id: str, after_seq: int = 0) -> str:
    return "".join(
        d["text"]
        for _, d in recorder.publications
        if d.get("type") == "ai.delta" and d["stream_id"] == stream_id and d["seq"] > after_seq
    )


def ended(recorder: Recorder) -> dict[str, Any] | None:
    ends = [d for _, d in recorder.publications if d.get("type") in ("ai.end", "ai.error")]
    return ends[-1] if ends else None


async def _room(community: Community, policy: str = "always") -> tuple[dict, list]:
    mentor = await community.mentor("coach-mentor@example.com")
    lounge = await community.lounge(mentor, ai_reply_policy=policy, ai_persona="Answer like a running coach.")
    members = [mentor]
    for i in range(3):
        member = await community.user(f"member{i}@example.com")
        await community.join(member, lounge)
        members.append(member)
    return lounge, members


@pytest.mark.usefixtures("encoding")
async def test_three_clients_see_the_same_stream_and_the_same_stored_reply(stack, community: Community) -> None:
    node, llm = stack
    lounge, (_, *members) = await _room(community)
    clients, recorders = [], []
    try:
        for member in members:
            client, _ = sdk_client(node.ws_url, member.access_token)
            await client.connect()
            sub, recorder = subscription(client, lounge["channel"])
            await sub.subscribe()
            await sub.ready()
            clients.append((client, sub))
            recorders.append(recorder)
        await clients[0][1].publish(
            payload(clients[0][1], {"text": "How do I keep a pace?", "client_id": str(uuid.uuid4())})
        )
        for recorder in recorders:
            await recorder.wait_for(lambda r: ended(r) is not None, timeout=20)
    finally:
        for client, _ in clients:
            await client.disconnect()

    sequences = [[d["seq"] for _, d in r.publications if d.get("type") == "ai.delta"] for r in recorders]
    assert sequences[0] == list(range(1, len(sequences[0]) + 1)) and len(sequences[0]) > 3
    assert sequences[0] == sequences[1] == sequences[2]
    finals = [ended(r) for r in recorders]
    assert {f["type"] for f in finals} == {"ai.end"}
    message = finals[0]["message"]
    assert all(f["message"] == message for f in finals)
    assert message["text"] == REPLY and message["status"] == "complete" and message["offset"] == 2
    assert message["sender"]["type"] == "ai" and message["reply_to"] == 1
    assert streamed_text(recorders[0], finals[0]["stream_id"]) == REPLY
    first = [d["type"] for _, d in coach_frames(recorders[1])]
    assert first[0] == "ai.start" and first[-1] == "ai.end"
    # Deltas are ephemeral, the end is stored with its offset.
    assert all(o == 0 for o, d in recorders[1].publications if d.get("type") in ("ai.start", "ai.delta"))
    assert [o for o, d in recorders[1].publications if d.get("type") == "ai.end"] == [2]

    stored = (
        await Message.select().where(Message.channel == lounge["channel"], Message.sender_type == SenderType.ai).first()
    )
    assert (stored["status"], stored["provider"], stored["model"]) == ("complete", "openai", "gpt-4o-mini")
    assert stored["output_tokens"] > 0 and stored["input_tokens"] > 0
    usage = await AIUsage.select().where(AIUsage.message == stored["id"]).first()
    assert (usage["outcome"], usage["provider"], str(usage["user"])) == ("complete", "openai", members[0].id)
    assert "running coach" in llm.last.body["messages"][0]["content"]


@pytest.mark.usefixtures("encoding")
async def test_a_late_subscriber_gets_a_snapshot_then_the_rest(stack, community: Community) -> None:
    node, llm = stack
    llm.reset(reply=REPLY, api_key=KEY, chunk_size=4, chunk_delay=0.03)  # ~3 s of streaming
    lounge, (_, asker, late, _) = await _room(community)
    asking, _ = sdk_client(node.ws_url, asker.access_token)
    joining, _ = sdk_client(node.ws_url, late.access_token)
    await asking.connect()
    await joining.connect()
    try:
        sub, seen = subscription(asking, lounge["channel"])
        await sub.subscribe()
        await sub.ready()
        await sub.publish(payload(sub, {"text": "tell me everything", "client_id": str(uuid.uuid4())}))
        await seen.wait_for(
            lambda r: len([1 for _, d in r.publications if d.get("type") == "ai.delta"]) >= 5, timeout=20
        )
        late_sub, late_seen = subscription(joining, lounge["channel"])
        await late_sub.subscribe()
        await late_seen.wait_for(lambda r: ended(r) is not None, timeout=20)
    finally:
        await asking.disconnect()
        await joining.disconnect()
    kinds = [d["type"] for _, d in coach_frames(late_seen)]
    assert kinds[0] == "ai.snapshot", kinds
    snapshot = coach_frames(late_seen)[0][1]
    assert snapshot["seq"] >= 1 and snapshot["text"]
    final = ended(late_seen)["message"]["text"]
    assert (
        snapshot["text"] + streamed_text(late_seen, snapshot["stream_id"], after_seq=snapshot["seq"]) == final == REPLY
    )


@pytest.mark.usefixtures("encoding")
async def test_cancel_stops_within_a_second_and_keeps_the_partial_text(stack, community: Community) -> None:
    node, llm = stack
    llm.reset(reply=" ".join(f"w{i}" for i in range(400)), api_key=KEY, chunk_size=4, chunk_delay=0.05)
    lounge, (_, asker, *_) = await _room(community)
    client, _ = sdk_client(node.ws_url, asker.access_token)
    await client.connect()
    try:
        sub, seen = subscription(client, lounge["channel"])
        await sub.subscribe()
        await sub.ready()
        await sub.publish(payload(sub, {"text": "go on forever", "client_id": str(uuid.uuid4())}))
        await seen.wait_for(lambda r: len(r.of_type("ai.delta")) >= 3, timeout=20)
        stream_id = seen.of_type("ai.start")[0]["stream_id"]
        started = asyncio.get_running_loop().time()
        await client.rpc("ai.cancel", payload(client, {"channel": lounge["channel"], "stream_id": stream_id}))
        await seen.wait_for(lambda r: ended(r) is not None, timeout=5)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await client.disconnect()
    final = ended(seen)
    assert final["type"] == "ai.end" and final["message"]["status"] == "cancelled"
    assert elapsed < 1.0
    partial = final["message"]["text"]
    assert partial and len(partial.split()) < 400
    stored = (
        await Message.select().where(Message.channel == lounge["channel"], Message.sender_type == SenderType.ai).first()
    )
    assert (stored["status"], stored["text"]) == ("cancelled", partial)
    usage = await AIUsage.select().where(AIUsage.message == stored["id"]).first()
    assert usage["outcome"] == "cancelled" and usage["output_tokens"] > 0


@pytest.mark.usefixtures("encoding")
async def test_the_askers_disconnect_does_not_stop_the_reply_and_recovery_delivers_it(
    stack, community: Community
) -> None:
    node, _llm = stack
    lounge, (_, asker, watcher, _) = await _room(community)
    asking, _ = sdk_client(node.ws_url, asker.access_token)
    watching, _ = sdk_client(node.ws_url, watcher.access_token)
    await asking.connect()
    await watching.connect()
    try:
        sub, seen = subscription(asking, lounge["channel"])
        watch_sub, watched = subscription(watching, lounge["channel"])
        for s in (sub, watch_sub):
            await s.subscribe()
            await s.ready()
        await sub.publish(payload(sub, {"text": "I'll be right back", "client_id": str(uuid.uuid4())}))
        await seen.wait_for(lambda r: bool(r.of_type("ai.start")), timeout=20)
        await asking.disconnect()
        await watched.wait_for(lambda r: ended(r) is not None, timeout=20)
        assert ended(watched)["message"]["status"] == "complete"
        await asking.connect()
        await seen.wait_for(lambda r: ended(r) is not None and r.subscribed[-1].recovered, timeout=10)
    finally:
        await asking.disconnect()
        await watching.disconnect()
    assert ended(seen)["message"]["text"] == REPLY


async def test_policies_mentions_pause_and_fallback(stack, community: Community, client) -> None:
    _node, llm = stack
    lounge, (mentor, asker, *_) = await _room(community, policy="mention")
    path = f"{LOUNGES}/{lounge['id']}"
    await community.post(asker, path, "just chatting")
    await community.post(asker, path, "@coach what now?")
    await _wait_ai_messages(lounge["channel"], 1)

    await client.put(path, json={"ai_paused": True}, headers=mentor.headers)
    await community.post(asker, path, "@coach are you there?")
    await asyncio.sleep(1.0)
    assert await Message.count().where(Message.channel == lounge["channel"], Message.sender_type == SenderType.ai) == 1

    llm.reset(reply=REPLY, api_key=KEY, fail_status=500, fail_times=100)
    await client.put(path, json={"ai_paused": False, "ai_reply_policy": "always"}, headers=mentor.headers)
    await community.post(asker, path, "what if the provider is down?")
    [_, fallback] = await _wait_ai_messages(lounge["channel"], 2)
    assert fallback["provider"] == "offline" and fallback["status"] == "complete" and fallback["text"]


async def test_threads_always_answer_including_posts_over_rest(stack, community: Community, client) -> None:
    _node, llm = stack
    owner = await community.user("thinker@example.com", verified=False)
    thread = (await client.post("/api/v1/chat/threads", json={}, headers=owner.headers)).json()
    await community.post(owner, f"/api/v1/chat/threads/{thread['id']}", "Help me plan my week")
    [reply] = await _wait_ai_messages(thread["channel"], 1)
    assert reply["text"] == REPLY and reply["reply_to"] == 1
    # The first exchange names the thread: the model was asked for a title (the stand-in
    # answers every request with REPLY, so the title is its first sixty characters).
    async with asyncio.timeout(10):
        while (
            title := (await client.get(f"/api/v1/chat/threads/{thread['id']}", headers=owner.headers)).json()["title"]
        ) == "New conversation":
            await asyncio.sleep(0.1)
    assert title == REPLY[:60].strip()
    assert "title" in llm.last.body["messages"][0]["content"]


async def _wait_ai_messages(channel: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while True:
            rows = (
                await Message.select()
                .where(Message.channel == channel, Message.sender_type == SenderType.ai)
                .order_by(Message.offset)
            )
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.1)


async def test_a_note_is_retrieved_cited_and_sent_to_the_model(stack, community: Community, client) -> None:
    _node, llm = stack
    owner = await community.user("noted@example.com", verified=False)
    other = await community.user("stranger-notes@example.com", verified=False)
    for who, title, content in (
        (owner, "Marathon plan", "Long run every Sunday at a conversational pace, then 20 minutes of stretching."),
        (other, "Secret marathon plan", "Never share: run hills on Sunday with a heart-rate strap."),
    ):
        created = await client.post("/api/v1/notes", json={"title": title, "content": content}, headers=who.headers)
        assert created.status_code == 201, created.text
    note_id = (await client.get("/api/v1/notes", headers=owner.headers)).json()["items"][0]["id"]
    async with asyncio.timeout(20):  # the worker process indexes notes after they are saved
        while await KnowledgeChunk.count().where(KnowledgeChunk.source_type == "note") < 2:
            await asyncio.sleep(0.1)

    thread = (await client.post("/api/v1/chat/threads", json={}, headers=owner.headers)).json()
    await community.post(owner, f"/api/v1/chat/threads/{thread['id']}", "How should I do my Sunday long run?")
    [reply] = await _wait_ai_messages(thread["channel"], 1)
    citations = (
        msgspec.json.decode(reply["meta"])["citations"]
        if isinstance(reply["meta"], str)
        else reply["meta"]["citations"]
    )
    assert [c["source_id"] for c in citations] == [note_id]
    assert citations[0]["source"] == "note" and citations[0]["title"] == "Marathon plan"
    sent = llm.requests[0].body["messages"][0]["content"]
    assert "conversational pace" in sent and "heart-rate strap" not in sent


@pytest.mark.usefixtures("encoding")
async def test_budgets_and_concurrency_limits_answer_with_ai_error(stack, community: Community) -> None:
    node, llm = stack
    llm.reset(reply=REPLY, api_key=KEY, chunk_size=4, chunk_delay=0.05)  # ~5 s per reply
    lounge, (_mentor, asker, bystander, _) = await _room(community)
    client, _ = sdk_client(node.ws_url, asker.access_token)
    watcher, _ = sdk_client(node.ws_url, bystander.access_token)
    await client.connect()
    await watcher.connect()
    try:
        sub, seen = subscription(client, lounge["channel"])
        await sub.subscribe()
        await sub.ready()
        for i in range(3):  # at most two replies per user at once (AI_MAX_CONCURRENT_PER_USER)
            await sub.publish(payload(sub, {"text": f"question {i}", "client_id": str(uuid.uuid4())}))
        await seen.wait_for(
            lambda r: any(d.get("code") == "ai_busy" for d in r.of_type("ai.error")) and r.of_type("ai.start"),
            timeout=20,
        )

        stream_id = seen.of_type("ai.start")[0]["stream_id"]
        watch_sub, _ = subscription(watcher, lounge["channel"])
        await watch_sub.subscribe()
        with pytest.raises(ReplyError) as refused:
            await watcher.rpc("ai.cancel", payload(watcher, {"channel": lounge["channel"], "stream_id": stream_id}))
        assert refused.value.code == 103
        await seen.wait_for(lambda r: len([d for d in r.of_type("ai.end")]) == 2, timeout=30)

        await AIUsage.insert(
            AIUsage(
                user=uuid.UUID(asker.id),
                provider="openai",
                model="m",
                input_tokens=200_000,
                output_tokens=0,
                outcome="complete",
            )
        )
        await sub.publish(payload(sub, {"text": "one more?", "client_id": str(uuid.uuid4())}))
        await seen.wait_for(
            lambda r: any(d.get("code") == "ai_budget_exceeded" for d in r.of_type("ai.error")), timeout=20
        )
    finally:
        await client.disconnect()
        await watcher.disconnect()


@pytest.mark.usefixtures("encoding")
async def test_the_mentor_may_cancel_anyones_reply(stack, community: Community) -> None:
    node, llm = stack
    llm.reset(reply=" ".join(f"w{i}" for i in range(400)), api_key=KEY, chunk_size=4, chunk_delay=0.05)
    lounge, (mentor, asker, *_) = await _room(community)
    asking, _ = sdk_client(node.ws_url, asker.access_token)
    moderating, _ = sdk_client(node.ws_url, mentor.access_token)
    await asking.connect()
    await moderating.connect()
    try:
        sub, seen = subscription(asking, lounge["channel"])
        await sub.subscribe()
        await sub.ready()
        await sub.publish(payload(sub, {"text": "talk a lot please", "client_id": str(uuid.uuid4())}))
        await seen.wait_for(lambda r: bool(r.of_type("ai.delta")), timeout=20)
        mentor_sub, _ = subscription(moderating, lounge["channel"])
        await mentor_sub.subscribe()
        await mentor_sub.ready()
        stream_id = seen.of_type("ai.start")[0]["stream_id"]
        await moderating.rpc("ai.cancel", payload(moderating, {"channel": lounge["channel"], "stream_id": stream_id}))
        await seen.wait_for(lambda r: ended(r) is not None, timeout=5)
    finally:
        await asking.disconnect()
        await moderating.disconnect()
    assert ended(seen)["message"]["status"] == "cancelled"
