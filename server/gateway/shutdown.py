"""Graceful drain on SIGTERM/SIGINT for a rolling deploy.

The first signal starts the drain: the node refuses new sockets, tells every
client to reconnect elsewhere (disconnect 3001, spread over ``DRAIN_SECONDS``)
and only then lets uvicorn stop the process. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn
from litestar import Litestar

from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining the realtime node before shutting down."""

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        node = getattr(self._app.state, "node", None)
        loop = self._loop
        if self._draining or node is None or loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit(node, sig, frame)))

    async def _drain_then_exit(self, node: Node, sig: int, frame: FrameType | None) -> None:
        log.info("draining realtime connections", extra={"connections": len(node.connections)})
        try:
            await node.drain()
        finally:
            super().handle_exit(sig, frame)
