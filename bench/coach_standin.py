"""The OpenAI stand-in of the test suite as a benchmark process, with a timeline of every stream.

``python -m bench.coach_standin --port P`` serves :class:`tests.support.llm_standins.OpenAIStandin`
(the real wire format: ``POST /v1/chat/completions`` streamed as SSE chunks) under
uvicorn, with these changes for measuring:

- latency follows a **schedule**: the first content chunk leaves ``headers_delay +
  chunk_delay`` after the request arrived and chunk *i* at ``i x chunk_delay`` after
  that (the test stand-in sleeps ``chunk_delay`` after each send, which drifts);
- every stream's timeline is recorded with ``CLOCK_MONOTONIC`` (comparable across
  processes): when the request arrived and when each SSE event was written;
- ``POST /v1/embeddings`` (the OpenAI wire format) answers ``--embedding-ms`` after
  the request arrived, with deterministic vectors (words hashed into 1536 dims), so
  ``EMBEDDINGS_PROVIDER=openai`` is a provider with a fixed latency like the chat's;
- ``GET /health`` (readiness), ``GET /bench/stats`` (the timelines and knobs, as
  JSON) and ``POST /bench/knobs`` (``reset(**knobs)``: reply, chunk_size,
  chunk_delay, headers_delay, ...; forgets the timelines).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn

from tests.support.llm_standins import OpenAIStandin

clock = time.monotonic


EMBEDDING_DIM = 1536  # text-embedding-3-small


def embedding(text: str, encoding_format: str) -> list[float] | str:
    """A deterministic unit vector for ``text`` (its words hashed into ``EMBEDDING_DIM``
    buckets) as the API encodes it: a list of floats, or base64 of little-endian float32."""
    vector = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    for word in text.lower().split():
        vector[zlib.crc32(word.encode()) % EMBEDDING_DIM] += 1.0
    norm = np.linalg.norm(vector)
    vector = vector / norm if norm else vector
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


@dataclass
class TimedStandin(OpenAIStandin):
    timelines: list[dict[str, Any]] = field(default_factory=list)
    embedding_calls: list[dict[str, float]] = field(default_factory=list)
    embedding_delay = 0.0  # not a knob: set once from --embedding-ms

    async def handle(self, method: str, path: str, headers: dict[str, str], body: Any, response: Any) -> None:
        if path == "/v1/embeddings" and method == "POST":
            await self.embed(body, response)
            return
        if path == "/health":
            await self.send_json(response, 200, {"status": "ok"}, {})
            return
        if path == "/bench/stats" and method == "GET":
            knobs = {name: getattr(self, name) for name in ("reply", "chunk_size", "chunk_delay", "headers_delay")}
            stats = {"knobs": knobs, "timelines": self.timelines, "embeddings": self.embedding_calls}
            await self.send_json(response, 200, stats, {})
            return
        if path == "/bench/knobs" and method == "POST":
            self.reset(**(body or {}))
            self.timelines = []
            await self.send_json(response, 200, {"ok": True}, {})
            return
        record: dict[str, Any] = {"arrived": clock(), "events": [], "prompt_chars": len(json.dumps(body))}
        self.timelines.append(record)
        response.record = record
        response.next_at = record["arrived"]
        self.requests.clear()  # the bodies are not needed: keep memory flat over many replies
        await super().handle(method, path, headers, body, response)

    async def embed(self, body: Any, response: Any) -> None:
        """``POST /v1/embeddings``, answered ``embedding_delay`` after the request arrived."""
        arrived = clock()
        self.requests.clear()  # as for the streams: keep memory flat
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        payload = {
            "object": "list",
            "model": body["model"],
            "data": [
                {"object": "embedding", "index": i, "embedding": embedding(text, body.get("encoding_format", "float"))}
                for i, text in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
        }
        delay = arrived + self.embedding_delay - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        self.embedding_calls.append({"arrived": arrived, "answered": clock()})
        await self.send_json(response, 200, payload, {})

    async def pause(self, seconds: float, response: Any) -> bool:
        """Wait until the next point of the schedule (headers, then one chunk every ``chunk_delay``)."""
        next_at = getattr(response, "next_at", None)
        if next_at is None:
            return await super().pause(seconds, response)
        response.next_at = next_at + seconds
        delay = response.next_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return not response.disconnected.is_set()

    async def send_event(self, response: Any, data: str, event: str | None = None) -> None:
        await super().send_event(response, data, event)
        record = getattr(response, "record", None)
        if record is not None:
            record["events"].append(clock())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coach_standin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--embedding-ms", type=float, default=0.0, help="latency of /v1/embeddings (default 0)")
    args = parser.parse_args()
    standin = TimedStandin()
    standin.embedding_delay = args.embedding_ms / 1000
    config = uvicorn.Config(
        standin, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
