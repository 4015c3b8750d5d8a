"""The peer: a raw ASGI app answering ``{"status":"ok"}``, served like ``python -m server serve``.

``python -m bench.peer --port 9000`` runs it under uvicorn with the same
options our ``serve`` command passes (uvloop + httptools when installed, no
access log), so the gap to our app is the framework, middleware and I/O.

With ``DATABASE_URL`` set, ``GET /db`` first runs one statement through an asyncpg pool
(``DB_POOL_MAX_SIZE`` connections, as ours): the floor of any read that touches PostgreSQL.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

_pool: Any = None  # asyncpg's pool, when DATABASE_URL is set

BODY = b'{"status":"ok"}'
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if dsn := os.environ.get("DATABASE_URL"):
                    import asyncpg

                    size = int(os.environ.get("DB_POOL_MAX_SIZE") or 10)
                    _pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/db" and _pool is not None:
        async with _pool.acquire() as connection:
            await connection.fetchval("SELECT $1::text", "ok")
    await send(START)
    await send(RESPONSE)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False, proxy_headers=False)


if __name__ == "__main__":
    main()
