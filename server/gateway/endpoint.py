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
from collections.abc import Awaitable
from typing import cast

from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.handlers import asgi
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

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
    (``state`` is the application's; its ``node`` exists once the lifespan has run).

    A plain function returning the coroutine to await, not a coroutine function awaiting it:
    a socket's task then holds one coroutine less for its lifetime. Servers that tell ASGI 2
    from 3 by ``iscoroutinefunction`` must be told (uvicorn: ``interface="asgi3"``)."""

    def dispatch(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == ScopeType.WEBSOCKET and scope["path"] == WEBSOCKET_PATH:
            return serve_websocket(state.node, scope, receive, send)
        return app(scope, receive, send)

    return dispatch


async def serve_websocket(node: Node, scope: Scope, receive: Receive, send: Send) -> None:
    """Speak the Centrifuge client protocol v2 with one client, in the encoding its
    handshake asks for (:func:`~server.gateway.codec.negotiate`).

    This coroutine lives as long as the socket, so what it keeps between frames (its
    locals) is kept per socket: no handshake leftovers, and no frame once handled (a
    ``connect`` carries the token)."""
    await receive()  # websocket.connect
    if node.draining:
        await send({"type": "websocket.close", "code": 1013, "reason": "draining"})
        return
    codec, subprotocol = negotiate(cast("list[str]", scope.get("subprotocols") or ()), scope.get("query_string", b""))
    await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})
    writer = (scope.get("extensions") or {}).get(EXTENSION)
    connection = Connection(node, send, writer if isinstance(writer, FrameWriter) else None, codec)
    del codec, subprotocol, writer
    node.add(connection)
    try:
        while True:
            frame = _frame_of(await receive(), node, connection)
            if frame is None:
                break
            try:
                await handle_frame(node, connection, frame)
            except Exception:  # never let one bad frame take the socket down with 4500
                log.exception("frame handling failed", extra={"client": connection.client_id})
                connection.abort(protocol.DISCONNECT_SERVER_ERROR, "internal error")
            del frame
    finally:
        await node.remove(connection)


def _frame_of(message: ReceiveMessage, node: Node, connection: Connection) -> str | bytes | None:
    """The frame a received ASGI message carries (None: the socket is gone)."""
    if message["type"] == "websocket.disconnect":
        if not connection.close_code:  # the peer's close (one the server started is counted by abort)
            node.tally.peer_disconnect(message.get("code"))
        return None
    if message["type"] == "websocket.receive":
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")
    return b""
