"""Helpers for tests that break coach replies on purpose: what travels on a channel's
Redis wire (what every web node relays to its sockets), real worker processes, threads."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis

from server.domain.ai.streams import live_key
from server.domain.tables.chat import Message, SenderType
from server.foundation.settings import Settings
from server.foundation.state import AppState
from server.streams.broker import pubsub_channel
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.nodes import ROOT, node_env
from tests.support.shard_listen import listening
from workers.main import health_check_key


class WireWatch:
    """Every frame published for one channel, read straight off its (sharded) Redis pub/sub channel."""

    def __init__(self, settings: Settings, channel: str) -> None:
        self.redis = Redis.from_url(settings.redis_url or "")
        self.wire = pubsub_channel(settings.redis_prefix, channel)
        self.frames: list[tuple[int, dict[str, Any]]] = []  # (offset: 0 when ephemeral, data)
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WireWatch:
        heard = await self._stack.enter_async_context(listening(self.redis, self.wire))
        self._task = asyncio.create_task(self._read(heard))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stack.aclose()
        await self.redis.aclose()

    async def _read(self, heard: asyncio.Queue[bytes]) -> None:
        while True:
            _kind, offset, _epoch, data = msgspec.json.decode(await heard.get())[:4]
            self.frames.append((offset, data))

    def of_type(self, kind: str, stream_id: str | None = None) -> list[dict[str, Any]]:
        return [
            d for _, d in self.frames if d.get("type") == kind and (stream_id is None or d["stream_id"] == stream_id)
        ]

    def streamed(self, stream_id: str) -> str:
        """The reply's text as a client builds it: each seq once (a delta whose publish was
        cut off may go out again under its seq, docs/clients.md)."""
        texts: dict[int, str] = {}
        for delta in self.of_type("ai.delta", stream_id):
            texts.setdefault(delta["seq"], delta["text"])
        return "".join(texts[seq] for seq in sorted(texts))

    def ended(self, stream_id: str) -> dict[str, Any] | None:
        ends = [d for _, d in self.frames if d.get("type") in ("ai.end", "ai.error") and d["stream_id"] == stream_id]
        return ends[-1] if ends else None

    async def wait_for(self, predicate: Callable[[WireWatch], Any], timeout: float = 20.0) -> float:
        """Wait until ``predicate(self)`` holds; returns the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.02)
        return loop.time() - started


class Worker:
    """One ``python -m server worker`` process that a test may kill (-9) or stop (SIGTERM)."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.settings = settings
        self.env = node_env(settings, **env)
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> Worker:
        """Start and wait until this process (not another worker) wrote the heartbeat."""
        redis = Redis.from_url(self.settings.redis_url or "")
        key = health_check_key(self.settings)
        try:
            await redis.delete(key)
            self.process = subprocess.Popen([sys.executable, "-m", "server", "worker"], cwd=ROOT, env=self.env)
            async with asyncio.timeout(timeout):
                while not await redis.exists(key):
                    if self.process.poll() is not None:
                        raise RuntimeError(f"worker exited with {self.process.returncode}")
                    await asyncio.sleep(0.05)
        finally:
            await redis.aclose()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def close(self) -> None:
        self.kill()


async def open_thread(client: httpx.AsyncClient, owner: Account) -> tuple[str, str]:
    """A new thread of ``owner`` (the coach answers every message there): its id and channel."""
    thread = (await client.post("/api/v1/chat/threads", json={}, headers=owner.headers)).json()
    return thread["id"], thread["channel"]


async def post(client: httpx.AsyncClient, community: Community, owner: Account, thread: str, text: str) -> None:
    response = await community.post(owner, f"/api/v1/chat/threads/{thread}", text)
    assert response.status_code == 201, response.text


async def live_worker_pid(state: AppState, stream_id: str) -> int:
    """The pid of the worker holding the live reply ``stream_id`` (from its lease record)."""
    raw = await state.redis.hget(live_key(state), stream_id)
    assert raw is not None, "the reply is not live"
    return int(msgspec.json.decode(raw)["worker"].rsplit(":", 1)[1])


async def ai_messages(channel: str) -> list[dict[str, Any]]:
    return await (
        Message.select()
        .where(Message.channel == channel, Message.sender_type == SenderType.ai)
        .order_by(Message.offset)
    )


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
