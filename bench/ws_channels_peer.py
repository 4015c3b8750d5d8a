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

import argparse
import logging

from litestar import Litestar, get, websocket_listener
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from redis.asyncio import Redis

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
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.ws_channels_peer")
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
