"""``python -m bench [BENCHMARK ...] [--quick] [options]``: run benchmarks, print tables, save plots.

With no name, every benchmark runs. Results go to ``bench/results/``
(``<benchmark>-<timestamp>.json`` and ``.png``). Ctrl-C or SIGTERM stops
every child process and removes the temporary data dir.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from bench import coach_stream, curves, http_baseline, rag, rooms, shards, writes, ws_baseline, ws_processes

# name -> entry point taking the parsed options; a new benchmark adds one line here.
BENCHMARKS: dict[str, Callable[[argparse.Namespace], int]] = {
    "http": http_baseline.run,
    "ws": ws_baseline.run,
    "processes": ws_processes.run,
    "rag": rag.run,
    "coach": coach_stream.run,
    "writes": writes.run,
    "shards": shards.run,
    "rooms": rooms.run,
    "curves": curves.run,
}

QUICK = {"repeats": 1, "warmup": 0.5, "duration": 2.0}
FULL = {"repeats": 3, "warmup": 1.0, "duration": 5.0}


def _terminate(signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C, so every ``with`` block stops what it started.
    raise KeyboardInterrupt(f"signal {signum}")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated numbers, e.g. 25,50,100") from None
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates must be > 0")
    return rates


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated counts, e.g. 1,2") from None
    if not counts or any(count < 1 for count in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError("distinct counts >= 1")
    return counts


def _metrics(text: str) -> list[str]:
    variants = [part.strip() for part in text.split(",") if part.strip()]
    if not variants or any(v not in ("on", "off") for v in variants) or len(set(variants)) != len(variants):
        raise argparse.ArgumentTypeError("on, off, or on,off")
    return variants


def _peers(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(name not in ws_baseline.PEER_NAMES for name in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"distinct names among {','.join(ws_baseline.PEER_NAMES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run benchmarks: print a table, save JSON + PNG under bench/results/."
    )
    parser.add_argument(
        "benchmarks", nargs="*", metavar="BENCHMARK", help=f"one of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="1 run x 2 s (+0.5 s warm-up) per scenario")
    parser.add_argument(
        "--repeats", type=int, help=f"runs per scenario; the median is quoted (default {FULL['repeats']})"
    )
    parser.add_argument("--duration", type=float, help=f"measured seconds per run (default {FULL['duration']:g})")
    parser.add_argument("--warmup", type=float, help=f"warm-up seconds before measuring (default {FULL['warmup']:g})")
    parser.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server under test (default 0)")
    parser.add_argument("--loadgen-cpu", type=int, default=1, help="CPU for the load generator (default 1)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other jobs to leave the CPUs idle (0: don't; default 30)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary data dir (server logs) for debugging"
    )
    parser.add_argument(
        "--metrics",
        type=_metrics,
        default=["on"],
        metavar="on,off",
        help="http, ws: our server with Prometheus metrics collected (on, the default), not (off: "
        "METRICS_ENABLED=false), or both in the same run (on,off: paired, the overhead reported)",
    )
    ws = parser.add_argument_group("ws benchmark")
    ws.add_argument("--ws-idle", type=int, metavar="N", help="idle sockets per server (default 10000; --quick 2000)")
    ws.add_argument("--ws-hold", type=float, metavar="S", help="seconds idle sockets are held (default 30; --quick 5)")
    ws.add_argument(
        "--ws-subscribers", type=int, metavar="N", help="subscribers for broadcast and storm (default 1000)"
    )
    ws.add_argument(
        "--ws-rates",
        type=_rates,
        metavar="R,R,...",
        help="publications/s for broadcast (ws: default 25,50,75,100, --quick 50,100; "
        "processes: default 50,100,150,200,300, --quick 50,150,300; shards: default 100,200,400, --quick 100,400; "
        "rooms: posts/s, default 500,1000,2000)",
    )
    ws.add_argument(
        "--ws-peers",
        type=_peers,
        default=list(ws_baseline.PEER_NAMES),
        metavar="P,P,...",
        help="ws: the peers measured beside ours: raw (a raw ASGI broadcast app), socketio (python-socketio "
        "with its Redis manager), channels (Litestar's channels plugin on Redis pub/sub); default all three",
    )
    ws.add_argument("--ws-missed", type=int, metavar="N", help="publications missed in the storm (default 50)")
    ws.add_argument(
        "--ws-publishers", type=int, metavar="N", help="publisher connections, one member each (default 16)"
    )
    procs = parser.add_argument_group(
        "processes benchmark (1 vs 2 web processes; also takes the ws options above; pins nothing)"
    )
    procs.add_argument(
        "--web-processes",
        type=_counts,
        metavar="N,N,...",
        help="serve --workers counts compared, ratios against the first (default 1,2)",
    )
    writes_group = parser.add_argument_group("writes benchmark (stored messages/s through the domain write)")
    writes_group.add_argument(
        "--writers", type=int, metavar="N", help="concurrent writers, one member account each (default 32)"
    )
    writes_group.add_argument(
        "--write-lounges",
        type=_counts,
        metavar="L,L,...",
        help="lounge counts the writers spread over, ratios against the first (default 1,10,100,1000)",
    )
    shards_group = parser.add_argument_group(
        "shards benchmark (one Valkey server vs a 3-primary cluster as the realtime Redis; "
        "also takes --ws-rates and --ws-publishers)"
    )
    shards_group.add_argument(
        "--lounges", type=int, metavar="N", help="lounges the publications spread over (shards: 60; rooms: 1000)"
    )
    shards_group.add_argument(
        "--lounge-subscribers", type=int, metavar="N", help="subscribers of each lounge (default 10)"
    )
    rooms_group = parser.add_argument_group(
        "rooms benchmark (many small lounges, posts stored then broadcast; also takes --ws-rates, --lounges and "
        "--lounge-subscribers)"
    )
    rooms_group.add_argument(
        "--coach-replies",
        dest="rooms_coach_replies",
        type=int,
        metavar="N",
        help="coach replies streaming meanwhile, one lounge each (default 10)",
    )
    curves_group = parser.add_argument_group(
        "curves benchmark (ours vs the ws peer against subscribers, payload size and idle sockets; "
        "also takes --ws-subscribers for the payload curve, --ws-hold and --ws-publishers)"
    )
    curves_group.add_argument(
        "--curve-subscribers",
        type=_counts,
        metavar="S,S,...",
        help="subscribers of the one lounge (default 100,1000,5000)",
    )
    curves_group.add_argument(
        "--curve-payloads", type=_counts, metavar="B,B,...", help="message sizes in bytes (default 100,1024,8192)"
    )
    curves_group.add_argument(
        "--curve-idle",
        type=_counts,
        metavar="N,N,...",
        help="idle sockets held, capped by the open-file hard limit (default 1000,10000,20000)",
    )
    curves_group.add_argument(
        "--curve-deliveries",
        type=int,
        metavar="D",
        help="delivery budget: publications/s = D / subscribers (default 25000)",
    )
    curves_group.add_argument(
        "--curve-ceiling",
        action="store_true",
        help="also find, per subscriber count, the highest rate that keeps up (one run per x1.5 rung)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--repeats and --connections must be >= 1, --duration > 0, --warmup >= 0")
    if args.curve_deliveries is not None and args.curve_deliveries < 1:
        parser.error("--curve-deliveries must be >= 1")
    if args.writers is not None and args.writers < 1:
        parser.error("--writers must be >= 1")
    if any(value is not None and value < 1 for value in (args.lounges, args.lounge_subscribers)):
        parser.error("--lounges and --lounge-subscribers must be >= 1")
    if args.rooms_coach_replies is not None and args.rooms_coach_replies < 0:
        parser.error("--coach-replies must be >= 0")

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _terminate)
    status = 0
    try:
        for name in args.benchmarks or list(BENCHMARKS):
            status = BENCHMARKS[name](args) or status
    except KeyboardInterrupt:
        print("\nbench: interrupted; child processes stopped", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
