"""The frame writer for uvicorn: its sans-I/O WebSocket protocol plus
:meth:`GatewayWebSocketProtocol.write_frame` (:mod:`server.gateway.frame_writer` says why).

Everything else (handshake, reading, pings, closing, flow control of ASGI sends) stays
uvicorn's. What is used of it is private API, listed in :data:`PRIVATE_API` and checked
at start-up by :func:`missing_private_api`; pyproject caps uvicorn at the versions tested.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import State

from server.gateway.frame_writer import EXTENSION

# What write_frame and handle_connect read of uvicorn's protocol, besides handle_connect itself:
# instance attributes (the scope is made by handle_connect, and read there with a default; the
# handshake's request and response, by send, likewise).
PRIVATE_API = ("transport", "handshake_complete", "close_sent", "conn")


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that also writes prepared frames synchronously,
    and lets go of the handshake's headers once the socket is accepted."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent:  # the handshake was accepted: offer the writer
            scope.setdefault("extensions", {})[EXTENSION] = self

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            self._forget_handshake_headers()

    def _forget_handshake_headers(self) -> None:
        """Empty the headers of the handshake's request and response (~3 KiB a socket): the
        request stays referenced by websockets' parser and uvicorn's protocol, the response
        by the protocol, for the socket's lifetime, but neither reads them once the accept
        is sent (the request's headers are in the scope by then)."""
        for message in (getattr(self, "request", None), getattr(self, "response", None)):
            headers = getattr(message, "headers", None)
            if headers is not None:
                headers.clear()

    def write_frame(self, frame: bytes) -> int:
        """Write a frame built by :func:`~server.gateway.frame_writer.text_frame` (see
        :meth:`~server.gateway.frame_writer.FrameWriter.write_frame`)."""
        transport = self.transport
        if (
            not self.handshake_complete
            or self.close_sent
            or self.conn.state is not State.OPEN
            or transport.is_closing()
        ):
            return -1
        transport.write(frame)
        return transport.get_write_buffer_size()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The application of the probe protocol below, which never serves a connection."""


def missing_private_api() -> list[str]:
    """What :class:`GatewayWebSocketProtocol` uses that the installed uvicorn no longer has
    (empty: nothing). A protocol is built, unconnected, to see its attributes."""
    if not callable(getattr(WebSocketsSansIOProtocol, "handle_connect", None)):
        return ["handle_connect"]
    config = uvicorn.Config(_no_app, ws=GatewayWebSocketProtocol, proxy_headers=False, log_config=None)
    loop = asyncio.new_event_loop()
    try:
        config.load()
        probe = GatewayWebSocketProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    except Exception as exc:  # the constructor itself changed
        return [f"WebSocketsSansIOProtocol(...): {exc!r}"]
    finally:
        loop.close()
    missing = [name for name in PRIVATE_API if not hasattr(probe, name)]
    if "conn" not in missing and not hasattr(probe.conn, "state"):
        missing.append("conn.state")
    return missing
