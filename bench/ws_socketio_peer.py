"""The python-socketio peer: what a team would write with Socket.IO instead of our gateway.

``python -m bench.ws_socketio_peer --port 9000 --redis-url redis://...`` serves, under
uvicorn with the WebSocket options of :mod:`bench.ws_peer` (the same as our ``serve``),
the minimal app of python-socketio's documentation for a multi-node deployment:
``socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(url))``
wrapped in ``socketio.ASGIApp``, Engine.IO's defaults (ping every 25 s):

- a client that connects to the default namespace joins the room ``lounge``, unless its
  connect ``auth`` says ``{"publisher": true}``;
- a ``publish`` event from a client is broadcast as ``await sio.emit("message", data,
  room="lounge")``: python-socketio delivers to this node's sockets and publishes the
  emit on Redis for the other nodes (every emit goes through Redis, as with several nodes);
- any other HTTP request (``/health``) is answered by :mod:`bench.peer`, for readiness.

No authentication, no storage, no ordering guarantee, no recovery of missed events.
"""

from __future__ import annotations

import socketio

from bench import peer, ws_peer

ROOM = "lounge"


def create_app(redis_url: str) -> socketio.ASGIApp:
    """The Socket.IO server with the Redis client manager, as an ASGI app."""
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url))

    @sio.event
    async def connect(sid, environ, auth):
        if not (auth or {}).get("publisher"):
            await sio.enter_room(sid, ROOM)

    @sio.on("publish")
    async def publish(sid, data):
        await sio.emit("message", data, room=ROOM)

    return socketio.ASGIApp(sio, other_asgi_app=peer.app)


def main() -> None:
    ws_peer.serve_peer(create_app, "bench.ws_socketio_peer", redis=True)


if __name__ == "__main__":
    main()
