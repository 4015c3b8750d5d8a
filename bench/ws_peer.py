"""The WebSocket peer: a raw ASGI broadcast server, served like ``python -m server serve``.

``python -m bench.ws_peer --port 9000`` runs it under uvicorn with the options
our ``serve`` command passes for WebSockets (``ws_per_message_deflate=False``,
``ws_ping_interval=None``, the same ``ws_max_size``), so the gap to our gateway
is everything the gateway does beyond moving bytes:

- ``/ws`` — a subscriber. It is sent every broadcast message as its own text
  frame. ``/ws?since=K`` first replays, in one frame (newline-separated),
  the messages after the K-th since the last reset that are still in a ring
  of the last 256 — the floor for a reconnect with recovery.
- ``/pub`` — a publisher. Each text message it sends is broadcast, unchanged,
  to every subscriber: ``for send in subscribers: await send(...)``, so
  uvicorn frames (and UTF-8 encodes) it once per subscriber, as any raw ASGI
  app does. ``/pub?reset=1`` empties the ring and restarts the count.
- ``/ws?room=N`` — a member of room N (``bench rooms``): sent every message of its room,
  and each text message it sends is broadcast, unchanged, to every member of the room
  (itself included), the same loop as ``/pub``. ``/pub?room=N`` publishes to room N only.
  Rooms have no ring.
- any HTTP request — ``{"status":"ok"}`` (``bench.peer``), for readiness.

No authentication, no JSON parsing, no storage, no ordering: a floor, not a
competitor.
"""

from __future__ import annotations

import argparse
import logging
from collections import deque
from urllib.parse import parse_qs

from bench import peer

RING = 256
subscribers: set = set()
rooms: dict[str, set] = {}  # room -> its members' ``send``
ring: deque[tuple[int, str]] = deque(maxlen=RING)
count = 0


async def app(scope, receive, send):
    if scope["type"] != "websocket":
        await peer.app(scope, receive, send)
        return
    global count
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    query = parse_qs(scope["query_string"].decode())
    room = query.get("room")
    if room:
        await _room(rooms.setdefault(room[0], set()), scope["path"] == "/ws", receive, send)
        return
    if scope["path"] == "/pub":
        if "reset" in query:
            ring.clear()
            count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            count += 1
            ring.append((count, text))
            await _broadcast(subscribers, text)
        return
    since = query.get("since")
    if since:
        after = int(since[0])
        missed = [text for number, text in ring if number > after]
        if missed:
            await send({"type": "websocket.send", "text": "\n".join(missed)})
    subscribers.add(send)
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        subscribers.discard(send)


async def _broadcast(members: set, text: str) -> None:
    event = {"type": "websocket.send", "text": text}
    for member in list(members):
        try:
            await member(event)
        except Exception:  # gone: its own receive loop removes it
            members.discard(member)


async def _room(members: set, member: bool, receive, send) -> None:
    """A socket of one room: a member (receives and sends) or a publisher (sends only)."""
    if member:
        members.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None:
                await _broadcast(members, text)
    finally:
        members.discard(send)


def serve_peer(app, prog: str, *, redis: bool = False) -> None:
    """Parse ``--host``/``--port`` (and ``--redis-url`` with ``redis``) and run a WebSocket peer
    under uvicorn with the options our ``serve`` passes; ``app`` is the ASGI app, or with
    ``redis`` a function of the Redis URL returning it."""
    import uvicorn

    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    if redis:
        parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        app(args.redis_url) if redis else app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # as `serve` without TRUSTED_PROXIES
        ws_max_size=1024 * 1024,  # as `serve`: max(WS_MAX_FRAME_BYTES * 4, 1 MiB) with the default 64 KiB
        ws_ping_interval=None,
        ws_per_message_deflate=False,
    )


def main() -> None:
    serve_peer(app, "bench.ws_peer")


if __name__ == "__main__":
    main()
