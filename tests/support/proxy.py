"""A TCP proxy standing in for a load balancer in front of several web nodes.

Each new client connection goes to the first backend that accepts a TCP
connection, trying them in order: while node A lives every client lands on A,
once A is gone (killed, or stopped listening) reconnects land on B. When either
side of a proxied connection closes, the other side is closed too, so a client
sees its node's death as a dropped connection. With no backend that accepts,
the client's connection is closed at once.

It also plays the network: ``proxy.backends = []`` plus ``await proxy.sever()``
cuts a client off (reconnects fail) until the backends are put back, and
``pause()`` / ``resume()`` hold every byte in both directions without closing
anything (a stalled link: put in front of a node's Redis, the node's commands
and pub/sub wait, in order, until ``resume()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence

from tests.support.nodes import WebNode


class TcpProxy:
    """``await TcpProxy([(host, port), ...]).start()``; ``await .close()``."""

    def __init__(self, backends: Sequence[tuple[str, int]], *, connect_timeout: float = 1.0) -> None:
        self.backends = list(backends)
        self.connect_timeout = connect_timeout
        self.port = 0
        self.accepted = 0
        self.routed: list[int] = []  # the backend port each accepted client was sent to
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    def for_nodes(cls, *nodes: WebNode) -> TcpProxy:
        return cls([("127.0.0.1", node.port) for node in nodes])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def sever(self) -> int:
        """Cut every proxied connection at once (TCP reset both ways), as a network
        failure would; returns how many were cut. New connections still go through
        (set :attr:`backends` to ``[]`` first to keep the client out)."""
        tasks = list(self._tasks)
        for writer in list(self._writers):
            writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    def pause(self) -> None:
        """Hold all traffic (existing and new connections) until :meth:`resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _connect_backend(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int] | None:
        for host, port in self.backends:
            # A host that is a path is a Unix socket (an embedded PostgreSQL listens on one).
            opening = (
                asyncio.open_unix_connection(host) if host.startswith("/") else asyncio.open_connection(host, port)
            )
            try:
                reader, writer = await asyncio.wait_for(opening, self.connect_timeout)
            except (OSError, TimeoutError):
                continue
            return reader, writer, port
        return None

    async def _on_client(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_writer)
        self.accepted += 1
        backend_writer: asyncio.StreamWriter | None = None
        try:
            backend = await self._connect_backend()
            if backend is None:
                return  # no backend: the client sees the connection closed
            backend_reader, backend_writer, port = backend
            self.routed.append(port)
            self._writers.add(backend_writer)
            for writer in (client_writer, backend_writer):
                with contextlib.suppress(OSError):
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pumps = [
                asyncio.create_task(self._pump(client_reader, backend_writer)),
                asyncio.create_task(self._pump(backend_reader, client_writer)),
            ]
            try:
                # The first side to close ends the proxied connection for both.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            for writer in (client_writer, backend_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
