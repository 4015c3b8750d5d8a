"""HTTP/1.1 load generator: a separate process, closed loop, raw asyncio sockets.

``python -m bench.loadgen --port 8000 --path /health --connections 32 --duration 5``
opens N keep-alive connections, then each one sends a request, reads the
status line, headers and ``Content-Length`` body (or chunks), and sends the
next one, until the deadline. Requests that complete within the measured
window (after the warm-up) are counted, with their latency. No HTTP client
library sits in the hot loop, so the generator is cheap per request.

With ``--watch-pid`` it also samples that process's RSS (every 100 ms) and
CPU time over the measured window, its own CPU time and the machine's, so
that a report can tell whether the server, the generator or something else
(the database, another job) was the bottleneck.

Prints one JSON object on stdout. Exit status 0 even when the server answered
errors (they are counted); 1 when no connection could be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence

from bench.procfs import cpu_seconds, machine_cpu_seconds, rss_kib

# Quantiles kept in the output (for plots of the distribution), in percent.
QUANTILES = [*range(0, 100), 99.5, 99.9, 100]


def command(
    port: int,
    path: str,
    *,
    headers: Sequence[str] = (),
    connections: int = 32,
    warmup: float = 1.0,
    duration: float = 5.0,
    watch_pid: int | None = None,
    method: str = "GET",
    host: str = "127.0.0.1",
) -> list[str]:
    """The argv that runs this generator in its own process (see :func:`bench.stack.run_pinned_json`)."""
    argv = [sys.executable, "-m", "bench.loadgen", "--host", host, "--port", str(port), "--method", method]
    argv += ["--path", path, "--connections", str(connections), "--warmup", str(warmup), "--duration", str(duration)]
    for header in headers:
        argv += ["--header", header]
    if watch_pid is not None:
        argv += ["--watch-pid", str(watch_pid)]
    return argv


def build_request(host: str, port: int, method: str, path: str, headers: list[str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: lounges-bench", "Accept: */*"]
    lines += headers
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        await reader.readexactly(int(head[at + 17 : end]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # chunk + CRLF
            if size == 0:
                break
    elif status not in (204, 304) and not 100 <= status < 200:
        raise ValueError("response without Content-Length or chunked encoding")
    return status


class Window:
    """The shared clock: warm-up starts at ``start``, measuring at ``measure_from`` until ``until``."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.start = time.perf_counter()
        self.measure_from = self.start + warmup
        self.until = self.measure_from + duration


async def _connection(
    host: str,
    port: int,
    request: bytes,
    window: Window,
    latencies: list[float],
    statuses: Counter,
    errors: Counter,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    clock = time.perf_counter
    measure_from, until = window.measure_from, window.until
    record = latencies.append
    while True:
        sent = clock()
        if sent >= until:
            break
        try:
            writer.write(request)
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            writer.close()
            while clock() < until:  # reconnect, without spinning if the server is gone
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                    break
                except OSError as again:
                    errors[type(again).__name__] += 1
                    await asyncio.sleep(0.01)
            continue
        done = clock()
        if measure_from <= done <= until:
            record(done - sent)
            statuses[status] += 1
    writer.close()


async def _watch(pid: int, window: Window, out: dict) -> None:
    """Sample ``pid``'s RSS during the window; CPU time at its two ends."""
    await asyncio.sleep(max(0.0, window.measure_from - time.perf_counter()))
    t0, cpu0, own0, (all0, steal0) = time.perf_counter(), cpu_seconds(pid), time.process_time(), machine_cpu_seconds()
    samples: list[int] = []
    while (now := time.perf_counter()) < window.until:
        rss = rss_kib(pid)
        if rss is not None:
            samples.append(rss)
        await asyncio.sleep(min(0.1, max(0.0, window.until - now)))
    t1, cpu1, own1, (all1, steal1) = time.perf_counter(), cpu_seconds(pid), time.process_time(), machine_cpu_seconds()
    out["server_cpu_percent"] = 100 * (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
    out["server_rss_kib_max"] = max(samples) if samples else None
    out["server_rss_kib_median"] = int(statistics.median(samples)) if samples else None
    out["loadgen_cpu_percent"] = 100 * (own1 - own0) / (t1 - t0)
    # Everything else that ran meanwhile (PostgreSQL, Valkey, other jobs), in percent of one CPU.
    out["machine_cpu_percent"] = 100 * (all1 - all0) / (t1 - t0)
    out["steal_cpu_percent"] = 100 * (steal1 - steal0) / (t1 - t0)
    if out["server_cpu_percent"] is not None:
        out["other_cpu_percent"] = out["machine_cpu_percent"] - out["server_cpu_percent"] - out["loadgen_cpu_percent"]


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (``q`` in percent)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


async def run(args: argparse.Namespace) -> dict:
    request = build_request(args.host, args.port, args.method, args.path, args.header, args.body.encode())
    connections = [await asyncio.open_connection(args.host, args.port) for _ in range(args.connections)]
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    window = Window(args.warmup, args.duration)
    watched: dict = {}
    tasks = [
        asyncio.create_task(_connection(args.host, args.port, request, window, latencies, statuses, errors, r, w))
        for r, w in connections
    ]
    if args.watch_pid:
        tasks.append(asyncio.create_task(_watch(args.watch_pid, window, watched)))
    await asyncio.gather(*tasks)
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "target": f"{args.method} http://{args.host}:{args.port}{args.path}",
        "connections": args.connections,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "requests": len(latencies),
        "requests_per_s": len(latencies) / args.duration,
        "non_2xx": len(latencies) - ok,
        "status": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "latency_ms": {
            "mean": statistics.fmean(ms) if ms else float("nan"),
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "p999": percentile(ms, 99.9),
            "max": ms[-1] if ms else float("nan"),
        },
        "quantiles_ms": {str(q): round(percentile(ms, q), 4) for q in QUANTILES},
        **watched,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value' header (repeatable)")
    parser.add_argument("--body", default="")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--watch-pid", type=int, help="sample this process's RSS and CPU while measuring")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    loop_factory = None
    if args.loop != "asyncio":
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                raise
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(run(args))
    except OSError as exc:
        print(f"loadgen: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
