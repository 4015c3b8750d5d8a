"""The OpenAI stand-in of the test suite as a benchmark process, with a timeline of every stream.

``python -m bench.coach_standin --port P`` serves :class:`tests.support.llm_standins.OpenAIStandin`
(the real wire format: ``POST /v1/chat/completions`` streamed as SSE chunks) under
uvicorn, with three changes for measuring:

- latency follows a **schedule**: the first content chunk leaves ``headers_delay +
  chunk_delay`` after the request arrived and chunk *i* at ``i x chunk_delay`` after
  that (the test stand-in sleeps ``chunk_delay`` after each send, which drifts);
- every stream's timeline is recorded with ``CLOCK_MONOTONIC`` (comparable across
  processes): when the request arrived and when each SSE event was written;
- ``GET /health`` (readiness), ``GET /bench/stats`` (the timelines and knobs, as
  JSON) and ``POST /bench/knobs`` (``reset(**knobs)``: reply, chunk_size,
  chunk_delay, headers_delay, ...; forgets the timelines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests.support.llm_standins import OpenAIStandin

clock = time.monotonic


@dataclass
class TimedStandin(OpenAIStandin):
    timelines: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, method: str, path: str, headers: dict[str, str], body: Any, response: Any) -> None:
        if path == "/health":
            await self.send_json(response, 200, {"status": "ok"}, {})
            return
        if path == "/bench/stats" and method == "GET":
            knobs = {name: getattr(self, name) for name in ("reply", "chunk_size", "chunk_delay", "headers_delay")}
            await self.send_json(response, 200, {"knobs": knobs, "timelines": self.timelines}, {})
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
    args = parser.parse_args()
    standin = TimedStandin()
    config = uvicorn.Config(
        standin, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
