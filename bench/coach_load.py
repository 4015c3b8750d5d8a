"""Clients of the coach benchmark, each a separate process printing one JSON object.

``python -m bench.coach_load ttft   --port P --setup FILE --standin URL --replies N``
    One member's socket (``connect`` + ``subscribe`` to the lounge) posts a
    message (the ``publish`` command), waits for the coach's reply to end, then
    posts the next one after a random pause (so posts do not fall on the same
    phase of the worker's poll loop). Per reply: when the post was sent, when
    the stored message came back (the server broadcasts it right after the
    commit), ``ai.start``, the first ``ai.delta`` and ``ai.end``; the stand-in's
    timeline of the same stream (request arrival, first content chunk) is
    fetched at the end.

``python -m bench.coach_load fanout --port P --setup FILE --standin URL --subscribers N``
    N members' sockets subscribe to the lounge; the first posts one message;
    every socket records each ``ai.delta`` (seq, receive time, text) and the
    ``ai.end``. Checks per socket: deltas in seq order 1..n with no gap or
    repeat, and their concatenation == the ``ai.end`` text == what the stand-in
    sent. Lag of a delta: its receive time minus the time the stand-in sent
    the newest token it contains (``CLOCK_MONOTONIC`` in both processes).

``python -m bench.coach_load peer --base-url URL --calls N``
    The peer: the official ``openai`` SDK streaming from the same stand-in
    directly; time from the call to the first content chunk.

Sockets use :mod:`bench.wsclient` (one ``asyncio.Protocol`` each, frames parsed
from the transport's buffer); they answer the server's ``{}`` pings with ``{}``.
Every wait is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import msgspec

from bench.loadgen import percentile
from bench.procfs import cpu_seconds, rss_kib
from bench.wsclient import RawWebSocket, clock, open_socket

PATH = "/connection/websocket"

_encode = msgspec.json.encode


class _Data(msgspec.Struct):
    type: str = ""
    stream_id: str = ""
    seq: int = 0
    text: str = ""
    message: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty when absent


class _Pub(msgspec.Struct):
    data: _Data | None = None
    offset: int = 0


class _PushBody(msgspec.Struct):
    channel: str = ""
    pub: _Pub | None = None


class _Push(msgspec.Struct):
    push: _PushBody | None = None


class _MessageOut(msgspec.Struct):
    text: str = ""
    status: str = ""
    client_id: str | None = None
    offset: int = 0


class _Wire(msgspec.Struct, array_like=True):
    """What the worker publishes on Redis for the web nodes (server.streams.broker.Wire)."""

    kind: int
    offset: int
    epoch: str
    data: _Data


_push = msgspec.json.Decoder(_Push)
_wire = msgspec.json.Decoder(_Wire)
_message = msgspec.json.Decoder(_MessageOut)


class CommandError(RuntimeError):
    pass


class CoachSocket(RawWebSocket):
    """A member's socket: commands with ids, pongs, and the coach's frames recorded."""

    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__(host, port, path)
        self.pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.pings = 0
        # (seq, receive time, text) of every ai.delta, in arrival order
        self.deltas: list[tuple[int, float, str]] = []
        self.starts: list[tuple[str, float]] = []  # (stream id, receive time)
        self.ends: list[tuple[str, float, str, str]] = []  # (stream id, time, text, status)
        self.messages: list[tuple[str | None, float]] = []  # stored user messages: (client id, time)
        self.errors: list[str] = []
        self.changed = asyncio.Event()

    def request(self, **command: Any) -> asyncio.Future:
        command_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[command_id] = future
        self.send_text(_encode({"id": command_id, **command}))
        return future

    async def call(self, timeout: float, **command: Any) -> dict:
        reply = await asyncio.wait_for(self.request(**command), timeout)
        if "error" in reply:
            raise CommandError(str(reply["error"]))
        return reply

    def on_line(self, line: bytes, now: float) -> None:
        if line == b"{}":
            self.pings += 1
            self.send_text(b"{}")
            return
        if line.startswith(b'{"push"'):
            push = _push.decode(line).push
            data = push.pub.data if push is not None and push.pub is not None else None
            if data is None:
                return
            kind = data.type
            if kind == "ai.delta":
                self.deltas.append((data.seq, now, data.text))
            elif kind == "ai.start":
                self.starts.append((data.stream_id, now))
            elif kind in ("ai.end", "ai.error"):
                if data.message:
                    message = _message.decode(data.message)
                    self.ends.append((data.stream_id, now, message.text, message.status))
                else:  # refused before starting (budget, busy): ephemeral, no message
                    self.ends.append((data.stream_id, now, "", kind))
                    self.errors.append(line.decode(errors="replace")[:300])
            elif kind == "message" and data.message:
                self.messages.append((_message.decode(data.message).client_id, now))
            else:
                return
            self.changed.set()
            return
        reply = msgspec.json.decode(line)
        future = self.pending.pop(reply.get("id", 0), None)
        if future is not None and not future.done():
            future.set_result(reply)

    def on_closed(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError(f"closed with {self.close_code} {self.close_reason}"))
        self.pending.clear()
        self.changed.set()

    async def wait_until(self, predicate, timeout: float) -> None:
        deadline = clock() + timeout
        while not predicate():
            if self.done.done():
                raise ConnectionResetError(f"socket closed ({self.close_code} {self.close_reason})")
            left = deadline - clock()
            if left <= 0:
                raise TimeoutError("timed out waiting for the coach")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def member_socket(args: argparse.Namespace, token: str, channel: str) -> CoachSocket:
    sock = await open_socket(CoachSocket, args.host, args.port, PATH, args.timeout)
    try:
        await sock.call(args.timeout, connect={"token": token, "name": "bench-coach"})
        await sock.call(args.timeout, subscribe={"channel": channel})
    except BaseException:
        sock.abort()
        raise
    return sock


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def ms_summary(values_s: list[float]) -> dict[str, float | int | None]:
    ms = sorted(v * 1000 for v in values_s)
    if not ms:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None, "min": None}
    return {
        "count": len(ms),
        "min": ms[0],
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": ms[-1],
        "mean": statistics.fmean(ms),
    }


async def close_all(sockets: list[CoachSocket], timeout: float = 5.0) -> None:
    for sock in sockets:
        sock.close()
    pending = [s.done for s in sockets if not s.done.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for sock in sockets:
        if not sock.done.done():
            sock.abort()


# -- ttft -------------------------------------------------------------------------------------


def load_setup(path: str) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)


async def ttft(args: argparse.Namespace) -> dict[str, Any]:
    setup = load_setup(args.setup)
    channel = setup["channel"]
    sock = await member_socket(args, setup["asker_token"], channel)
    replies: list[dict[str, Any]] = []
    failures: Counter = Counter()
    rng = random.Random(args.seed)
    try:
        for n in range(args.warmup + args.replies):
            client_id = str(uuid.uuid4())
            starts, deltas, ends = len(sock.starts), len(sock.deltas), len(sock.ends)
            sent = clock()
            sent_wall = time.time()
            publish = sock.request(
                publish={"channel": channel, "data": {"text": f"{args.question} (#{n})", "client_id": client_id}}
            )
            try:
                reply = await asyncio.wait_for(publish, args.timeout)
                acked = clock()
                if "error" in reply:
                    raise CommandError(str(reply["error"]))
                await sock.wait_until(lambda ends=ends: len(sock.ends) > ends, args.timeout)
            except (TimeoutError, CommandError, ConnectionError) as exc:
                failures[type(exc).__name__ + f": {exc}"[:200]] += 1
                if sock.done.done():
                    break
                continue
            stored = next((t for c, t in sock.messages if c == client_id), None)
            stream_id, ended, text, status = sock.ends[ends]
            first = sock.deltas[deltas] if len(sock.deltas) > deltas else None
            streamed = "".join(d[2] for d in sock.deltas[deltas:])
            if n >= args.warmup:
                replies.append(
                    {
                        "stream_id": stream_id,
                        "sent": sent,
                        "sent_wall": sent_wall,
                        "acked": acked,
                        "stored": stored,
                        "start": sock.starts[starts][1] if len(sock.starts) > starts else None,
                        "first_delta": first[1] if first else None,
                        "first_delta_chars": len(first[2]) if first else 0,
                        "end": ended,
                        "status": status,
                        "deltas": len(sock.deltas) - deltas,
                        "text_ok": streamed == text and bool(text),
                        "chars": len(text),
                    }
                )
            await asyncio.sleep(args.gap + rng.uniform(0, args.jitter))
    finally:
        await close_all([sock])
    stats = fetch_json(args.standin + "/bench/stats")
    return {
        "replies": replies,
        "standin": stats,
        "failures": dict(failures),
        "errors": sock.errors[:5],
        "clock_offset": time.time() - clock(),  # wall - monotonic, for arq's wall-clock job times
    }


# -- fan-out ----------------------------------------------------------------------------------


async def redis_tap(url: str, channel: str, seen: list[tuple[int, float]], ready: asyncio.Event) -> None:
    """Subscribe to the channel's (sharded) Redis pub/sub like a web node does; record when
    each ``ai.delta`` reaches a subscriber of Redis (the worker's side of the lag)."""
    import redis.asyncio as aioredis

    from server.streams.sharded_pubsub import ShardLink, discover_shards

    client = aioredis.Redis.from_url(url)
    [shard] = await discover_shards(client)
    link = ShardLink(shard)

    def heard(_channel: bytes, data: bytes) -> None:
        now = clock()
        wire = _wire.decode(data)
        if wire.data.type == "ai.delta":
            seen.append((wire.data.seq, now))

    try:
        await link.connect()
        reader = asyncio.create_task(link.run(heard))
        await link.subscribe(channel)
        ready.set()
        await reader
    finally:
        await link.close()
        await client.aclose()


async def loop_watchdog(stalls: list[tuple[float, float]], stop: asyncio.Event, tick: float = 0.005) -> None:
    """Record ``(when, how late)`` each time this loop wakes more than 20 ms after it should have."""
    last = clock()
    while not stop.is_set():
        await asyncio.sleep(tick)
        now = clock()
        late = now - last - tick
        if late > 0.02:
            stalls.append((last, late))
        last = now


def start_spy(pid: int, out: str) -> subprocess.Popen:
    argv = [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid", str(pid), "--duration", "600"]
    argv += ["--rate", "200", "--format", "raw", "--nonblocking", "--output", out]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_spy(spy: subprocess.Popen) -> None:
    os.killpg(spy.pid, signal.SIGINT)  # py-spy writes its samples on Ctrl-C
    try:
        spy.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(spy.pid, signal.SIGKILL)
        spy.wait()


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    setup = load_setup(args.setup)
    channel = setup["channel"]
    tokens = setup["subscriber_tokens"][: args.subscribers]
    sockets: list[CoachSocket] = []
    errors: Counter = Counter()
    opened_at = clock()
    queue = iter(tokens)

    async def opener() -> None:
        for token in queue:
            try:
                sockets.append(await member_socket(args, token, channel))
            except (OSError, TimeoutError, CommandError) as exc:
                errors[type(exc).__name__ + f": {exc}"[:120]] += 1

    await asyncio.gather(*(opener() for _ in range(args.concurrency)))
    open_seconds = clock() - opened_at
    result: dict[str, Any] = {"sockets": len(sockets), "open_errors": dict(errors), "open_s": open_seconds}
    if len(sockets) < len(tokens) or not sockets:
        await close_all(sockets)
        result["error"] = "not every subscriber could connect and subscribe"
        return result
    await asyncio.sleep(1.0)  # let the connect/subscribe work settle on the server
    pids = [int(p) for p in args.watch_pid]
    asker = sockets[0]
    client_id = str(uuid.uuid4())
    spy = None
    if args.profile_pid:  # py-spy on the web node for the stream only (not the connects before it)
        spy = start_spy(args.profile_pid, args.profile_out)
        await asyncio.sleep(0.5)
    # Keep this process's own pauses out of the lag: no GC while the reply streams, and a
    # watchdog that records every stall of this event loop (a late receive timestamp).
    gc.collect()
    gc.freeze()
    gc.disable()
    stalls: list[tuple[float, float]] = []
    watching = asyncio.Event()
    watchdog = asyncio.create_task(loop_watchdog(stalls, watching))
    tapped: list[tuple[int, float]] = []
    tap = None
    if args.redis_url:
        tap_ready = asyncio.Event()
        tap = asyncio.create_task(redis_tap(args.redis_url, args.redis_channel, tapped, tap_ready))
        await asyncio.wait_for(tap_ready.wait(), 10)
    cpu0 = [cpu_seconds(p) for p in pids]
    own0 = time.process_time()
    started = clock()
    await asker.call(
        args.timeout, publish={"channel": channel, "data": {"text": args.question, "client_id": client_id}}
    )
    deadline = clock() + args.timeout
    rss_peak = [0 for _ in pids]
    while clock() < deadline:
        if all(s.ends for s in sockets if not s.done.done()):
            break
        for i, pid in enumerate(pids):
            rss_peak[i] = max(rss_peak[i], rss_kib(pid) or 0)
        await asyncio.sleep(0.1)
    finished = clock()
    cpu1 = [cpu_seconds(p) for p in pids]
    own1 = time.process_time()
    watching.set()
    await watchdog
    if tap is not None:
        tap.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tap
    gc.enable()
    if spy is not None:
        stop_spy(spy)
    await close_all(sockets)
    stats = fetch_json(args.standin + "/bench/stats")

    timeline = stats["timelines"][-1] if stats["timelines"] else None
    knobs = stats["knobs"]
    size = max(1, int(knobs["chunk_size"]))
    expected = knobs["reply"]
    token_times = timeline["events"][1 : 1 + -(-len(expected) // size)] if timeline else []

    per_socket_p99: list[float] = []
    all_lags: list[float] = []
    first_seen: dict[int, float] = {}
    for sock in sockets:
        for seq, at, _ in sock.deltas:
            first_seen[seq] = min(first_seen.get(seq, at), at)
    spreads: list[float] = []
    complete = ordered = matches_end = 0
    problems: Counter = Counter()
    delivered = 0
    ws_messages = 0
    first_at, last_at = float("inf"), float("-inf")
    for sock in sockets:
        seqs = [d[0] for d in sock.deltas]
        text = "".join(d[2] for d in sock.deltas)
        delivered += len(seqs)
        ws_messages += sock.frames_received
        in_order = seqs == list(range(1, len(seqs) + 1))
        ordered += in_order
        if not in_order:
            problems["deltas out of order, missing or repeated"] += 1
        end_text = sock.ends[0][2] if sock.ends else None
        if end_text is None:
            problems["no ai.end"] += 1
        elif text == end_text:
            matches_end += 1
        else:
            problems["concatenated deltas != ai.end text"] += 1
        if text == expected and end_text == expected:
            complete += 1
        lags = []
        length = 0
        for seq, at, piece in sock.deltas:
            length += len(piece)
            first_at, last_at = min(first_at, at), max(last_at, at)
            newest = -(-length // size) - 1  # the last token (stand-in chunk) this delta completes
            if token_times and 0 <= newest < len(token_times):
                lags.append(at - token_times[newest])
            spreads.append(at - first_seen[seq])
        all_lags += lags
        if lags:
            lags.sort()
            per_socket_p99.append(percentile(lags, 99))
    by_seq: dict[int, list[float]] = {}
    for sock in sockets:
        length = 0
        for seq, at, piece in sock.deltas:
            length += len(piece)
            newest = -(-length // size) - 1
            if token_times and 0 <= newest < len(token_times):
                by_seq.setdefault(seq, []).append(at - token_times[newest])
    # Split each delta's lag at Redis: token sent -> published (worker) and published -> sockets (web node).
    at_redis = dict(tapped)
    worker_side, web_side = [], []
    for seq, lags in by_seq.items():
        if seq not in at_redis:
            continue
        length = sum(len(d[2]) for d in sockets[0].deltas[:seq]) if sockets and len(sockets[0].deltas) >= seq else 0
        newest = -(-length // size) - 1
        if token_times and 0 <= newest < len(token_times):
            worker_side.append(at_redis[seq] - token_times[newest])
            web_side += [lag - (at_redis[seq] - token_times[newest]) for lag in lags]
    seq_lag_ms = {
        seq: [round(1000 * min(v), 2), round(1000 * statistics.median(v), 2), round(1000 * max(v), 2)]
        for seq, v in sorted(by_seq.items())
    }
    frames = len(sockets[0].deltas) if sockets else 0
    tokens_sent = len(token_times)
    stream_s = (token_times[-1] - token_times[0]) if len(token_times) > 1 else None
    window = last_at - first_at if last_at > first_at else None
    elapsed = finished - started
    result.update(
        {
            "subscribers": len(sockets),
            "complete": complete,
            "ordered": ordered,
            "matches_end": matches_end,
            "problems": dict(problems),
            "errors": asker.errors[:5],
            "tokens": tokens_sent,
            "token_rate": (tokens_sent - 1) / stream_s if stream_s else None,
            "frames_per_stream": frames,
            "tokens_per_frame": tokens_sent / frames if frames else None,
            "delivered_deltas": delivered,
            "delivered_per_s": delivered / window if window else None,
            "ws_messages_per_s": ws_messages / window if window else None,
            "delta_window_s": window,
            "lag_ms": ms_summary(all_lags),
            "lag_by_seq_ms": seq_lag_ms,  # seq -> [min, median, max] over subscribers
            "worker_side_lag_ms": ms_summary(worker_side),  # newest token sent -> delta at a Redis subscriber
            "web_side_lag_ms": ms_summary(web_side),  # delta at a Redis subscriber -> at each socket
            "redis_tap_deltas": len(tapped),
            "redis_at_ms": {seq: round(1000 * (at - token_times[0]), 2) for seq, at in tapped} if token_times else {},
            "per_subscriber_p99_ms": ms_summary([v for v in per_socket_p99]),
            "spread_ms": ms_summary(spreads),
            "first_token_to_first_delta_ms": (
                (min(s.deltas[0][1] for s in sockets if s.deltas) - token_times[0]) * 1000
                if token_times and any(s.deltas for s in sockets)
                else None
            ),
            "elapsed_s": elapsed,
            # CLOCK_MONOTONIC: first token sent by the stand-in .. last delta received
            "window": [token_times[0], last_at] if token_times and last_at > float("-inf") else None,
            "pings_answered": sum(s.pings for s in sockets),
            "client_stalls_over_20ms": len(stalls),
            "client_stall_max_ms": max((late for _, late in stalls), default=0.0) * 1000,
            "client_stalls_ms": [
                [round(1000 * (at - token_times[0]), 1) if token_times else None, round(1000 * late, 1)]
                for at, late in stalls
            ],
            "closed_early": sum(1 for s in sockets if s.close_code not in (None, 1000)),
            "server_cpu_percent": [
                100 * (b - a) / elapsed if a is not None and b is not None else None
                for a, b in zip(cpu0, cpu1, strict=True)
            ],
            "server_rss_kib_peak": rss_peak,
            "loadgen_cpu_percent": 100 * (own1 - own0) / elapsed,
        }
    )
    return result


# -- the peer: the SDK straight to the stand-in -------------------------------------------------


async def peer(args: argparse.Namespace) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-bench", base_url=args.base_url, max_retries=0, timeout=30)
    system = "You are Coach. " + "Passage text. " * (args.prompt_chars // 14)
    times: list[float] = []
    rng = random.Random(args.seed)
    try:
        for n in range(args.warmup + args.calls):
            started = clock()
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "system", "content": system}, {"role": "user", "content": f"question {n}"}],
                max_tokens=800,
                stream=True,
                stream_options={"include_usage": True},
            )
            first = None
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = clock()
            if n >= args.warmup and first is not None:
                times.append(first - started)
            await asyncio.sleep(args.gap + rng.uniform(0, args.jitter))
    finally:
        await client.close()
    stats = fetch_json(args.standin + "/bench/stats") if args.standin else None
    return {"ttft_s": times, "standin": stats}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coach_load", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name in ("ttft", "fanout", "peer"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--setup")
        p.add_argument("--standin", default="")
        p.add_argument("--timeout", type=float, default=30.0)
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--question", default="How do I keep a steady pace on long runs?")
        p.add_argument("--gap", type=float, default=0.25, help="pause between replies (s)")
        p.add_argument("--jitter", type=float, default=0.1, help="plus a uniform random pause up to this (s)")
        p.add_argument("--warmup", type=int, default=3)
    sub.choices["ttft"].add_argument("--replies", type=int, default=50)
    sub.choices["fanout"].add_argument("--subscribers", type=int, default=1000)
    sub.choices["fanout"].add_argument("--concurrency", type=int, default=32, help="sockets opened at once")
    sub.choices["fanout"].add_argument("--watch-pid", action="append", default=[])
    sub.choices["fanout"].add_argument("--profile-pid", type=int, help="py-spy this pid while the reply streams")
    sub.choices["fanout"].add_argument("--redis-url", help="tap the channel's Redis pub/sub (worker-side timing)")
    sub.choices["fanout"].add_argument("--redis-channel", help="the pub/sub channel name")
    sub.choices["fanout"].add_argument("--profile-out", help="py-spy's collapsed stacks go here")
    sub.choices["peer"].add_argument("--base-url", required=True)
    sub.choices["peer"].add_argument("--calls", type=int, default=50)
    sub.choices["peer"].add_argument("--prompt-chars", type=int, default=2000)
    args = parser.parse_args()
    runner = {"ttft": ttft, "fanout": fanout, "peer": peer}[args.scenario]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(runner(args))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
