"""``GET /connection/websocket``: the raw ASGI WebSocket endpoint of the gateway.

Raw ASGI rather than Litestar's WebSocket handler: no per-message dependency
resolution or wrapping on the hot path, and every failure is answered as a
protocol frame instead of closing the socket with 4500.
"""

from __future__ import annotations

import logging

from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from server.realtime import protocol
from server.realtime.commands import handle_frame
from server.realtime.connection import Connection
from server.realtime.node import Node

log = logging.getLogger("lounges.realtime")

WEBSOCKET_PATH = "/connection/websocket"


@asgi(WEBSOCKET_PATH, include_in_schema=False, copy_scope=False)
async def websocket_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """Speak the Centrifuge client protocol v2 (JSON) with one client."""
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 426, "headers": [(b"upgrade", b"websocket")]})
        await send({"type": "http.response.body", "body": b"use a WebSocket"})
        return
    node: Node = scope["app"].state.node
    await receive()  # websocket.connect
    if node.draining:
        await send({"type": "websocket.close", "code": 1013, "reason": "draining"})
        return
    await send({"type": "websocket.accept"})
    connection = Connection(node, send)
    node.add(connection)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            try:
                await handle_frame(node, connection, frame)
            except Exception:  # never let one bad frame take the socket down with 4500
                log.exception("frame handling failed", extra={"client": connection.client_id})
                connection.abort(protocol.DISCONNECT_SERVER_ERROR, "internal error")
    finally:
        await node.remove(connection)
