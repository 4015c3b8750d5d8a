"""A coach reply always ends: its worker killed (-9) or stopped (SIGTERM) mid-sentence.

Real parts: ``python -m server worker`` processes running the replies (killed and
stopped for real), the official openai SDK inside them streaming slowly from the
local OpenAI stand-in, PostgreSQL, Redis. What subscribers get is read off the
channel's Redis wire, which every web node relays to its sockets unchanged; what the
web node itself does about a dead reply (a subscribe, ``ai.cancel``) through the
official centrifuge-python SDK against a ``python -m server serve`` process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import msgspec
import pytest
from arq.constants import in_progress_key_prefix
from centrifuge import ReplyError

from server.domain.ai.coach import active_streams
from server.domain.ai.streams import (
    LiveReply,
    acquire_slot,
    active_key,
    begin_reply,
    forget_reply,
    live_key,
    reply_job_id,
    streams_key,
)
from server.domain.tables.ai import AIUsage
from server.foundation.redis import queue_name
from server.foundation.settings import Settings
from server.foundation.state import AppState
from tests.support.coach_faults import WireWatch, Worker, ai_messages, live_worker_pid, open_thread, post
from tests.support.community import Community
from tests.support.llm_standins import OpenAIStandin, running_openai_standin
from tests.support.nodes import WebNode
from tests.support.sdk import payload, sdk_client, subscription

KEY = "sk-test-coach-faults"
LEASE = 2.0
LONG = " ".join(f"w{i}" for i in range(300))  # ~1200 characters: ~15 s at 4 characters per 50 ms
SHORT = " ".join(f"word{i}" for i in range(50))  # ~2.5 s at 8 characters per 50 ms


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[OpenAIStandin]:
    async with running_openai_standin() as standin:
        yield standin


def worker_env(llm: OpenAIStandin, **more: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": llm.base_url,
        "AI_PROVIDERS": "openai",
        "AI_MAX_RETRIES": "0",
        "EMBEDDINGS_PROVIDER": "hashing",
        "AI_STREAM_LEASE_SECONDS": str(LEASE),
        "WORKER_HEALTH_CHECK_INTERVAL": "60",  # Worker.start tells a new worker's first beat apart
        **more,
    }


@pytest.fixture
def state(app) -> AppState:
    return app.state.app_state


async def _assert_nothing_left(state: AppState, channel: str, stream_id: str, user_id: str) -> None:
    """The slot, the snapshot, the live listing and the arq job of an ended reply are gone."""
    redis = state.redis
    assert await redis.zcard(active_key(state, user_id)) == 0
    assert await redis.hget(streams_key(state, channel), stream_id) is None
    assert await redis.hget(live_key(state), stream_id) is None
    assert await active_streams(state, channel) == []
    job = reply_job_id(stream_id)
    assert not await redis.exists(in_progress_key_prefix + job)
    assert await redis.zscore(queue_name(state.settings), job) is None


async def _ledger(message_id: str) -> dict:
    rows = await AIUsage.select().where(AIUsage.message == message_id)
    assert len(rows) == 1, rows
    return rows[0]


async def test_a_killed_workers_reply_is_ended_by_another_within_seconds_keeping_its_text(
    state: AppState, client, community: Community, settings: Settings, llm: OpenAIStandin
) -> None:
    llm.reset(reply=LONG, api_key=KEY, chunk_size=4, chunk_delay=0.05)
    workers = [Worker(settings, **worker_env(llm)), Worker(settings, **worker_env(llm))]
    try:
        for worker in workers:
            await worker.start()
        owner = await community.user("killed@example.com", verified=False)
        thread, channel = await open_thread(client, owner)
        async with WireWatch(settings, channel) as wire:
            await post(client, community, owner, thread, "tell me everything")
            await wire.wait_for(lambda w: len(w.of_type("ai.delta")) >= 5)
            stream_id = wire.of_type("ai.start")[0]["stream_id"]
            holder = await live_worker_pid(state, stream_id)
            victim = next(w for w in workers if w.pid == holder)
            survivor = next(w for w in workers if w is not victim)
            victim.kill()
            took = await wire.wait_for(lambda w: w.ended(stream_id) is not None, timeout=15)
            final = wire.ended(stream_id)
            streamed = wire.streamed(stream_id)

            # Ended by the surviving worker within the lease plus a reaper round.
            assert took < LEASE + 3.0, took
            assert final["type"] == "ai.error"
            message = final["message"]
            assert (message["status"], message["meta"]["error"]) == ("failed", "worker_lost")
            # Every delta subscribers saw, nothing more, nothing twice.
            assert streamed and message["text"] == streamed and LONG.startswith(streamed)
            [stored] = await ai_messages(channel)
            assert (stored["status"], stored["text"], stored["provider"]) == ("failed", streamed, "openai")
            ledger = await _ledger(message["id"])
            assert (ledger["outcome"], str(ledger["user"]), ledger["provider"]) == ("failed", owner.id, "openai")
            assert ledger["output_tokens"] > 0 and ledger["input_tokens"] > 0
            await _assert_nothing_left(state, channel, stream_id, owner.id)

            # A later ask works, answered by the survivor.
            llm.reset(reply=SHORT, api_key=KEY, chunk_size=8, chunk_delay=0.01)
            await post(client, community, owner, thread, "and now?")
            await wire.wait_for(lambda w: len(w.of_type("ai.start")) == 2)
            second = wire.of_type("ai.start")[1]["stream_id"]
            await wire.wait_for(lambda w: w.ended(second) is not None)
            assert wire.ended(second)["type"] == "ai.end"
            assert wire.ended(second)["message"]["text"] == SHORT
            assert survivor.process is not None and survivor.process.poll() is None
    finally:
        for worker in workers:
            worker.close()


async def test_a_stalled_worker_taken_for_dead_sends_and_stores_nothing_more(
    state: AppState, client, community: Community, settings: Settings, llm: OpenAIStandin
) -> None:
    """A worker frozen past its lease (SIGSTOP: a long pause, a swapped-out host) comes back
    to find the reply ended by another: it must neither stream on nor store it twice."""
    llm.reset(reply=LONG, api_key=KEY, chunk_size=4, chunk_delay=0.05)
    workers = [Worker(settings, **worker_env(llm)), Worker(settings, **worker_env(llm))]
    try:
        for worker in workers:
            await worker.start()
        owner = await community.user("frozen@example.com", verified=False)
        thread, channel = await open_thread(client, owner)
        async with WireWatch(settings, channel) as wire:
            await post(client, community, owner, thread, "tell me everything")
            await wire.wait_for(lambda w: len(w.of_type("ai.delta")) >= 5)
            stream_id = wire.of_type("ai.start")[0]["stream_id"]
            holder = await live_worker_pid(state, stream_id)
            frozen = next(w for w in workers if w.pid == holder)
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                await wire.wait_for(lambda w: w.ended(stream_id) is not None, timeout=15)
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            await asyncio.sleep(LEASE)  # the thawed worker runs on for a while
            ends = [d for _, d in wire.frames if d.get("type") in ("ai.end", "ai.error")]
            after = wire.frames[[d for _, d in wire.frames].index(ends[0]) + 1 :]
            assert len(ends) == 1 and ends[0]["message"]["meta"]["error"] == "worker_lost"
            assert [d for _, d in after if d.get("stream_id") == stream_id] == []  # nothing streamed after its end
            assert ends[0]["message"]["text"] == wire.streamed(stream_id)
        [stored] = await ai_messages(channel)
        assert stored["text"] == wire.streamed(stream_id)
        assert len(await AIUsage.select().where(AIUsage.user == owner.id)) == 1
        assert frozen.process is not None and frozen.process.poll() is None
    finally:
        for worker in workers:
            worker.close()


@pytest.mark.usefixtures("encoding")
async def test_with_no_worker_left_a_subscribe_or_a_cancel_ends_the_dead_reply(
    state: AppState, client, community: Community, settings: Settings, llm: OpenAIStandin
) -> None:
    """No dead stream is served to a subscriber as streaming, and ``ai.cancel`` on it really ends it."""
    llm.reset(reply=LONG, api_key=KEY, chunk_size=4, chunk_delay=0.05)
    worker = Worker(settings, **worker_env(llm))
    node = WebNode(settings, AI_STREAM_LEASE_SECONDS=str(LEASE))
    try:
        await asyncio.gather(worker.start(), node.start())
        owner = await community.user("alone@example.com", verified=False)
        (first, first_channel), (second, second_channel) = [await open_thread(client, owner) for _ in range(2)]
        async with WireWatch(settings, first_channel) as one, WireWatch(settings, second_channel) as two:
            await post(client, community, owner, first, "first question")
            await post(client, community, owner, second, "second question")
            for wire in (one, two):
                await wire.wait_for(lambda w: len(w.of_type("ai.delta")) >= 3)
            worker.kill()
            await asyncio.sleep(LEASE + 0.5)  # the lease lapses; no worker is left to notice
            one_id, two_id = one.of_type("ai.start")[0]["stream_id"], two.of_type("ai.start")[0]["stream_id"]

            socket, _ = sdk_client(node.ws_url, owner.access_token)
            await socket.connect()
            try:
                # Subscribing now: no snapshot of the dead reply, but its end.
                sub, seen = subscription(socket, first_channel)
                await sub.subscribe()
                await seen.wait_for(lambda r: r.of_type("ai.error"), timeout=5)
                assert seen.of_type("ai.snapshot") == []
                [ended] = seen.of_type("ai.error")
                assert (ended["stream_id"], ended["message"]["meta"]["error"]) == (one_id, "worker_lost")
                assert ended["message"]["text"] == one.streamed(one_id)

                # The asker's ai.cancel ends the other one at once.
                await socket.rpc("ai.cancel", payload(socket, {"channel": second_channel, "stream_id": two_id}))
                await two.wait_for(lambda w: w.ended(two_id) is not None, timeout=2)
                assert two.ended(two_id)["message"]["text"] == two.streamed(two_id)
                # ... and, ended, it is no longer there to cancel.
                with pytest.raises(ReplyError) as refused:
                    await socket.rpc("ai.cancel", payload(socket, {"channel": second_channel, "stream_id": two_id}))
                assert refused.value.code == 107 and "stream_not_found" in refused.value.message
            finally:
                await socket.disconnect()
        for channel, stream_id in ((first_channel, one_id), (second_channel, two_id)):
            [stored] = await ai_messages(channel)
            assert (await _ledger(stored["id"]))["outcome"] == "failed"
            await _assert_nothing_left(state, channel, stream_id, owner.id)
    finally:
        worker.close()
        await node.stop()


async def test_sigterm_lets_the_reply_finish_and_takes_no_new_one(
    state: AppState, client, community: Community, settings: Settings, llm: OpenAIStandin
) -> None:
    llm.reset(reply=SHORT, api_key=KEY, chunk_size=8, chunk_delay=0.05)
    stopping = Worker(settings, **worker_env(llm, WORKER_SHUTDOWN_GRACE_SECONDS="20"))
    successor = Worker(settings, **worker_env(llm))
    try:
        await stopping.start()
        owner = await community.user("deploy@example.com", verified=False)
        (first, first_channel), (second, second_channel) = [await open_thread(client, owner) for _ in range(2)]
        async with WireWatch(settings, first_channel) as one, WireWatch(settings, second_channel) as two:
            await post(client, community, owner, first, "finish this")
            await one.wait_for(lambda w: len(w.of_type("ai.delta")) >= 3)
            stopping.terminate()
            await asyncio.sleep(0.3)
            await post(client, community, owner, second, "asked during the deploy")
            status = await stopping.wait(timeout=20)
            stream_id = one.of_type("ai.start")[0]["stream_id"]
            final = one.ended(stream_id)
            assert status == 0
            assert final is not None and final["type"] == "ai.end", final
            assert final["message"]["text"] == SHORT and final["message"]["status"] == "complete"
            assert two.of_type("ai.start") == []  # the stopping worker took no new reply

            await successor.start()  # the next worker answers what was asked meanwhile
            await two.wait_for(lambda w: w.of_type("ai.start") and w.ended(w.of_type("ai.start")[0]["stream_id"]))
            assert two.ended(two.of_type("ai.start")[0]["stream_id"])["message"]["text"] == SHORT
        assert (await _ledger(final["message"]["id"]))["outcome"] == "complete"
        await _assert_nothing_left(state, first_channel, stream_id, owner.id)
    finally:
        stopping.close()
        successor.close()


async def test_a_reply_still_running_when_the_grace_ends_is_stored_as_interrupted_once(
    state: AppState, client, community: Community, settings: Settings, llm: OpenAIStandin
) -> None:
    llm.reset(reply=LONG, api_key=KEY, chunk_size=4, chunk_delay=0.05)
    stopping = Worker(settings, **worker_env(llm, WORKER_SHUTDOWN_GRACE_SECONDS="1"))
    successor = Worker(settings, **worker_env(llm))
    try:
        await stopping.start()
        owner = await community.user("cut@example.com", verified=False)
        thread, channel = await open_thread(client, owner)
        async with WireWatch(settings, channel) as wire:
            await post(client, community, owner, thread, "go on forever")
            await wire.wait_for(lambda w: len(w.of_type("ai.delta")) >= 3)
            stopping.terminate()
            assert await stopping.wait(timeout=10) == 0
            stream_id = wire.of_type("ai.start")[0]["stream_id"]
            await wire.wait_for(lambda w: w.ended(stream_id) is not None, timeout=5)
            final = wire.ended(stream_id)
            assert final["type"] == "ai.error" and final["message"]["meta"]["error"] == "interrupted"
            assert final["message"]["text"] == wire.streamed(stream_id) != ""

            # arq hands the cancelled job to the next worker: it sees the reply ended, and
            # stores nothing twice; the asker's next question is answered.
            await successor.start()
            llm.reset(reply=SHORT, api_key=KEY, chunk_size=8, chunk_delay=0.01)
            await post(client, community, owner, thread, "still there?")
            await wire.wait_for(lambda w: len(w.of_type("ai.start")) == 2)
            second = wire.of_type("ai.start")[1]["stream_id"]
            await wire.wait_for(lambda w: w.ended(second) is not None)
            assert wire.ended(second)["message"]["text"] == SHORT
            assert [d["stream_id"] for d in wire.of_type("ai.error")] == [stream_id]
        assert [m["status"] for m in await ai_messages(channel)] == ["failed", "complete"]
        assert (await _ledger(final["message"]["id"]))["outcome"] == "failed"
        await _assert_nothing_left(state, channel, stream_id, owner.id)
    finally:
        stopping.close()
        successor.close()


async def test_slots_free_themselves_and_a_refused_ask_extends_nothing(
    state: AppState, settings: Settings, community: Community
) -> None:
    """A worker that dies between taking a slot and listing its reply cannot leak the slot."""
    user = "5a3f7c1e-0d2b-4c4e-9f6a-2b8d1e0c7a91"
    short = AppState(
        settings=msgspec.structs.replace(settings, ai_stream_lease_seconds=1.0), engine=state.engine, redis=state.redis
    )
    assert await acquire_slot(short, user, "a") and await acquire_slot(short, user, "b")
    scores = await state.redis.zrange(active_key(state, user), 0, -1, withscores=True)
    for _ in range(3):
        assert not await acquire_slot(short, user, "c")  # AI_MAX_CONCURRENT_PER_USER = 2
    assert await state.redis.zrange(active_key(state, user), 0, -1, withscores=True) == scores
    await asyncio.sleep(1.1)  # nobody renews the leases of a and b
    assert await acquire_slot(short, user, "c")
    live = LiveReply(stream_id="c", channel="thread:" + user, user_id=user, reply_to=1, worker="test")
    await begin_reply(short, live)
    await forget_reply(short, live)
    assert await state.redis.zcard(active_key(state, user)) == 0
