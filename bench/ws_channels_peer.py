"""The Litestar channels peer: what a team on Litestar would write instead of our gateway.

``python -m bench.ws_channels_peer --port 9000 --redis-url redis://...`` serves, under
uvicorn with the WebSocket options of :mod:`bench.ws_peer` (the same as our ``serve``),
the minimal app of Litestar's channels documentation:
``ChannelsPlugin(backend=RedisChannelsPubSubBackend(redis=...), channels=["lounge"],
create_ws_route_handlers=True)``:

- ``/ws/lounge`` — a subscriber (the plugin's generated route handler): every message
  published to ``lounge`` is sent to it as a text frame;
- ``/pub`` — a publisher (a ``websocket_listener``): each text message it sends is
  passed to ``channels.publish(data, channels=["lounge"])``, which publishes it on Redis;
  every node (this one too) delivers what its Redis subscription receives;
- ``GET /health`` — ``{"status": "ok"}``, for readiness.

No authentication, no storage, no ordering guarantee; the pub/sub backend keeps no history
(so no recovery of missed messages).
"""

from __future__ import annotations

from litestar import Litestar, get, websocket_listener
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from redis.asyncio import Redis

from bench import ws_peer

CHANNEL = "lounge"


@websocket_listener("/pub")
async def publish(data: str, channels: ChannelsPlugin) -> None:
    channels.publish(data, channels=[CHANNEL])


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def create_app(redis_url: str) -> Litestar:
    """The Litestar app with the channels plugin on Redis pub/sub."""
    channels = ChannelsPlugin(
        backend=RedisChannelsPubSubBackend(redis=Redis.from_url(redis_url)),
        channels=[CHANNEL],
        create_ws_route_handlers=True,
        ws_handler_base_path="/ws",
    )
    return Litestar(route_handlers=[publish, health], plugins=[channels])


def main() -> None:
    ws_peer.serve_peer(create_app, "bench.ws_channels_peer", redis=True)


if __name__ == "__main__":
    main()
