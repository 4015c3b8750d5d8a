"""``/connection/websocket``: the gateway's WebSocket endpoint.

The seam between the server and the two transports is :func:`gateway_dispatch`, the
ASGI application ``python -m server serve`` gives uvicorn: sockets on this path are
served as raw ASGI by the gateway, everything else (HTTP, the lifespan) goes to the
Litestar app. So no socket passes Litestar's routing or the request-context
middleware: nothing per socket but the protocol state stays alive for the socket's
lifetime, frames go out through the scope's frame writer when the server offers one
(:mod:`server.gateway.frame_writer`) or else ASGI ``send``, and every failure is
answered as a protocol frame instead of closing with 4500. The dispatch decides once
per connection, at the handshake, never per frame.
A plain HTTP request to the path reaches the Litestar route and gets 426.
"""

from __future__ import annotations

import logging
from typing import cast

from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.handlers import asgi
from litestar.types import ASGIApp, Receive, Scope, Send

from server.gateway import protocol
from server.gateway.codec import negotiate
from server.gateway.commands import handle_frame
from server.gateway.connection import Connection
from server.gateway.frame_writer import EXTENSION, FrameWriter
from server.gateway.node import Node

log = logging.getLogger("lounges.realtime")

WEBSOCKET_PATH = "/connection/websocket"


@asgi(WEBSOCKET_PATH, include_in_schema=False, copy_scope=False)
async def websocket_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer HTTP requests to the WebSocket path with 426 Upgrade Required (sockets
    never get here: :func:`gateway_dispatch` takes them first)."""
    await send({"type": "http.response.start", "status": 426, "headers": [(b"upgrade", b"websocket")]})
    await send({"type": "http.response.body", "body": b"use a WebSocket", "more_body": False})


def gateway_dispatch(app: ASGIApp, state: State) -> ASGIApp:
    """Wrap ``app`` so that WebSockets on :data:`WEBSOCKET_PATH` go straight to the gateway
    (``state`` is the application's; its ``node`` exists once the lifespan has run)."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.WEBSOCKET and scope["path"] == WEBSOCKET_PATH:
            await serve_websocket(state.node, scope, receive, send)
            return
        await app(scope, receive, send)

    return dispatch


async def serve_websocket(node: Node, scope: Scope, receive: Receive, send: Send) -> None:
    """Speak the Centrifuge client protocol v2 with one client, in the encoding its
    handshake asks for (:func:`~server.gateway.codec.negotiate`)."""
    await receive()  # websocket.connect
    if node.draining:
        await send({"type": "websocket.close", "code": 1013, "reason": "draining"})
        return
    subprotocols = cast("list[str]", scope.get("subprotocols") or [])
    codec, subprotocol = negotiate(subprotocols, scope.get("query_string", b""))
    await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})
    writer = (scope.get("extensions") or {}).get(EXTENSION)
    connection = Connection(node, send, writer if isinstance(writer, FrameWriter) else None, codec)
    node.add(connection)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if not connection.close_code:  # the peer's close (one the server started is counted by abort)
                    node.tally.peer_disconnect(message.get("code"))
                break
            frame: str | bytes = b""
            if message["type"] == "websocket.receive":
                text = message.get("text")
                frame = text if text is not None else (message.get("bytes") or b"")
            try:
                await handle_frame(node, connection, frame)
            except Exception:  # never let one bad frame take the socket down with 4500
                log.exception("frame handling failed", extra={"client": connection.client_id})
                connection.abort(protocol.DISCONNECT_SERVER_ERROR, "internal error")
    finally:
        await node.remove(connection)
