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

import argparse
import logging

import socketio

from bench import peer

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
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.ws_socketio_peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        create_app(args.redis_url),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # as `serve` without TRUSTED_PROXIES
        ws_max_size=1024 * 1024,  # as `serve`: max(WS_MAX_FRAME_BYTES * 4, 1 MiB) with the default 64 KiB
        ws_ping_interval=None,
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
