"""The peer: a raw ASGI app answering ``{"status":"ok"}``, served like ``python -m server serve``.

``python -m bench.peer --port 9000`` runs it under uvicorn with the same
options our ``serve`` command passes (uvloop + httptools when installed, no
access log), so the gap to our app is the framework, middleware and I/O.
"""

from __future__ import annotations

import argparse
import logging

BODY = b'{"status":"ok"}'
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
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
