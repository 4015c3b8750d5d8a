"""Real web processes (``python -m server serve``) for tests that need sockets and several nodes.

Each node shares the test worker's database, Redis and signing keys with the
in-process app, so accounts and lounges made through the in-process client
are the ones the sockets see.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import httpx

from server.foundation.settings import Settings
from workers.main import health_check_key

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "REDIS_PREFIX": settings.redis_prefix,
        "JWT_KEYS": ",".join(settings.jwt_keys),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "console",
        "DB_POOL_MAX_SIZE": "10",
        "AI_OFFLINE_WORDS_PER_SECOND": str(settings.ai_offline_words_per_second),
    }
    env.update(overrides)
    return env


class WebNode:
    """One ``python -m server serve`` process on a free port (``ws_protocol``: its
    ``--ws-protocol``, the gateway's frame-writing one by default). ``launcher``: the
    Python arguments before ``serve`` (e.g. ``-c`` code that patches, then runs the CLI);
    ``stderr``: where its log goes (inherited by default)."""

    def __init__(
        self,
        settings: Settings,
        ws_protocol: str = "gateway",
        *,
        launcher: tuple[str, ...] = ("-m", "server"),
        args: tuple[str, ...] = (),
        stderr: IO[bytes] | None = None,
        **env: str,
    ) -> None:
        self.port = free_port()
        self.ws_protocol = ws_protocol
        self.launcher = launcher
        self.args = args
        self.stderr = stderr
        self.env = node_env(settings, **env)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def start(self, timeout: float = 30.0) -> WebNode:
        self.process = subprocess.Popen(
            [
                sys.executable,
                *self.launcher,
                "serve",
                "--port",
                str(self.port),
                "--ws-protocol",
                self.ws_protocol,
                *self.args,
            ],
            cwd=ROOT,
            env=self.env,
            stderr=self.stderr,
        )
        async with httpx.AsyncClient() as http:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"node exited with {self.process.returncode}")
                try:
                    if (await http.get(f"{self.url}/ready", timeout=1)).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("node did not become ready")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the node dies without a chance to say goodbye."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (a graceful drain)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)


class WorkerProcess:
    """One ``python -m server worker`` process (arq), e.g. for coach replies."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.settings = settings
        self.env = node_env(settings, **env)
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> WorkerProcess:
        from redis.asyncio import Redis

        self.process = subprocess.Popen([sys.executable, "-m", "server", "worker"], cwd=ROOT, env=self.env)
        key = health_check_key(self.settings)
        redis = Redis.from_url(self.settings.redis_url or "")
        try:
            async with asyncio.timeout(timeout):  # alive once its heartbeat key appears
                while not await redis.exists(key):
                    if self.process.poll() is not None:
                        raise RuntimeError(f"worker exited with {self.process.returncode}")
                    await asyncio.sleep(0.1)
        finally:
            await redis.aclose()
        return self

    async def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
