"""``python -m bench curves``: how our WebSocket gateway scales, against the raw ASGI peer.

Three curves, ours (``python -m server serve``, JSON encoding) and the peer
(``bench.ws_peer``) measured in the same run, one uvicorn worker each on the
server CPU, the load generator (``bench.ws_load``) on the other:

- **subscribers** — one lounge of S subscribers (``--curve-subscribers``, default
  100 / 1,000 / 5,000), 100-byte messages, published at a steady rate chosen for a
  fixed **delivery budget** (``--curve-deliveries``, default 25,000 deliveries/s:
  250/s to 100 subscribers, 25/s to 1,000, 5/s to 5,000), so every size asks the
  same work per second of the server and the curve shows what the width of the
  fan-out costs. Deliveries/s and publish→deliver p50/p99 (every delivery timed).
  ``--curve-ceiling`` then looks, per size and target, for the highest rate that
  keeps up: one run per rung of a ladder x1.5 above the budget's rate, until one
  does not (at most :data:`CEILING_STEPS` rungs).
- **payload** — the same at 1,000 subscribers (``--ws-subscribers``) and the same
  budget's rate, messages of 100 B / 1 KiB / 8 KiB (``--curve-payloads``): ours
  pads the message text to that size (the push carries the text in the stored
  message's envelope), the peer its whole message.
- **idle** — N sockets opened and held (``--curve-idle``, default 1,000 / 10,000 /
  20,000): ours connect with a token each and subscribe to the lounge; the peer's
  sockets are all subscribers of its broadcast. RSS per socket as ``bench ws``
  measures it (RSS held - RSS after a warm-up batch, over N), each run on a fresh
  server process. A server needs one file descriptor per socket: N is capped at the
  hard ``RLIMIT_NOFILE`` less :data:`FD_RESERVE` (a process cannot raise its hard
  limit without ``CAP_SYS_RESOURCE``), and at the loopback's ephemeral ports (one
  load generator, one destination port; each idle run's fresh server has its own
  port). The table says what was asked and what was held.

Broadcast runs are interleaved by repeat (each point's peer and ours back to back,
which goes first alternating by repeat); so are the idle runs. A point both
broadcast curves share (1,000 subscribers, 100 B) is run once and shown in both.
Ratios are ours / peer, paired by repeat. Medians of ``--repeats`` (default 3);
``--quick``: one short run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ws_setup
from bench.http_baseline import _pin_plan
from bench.procfs import nofile_limits, raise_nofile
from bench.results import (
    fmt,
    fmt_ratio,
    format_table,
    machine_info,
    median,
    output_paths,
    paired_ratio,
    pyplot,
    save_json,
)
from bench.stack import HOST, BenchStack, Server, stop_process
from bench.ws_baseline import OURS, OURS_ENV, PEER, Cell, _alive, _quiet, _run, broadcast_stats, code_version
from bench.ws_load import command as ws_command

log = logging.getLogger("bench")

TARGETS = (PEER, OURS)
LABELS = {PEER: "peer", OURS: "ours"}
# 8 KiB texts are longer than a chat message may be by default (4,000 characters).
CURVES_ENV = {**OURS_ENV, "MESSAGE_MAX_LENGTH": "65536"}
SUBSCRIBER_CURVE_PAYLOAD = 100  # bytes of each message of the subscribers curve
IDLE_WARMUP = 200  # sockets opened and closed before each idle measurement
FD_RESERVE = 300  # descriptors a server needs besides its sockets (listener, pools, logs, epoll)
CEILING_STEPS = 5  # rungs of x1.5 above the budget's rate


@dataclass(frozen=True)
class Point:
    """One broadcast configuration (both targets run it)."""

    subscribers: int
    payload: int
    rate: float

    @property
    def label(self) -> str:
        return f"{self.subscribers:,} subs, {self.payload:,} B, {self.rate:g}/s"


def ephemeral_ports() -> int:
    """How many local ports a client may take per destination (``ip_local_port_range``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 28_232
    return high - low + 1


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every size and rate of the run, the idle sizes capped by what the machine allows."""
    quick = getattr(args, "quick", False)
    budget = getattr(args, "curve_deliveries", None) or 25_000
    _, hard = nofile_limits()
    idle_cap = min(hard - FD_RESERVE, ephemeral_ports() - IDLE_WARMUP - 100)
    asked = getattr(args, "curve_idle", None) or [1000, 10_000, 20_000]
    return {
        "delivery_budget_per_s": budget,
        "subscribers": getattr(args, "curve_subscribers", None) or [100, 1000, 5000],
        "subscriber_curve_payload": SUBSCRIBER_CURVE_PAYLOAD,
        "payloads": getattr(args, "curve_payloads", None) or [100, 1024, 8192],
        "payload_subscribers": getattr(args, "ws_subscribers", None) or 1000,
        "idle_asked": asked,
        "idle": sorted({min(n, idle_cap) for n in asked}),
        "idle_cap": idle_cap,
        "hold": getattr(args, "ws_hold", None) or (5.0 if quick else 30.0),
        "publishers": getattr(args, "ws_publishers", None) or 16,
        "ceiling": bool(getattr(args, "curve_ceiling", False)),
        "drain": 10.0,
    }


def budget_rate(config: dict[str, Any], subscribers: int) -> float:
    """Publications/s that offer the delivery budget to ``subscribers`` (2 significant digits)."""
    return float(f"{config['delivery_budget_per_s'] / subscribers:.2g}")


def curve_points(config: dict[str, Any]) -> tuple[list[Point], list[Point]]:
    by_subscribers = [
        Point(s, config["subscriber_curve_payload"], budget_rate(config, s)) for s in config["subscribers"]
    ]
    s = config["payload_subscribers"]
    by_payload = [Point(s, p, budget_rate(config, s)) for p in config["payloads"]]
    return by_subscribers, by_payload


def run(args: argparse.Namespace) -> int:
    config = plan(args)
    server_cpu, loadgen_cpu = _pin_plan(args.server_cpu, args.loadgen_cpu)
    json_path, png_path = output_paths("curves")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    soft, hard = nofile_limits()
    raise_nofile()
    if config["idle"] != sorted(set(config["idle_asked"])):
        log.warning(
            "idle sockets capped at %d (RLIMIT_NOFILE hard limit %d, %d ephemeral ports): measuring %s",
            config["idle_cap"],
            hard,
            ephemeral_ports(),
            config["idle"],
        )
    by_subscribers, by_payload = curve_points(config)
    points = list(dict.fromkeys([*by_subscribers, *by_payload]))  # a shared point runs once
    cells = {(p, t): Cell(f"{t} {p.label}", t) for p in points for t in TARGETS}
    idle_cells = {(n, t): Cell(f"{t} idle {n}", t) for n in config["idle"] for t in TARGETS}
    members = max(max(config["idle"]) + IDLE_WARMUP, max(p.subscribers for p in points))
    ceilings: dict[tuple[int, str], list[dict[str, Any]]] = {}

    with BenchStack(keep_logs=args.keep_logs) as stack:
        env = stack.start_services()
        peer = stack.start_server(
            "ws-peer",
            [sys.executable, "-m", "bench.ws_peer", "--host", HOST, "--port", "{port}"],
            cpu=server_cpu,
            nofile=hard,
        )
        ours = stack.start_ours(cpu=server_cpu, extra_env=CURVES_ENV, nofile=hard)
        servers: dict[str, Server] = {PEER: peer, OURS: ours}
        # Every user is a member of the lounge: idle sockets subscribe too.
        setup = ws_setup.prepare(
            {**env, **CURVES_ENV},
            ours,
            stack.data_dir,
            idle=max(config["idle"]) + IDLE_WARMUP,
            subscribers=members,
            publishers=config["publishers"],
            api_joins=1000,
        )
        total = args.repeats * (len(points) + len(config["idle"])) * len(TARGETS)
        done = 0

        def progress(what: str) -> None:
            nonlocal done
            done += 1
            print(f"[{done}/{total}] {what} ...", file=sys.stderr, flush=True)

        def broadcast(point: Point, target: str) -> dict[str, Any]:
            server = servers[target]
            busy = _quiet(args)
            argv = ws_command(
                "broadcast",
                target,
                server.port,
                setup=setup.path,
                sockets=point.subscribers,
                rate=point.rate,
                payload_bytes=point.payload,
                warmup=args.warmup,
                duration=args.duration,
                drain=config["drain"],
                publishers=config["publishers"],
                watch_pid=server.pid,
            )
            timeout = args.warmup + args.duration + config["drain"] + 240 + point.subscribers / 50
            return _alive(server, _run(argv, loadgen_cpu, timeout, busy))

        for repeat in range(args.repeats):
            order = TARGETS if repeat % 2 == 0 else TARGETS[::-1]
            # Idle: a fresh server per run (a second run on the same process would reuse what the first freed).
            for sockets in config["idle"]:
                for target in order:
                    progress(f"idle {target}: {sockets:,} sockets held {config['hold']:g} s (run {repeat + 1})")
                    if target == OURS:
                        server = stack.start_ours(cpu=server_cpu, name="ours-idle", extra_env=CURVES_ENV, nofile=hard)
                    else:
                        server = stack.start_server(
                            "ws-peer-idle",
                            [sys.executable, "-m", "bench.ws_peer", "--host", HOST, "--port", "{port}"],
                            cpu=server_cpu,
                            nofile=hard,
                        )
                    busy = _quiet(args)
                    argv = ws_command(
                        "idle",
                        target,
                        server.port,
                        setup=setup.path,
                        sockets=sockets,
                        warmup_sockets=IDLE_WARMUP,
                        hold=config["hold"],
                        subscribe=True,
                        watch_pid=server.pid,
                    )
                    result = _alive(server, _run(argv, loadgen_cpu, sockets / 20 + config["hold"] + 180, busy))
                    result["repeat"] = repeat
                    idle_cells[(sockets, target)].runs.append(result)
                    stop_process(server.process, server.name)
            for point in points:
                for target in order:
                    progress(f"broadcast {target}: {point.label} (run {repeat + 1})")
                    result = broadcast(point, target)
                    result["repeat"] = repeat
                    cells[(point, target)].runs.append(result)

        if config["ceiling"]:
            for point in by_subscribers:
                for target in TARGETS:
                    budget_stats = broadcast_stats(cells[(point, target)])
                    if not budget_stats["keeps_up"]:
                        continue
                    ladder = ceilings.setdefault((point.subscribers, target), [{"rate": point.rate, **budget_stats}])
                    rate = point.rate
                    for _ in range(CEILING_STEPS):
                        rate = float(f"{rate * 1.5:.3g}")
                        rung = Point(point.subscribers, point.payload, rate)
                        print(f"ceiling {target}: {rung.label} ...", file=sys.stderr, flush=True)
                        stats = broadcast_stats(Cell(rung.label, target, [broadcast(rung, target)]))
                        ladder.append({"rate": rate, **stats})
                        if not stats["keeps_up"]:
                            break

    summary = {
        "subscribers": summarize_points(cells, by_subscribers),
        "payload": summarize_points(cells, by_payload),
        "idle": summarize_idle(idle_cells, config["idle"]),
        "ceiling": summarize_ceiling(ceilings, by_subscribers) if config["ceiling"] else None,
    }
    config.update(
        {
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "server_cpu": server_cpu,
            "loadgen_cpu": loadgen_cpu,
            "uvicorn_workers": 1,
            "quiet_wait_s": args.quiet_wait,
            "nofile": {"soft": soft, "hard": hard},
            "ephemeral_ports": ephemeral_ports(),
            "ours_env": CURVES_ENV,
            "setup_s": round(setup.seconds, 1),
            "users": setup.users,
            "code": code_version(),
        }
    )
    print()
    print(render(summary, config))
    payload: dict[str, Any] = {
        "benchmark": "curves",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "summary": summary,
        "runs": {
            "broadcast": [
                {"subscribers": p.subscribers, "payload": p.payload, "rate": p.rate, "target": t, "runs": c.runs}
                for (p, t), c in cells.items()
            ],
            "idle": [{"sockets": n, "target": t, "runs": c.runs} for (n, t), c in idle_cells.items()],
        },
    }
    for kind in payload["runs"]["broadcast"]:
        for r in kind["runs"]:
            r.pop("cpu_affinity", None)
    save_json(json_path, payload)
    plot(png_path, summary, config, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    failed = [r for c in [*cells.values(), *idle_cells.values()] for r in c.runs if "failed" in r]
    if failed:
        print(f"WARNING: {len(failed)} run(s) failed; see the JSON", file=sys.stderr)
    return 0


# -- summaries -------------------------------------------------------------------------------


def summarize_points(cells: dict[tuple[Point, str], Cell], points: list[Point]) -> list[dict[str, Any]]:
    """Per point: each target's medians, and ours / peer paired by repeat."""
    rows = []
    for point in points:
        peer, ours = cells[(point, PEER)], cells[(point, OURS)]
        rows.append(
            {
                "subscribers": point.subscribers,
                "payload_bytes": point.payload,
                "rate": point.rate,
                PEER: broadcast_stats(peer),
                OURS: broadcast_stats(ours),
                "delivered_vs_peer": paired_ratio(ours.stat("delivered_per_s"), peer.stat("delivered_per_s")),
                "p50_vs_peer": paired_ratio(ours.stat("latency_ms", "p50"), peer.stat("latency_ms", "p50")),
                "p99_vs_peer": paired_ratio(ours.stat("latency_ms", "p99"), peer.stat("latency_ms", "p99")),
                "server_cpu_vs_peer": paired_ratio(ours.stat("server_cpu_percent"), peer.stat("server_cpu_percent")),
            }
        )
    return rows


def _idle_stats(cell: Cell) -> dict[str, Any]:
    ok = [r for r in cell.runs if "failed" not in r]
    return {
        "runs": len(cell.runs),
        "failed_runs": len(cell.runs) - len(ok),
        "sockets_open": median(r.get("sockets_open") for r in ok),
        "sockets_open_min": min((r.get("sockets_open") or 0 for r in ok), default=None),
        "per_socket_kib": cell.median("per_socket_kib"),
        "per_socket_kib_runs": cell.stat("per_socket_kib"),
        "per_socket_kib_max": cell.median("per_socket_kib_max"),
        "rss_before_kib": cell.median("rss_before_kib"),
        "rss_held_kib": cell.median("rss_held_kib"),
        "connects_per_s": cell.median("connects_per_s"),
        "connect_p99_ms": cell.median("connect_ms", "p99"),
        "dropped_while_held": cell.total("dropped_while_held"),
        "errors": [r.get("errors") for r in ok if r.get("errors")],
        "pings_answered": cell.total("pings_answered"),
        "other_cpu_percent": cell.median("holding", "other_cpu_percent"),
    }


def summarize_idle(cells: dict[tuple[int, str], Cell], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for sockets in sizes:
        peer, ours = cells[(sockets, PEER)], cells[(sockets, OURS)]
        rows.append(
            {
                "sockets": sockets,
                PEER: _idle_stats(peer),
                OURS: _idle_stats(ours),
                "per_socket_vs_peer": paired_ratio(ours.stat("per_socket_kib"), peer.stat("per_socket_kib")),
            }
        )
    return rows


def summarize_ceiling(
    ceilings: dict[tuple[int, str], list[dict[str, Any]]], points: list[Point]
) -> list[dict[str, Any]]:
    """Per size and target: the highest rate kept up (the ladder starts with the budget's rate,
    its medians) with its p99, and whether the ladder ended on a rung that did not keep up
    (else the ceiling is higher)."""
    rows = []
    for point in points:
        row: dict[str, Any] = {"subscribers": point.subscribers, "budget_rate": point.rate}
        for target in TARGETS:
            ladder = ceilings.get((point.subscribers, target))
            if ladder is None:  # the budget's rate itself did not keep up
                row[target] = {"highest_rate_kept_up": None, "bounded": True, "ladder": []}
                continue
            highest = max((r for r in ladder if r["keeps_up"]), key=lambda r: r["rate"])
            row[target] = {
                "highest_rate_kept_up": highest["rate"],
                "deliveries_per_s": highest["rate"] * point.subscribers,
                "p99_ms": highest["p99_ms"],
                "bounded": not ladder[-1]["keeps_up"],
                "ladder": [
                    {k: r[k] for k in ("rate", "delivered_per_s", "p99_ms", "keeps_up", "server_cpu_percent")}
                    for r in ladder
                ],
            }
        rows.append(row)
    return rows


# -- text ------------------------------------------------------------------------------------


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def _mib(kib: float | None) -> float | None:
    return kib / 1024 if kib is not None else None


def _broadcast_table(rows: list[dict[str, Any]], first: str, key: str) -> str:
    body = []
    for r in rows:
        peer, ours = r[PEER], r[OURS]
        body.append(
            [
                f"{r[key]:,}",
                f"{r['rate']:g}",
                fmt(ours["offered_per_s"] or peer["offered_per_s"], 0),
                fmt(peer["delivered_per_s"], 0),
                fmt(ours["delivered_per_s"], 0),
                fmt_ratio(r["delivered_vs_peer"]),
                fmt(peer["p50_ms"], 1),
                fmt(ours["p50_ms"], 1),
                fmt_ratio(r["p50_vs_peer"]),
                fmt(peer["p99_ms"], 1),
                fmt(ours["p99_ms"], 1),
                fmt_ratio(r["p99_vs_peer"]),
                f"{_yes(peer['keeps_up'])}/{_yes(ours['keeps_up'])}",
                f"{fmt(peer['server_cpu_percent'], 0, '%')}/{fmt(ours['server_cpu_percent'], 0, '%')}",
                fmt(ours["frame_bytes_per_delivery"], 0),
                f"{fmt(peer['other_cpu_percent'], 0, '%')}/{fmt(ours['other_cpu_percent'], 0, '%')}",
            ]
        )
    return format_table(
        [
            first,
            "rate/s",
            "offered/s",
            "peer deliv/s",
            "ours deliv/s",
            "ours/peer",
            "peer p50 ms",
            "ours p50 ms",
            "ours/peer",
            "peer p99 ms",
            "ours p99 ms",
            "ours/peer",
            "keeps up p/o",
            "srv CPU p/o",
            "ours B/deliv",
            "other CPU p/o",
        ],
        body,
    )


def render(summary: dict[str, Any], config: dict[str, Any]) -> str:
    budget = config["delivery_budget_per_s"]
    out = [
        f"WebSocket scaling curves: ours (JSON) vs the raw ASGI peer, 1 uvicorn worker on CPU "
        f"{config['server_cpu']}, load generator on CPU {config['loadgen_cpu']}; medians of "
        f"{config['repeats']} run(s) of {config['duration_s']:g} s (+{config['warmup_s']:g} s warm-up); "
        f"ratios ours/peer paired by repeat; code {config['code']['git_head']} + "
        f"{config['code']['server_files_changed']} changed file(s) in server/",
        "",
        f"1. subscribers per lounge: {config['subscriber_curve_payload']} B messages at a fixed delivery budget "
        f"of {budget:,} deliveries/s (rate = budget / subscribers)",
        _broadcast_table(summary["subscribers"], "subscribers", "subscribers"),
        "",
        f"2. payload size: {config['payload_subscribers']:,} subscribers, the same budget "
        f"({budget_rate(config, config['payload_subscribers']):g} publications/s); ours pads the message text, "
        "the peer its whole message",
        _broadcast_table(summary["payload"], "payload B", "payload_bytes"),
        "",
        f"3. idle sockets held {config['hold']:g} s (ours: connect with a token + subscribe to the lounge; "
        f"peer: subscribers of its broadcast); a fresh server per run; asked {config['idle_asked']}, "
        f"cap {config['idle_cap']:,} (RLIMIT_NOFILE hard {config['nofile']['hard']:,} - {FD_RESERVE}, "
        f"{config['ephemeral_ports']:,} ephemeral ports)",
    ]
    rows = []
    for r in summary["idle"]:
        peer, ours = r[PEER], r[OURS]
        rows.append(
            [
                f"{r['sockets']:,}",
                f"{peer['sockets_open_min'] or 0:,}/{ours['sockets_open_min'] or 0:,}",
                fmt(peer["per_socket_kib"], 1),
                fmt(ours["per_socket_kib"], 1),
                fmt_ratio(r["per_socket_vs_peer"]),
                f"{fmt(_mib(peer['rss_before_kib']), 0)} -> {fmt(_mib(peer['rss_held_kib']), 0)}",
                f"{fmt(_mib(ours['rss_before_kib']), 0)} -> {fmt(_mib(ours['rss_held_kib']), 0)}",
                f"{fmt(peer['connects_per_s'], 0)}/{fmt(ours['connects_per_s'], 0)}",
                f"{peer['dropped_while_held']}/{ours['dropped_while_held']}",
                f"{fmt(peer['other_cpu_percent'], 0, '%')}/{fmt(ours['other_cpu_percent'], 0, '%')}",
            ]
        )
    out.append(
        format_table(
            [
                "sockets",
                "held (min) p/o",
                "peer KiB/sock",
                "ours KiB/sock",
                "ours/peer",
                "peer RSS MiB",
                "ours RSS MiB",
                "conn/s p/o",
                "dropped p/o",
                "other CPU p/o",
            ],
            rows,
        )
    )
    if summary["ceiling"]:
        out += [
            "",
            "1b. highest publication rate that keeps up, per size (one run per rung of x1.5 above the budget's "
            "rate; '>=': the last rung still kept up), with its p99",
        ]
        rows = []
        for r in summary["ceiling"]:
            cells = []
            for target in TARGETS:
                c = r[target]
                rate = c["highest_rate_kept_up"]
                if rate is None:
                    cells += ["< budget", "-", "-"]
                else:
                    cells += [
                        f"{'' if c['bounded'] else '>= '}{rate:,g}",
                        fmt(c["deliveries_per_s"], 0),
                        fmt(c["p99_ms"], 1),
                    ]
            rows.append([f"{r['subscribers']:,}", f"{r['budget_rate']:g}", *cells])
        out.append(
            format_table(
                [
                    "subscribers",
                    "budget rate",
                    "peer rate/s",
                    "peer deliv/s",
                    "peer p99 ms",
                    "ours rate/s",
                    "ours deliv/s",
                    "ours p99 ms",
                ],
                rows,
            )
        )
    out += [
        "",
        "p/o = peer/ours. 'keeps up': >= 95% of the offered deliveries/s inside the window, nothing missing, the "
        "backlog drained within 1 s. 'ours B/deliv': bytes on the wire per publication push (frame headers "
        "included). 'other CPU': what the rest of the machine used meanwhile (PostgreSQL, Valkey, the publisher, "
        "other jobs).",
    ]
    return "\n".join(out)


# -- plot ------------------------------------------------------------------------------------


def plot(path, summary: dict[str, Any], config: dict[str, Any], machine: dict[str, Any]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    styles = {PEER: ("s", "C0"), OURS: ("o", "C1")}
    panels = (
        ("subscribers", "subscribers", "subscribers per lounge", f"{config['subscriber_curve_payload']} B messages"),
        ("payload", "payload_bytes", "payload bytes", f"{config['payload_subscribers']:,} subscribers"),
    )
    budget = config["delivery_budget_per_s"]
    for column, (curve, key, xlabel, fixed) in enumerate(panels):
        rows = summary[curve]
        xs = [r[key] for r in rows]
        ax_rate, ax_lat = axes[0][column], axes[1][column]
        for target in TARGETS:
            marker, color = styles[target]
            stats = [r[target] for r in rows]
            ax_rate.plot(xs, [s["delivered_per_s"] for s in stats], marker=marker, color=color, label=LABELS[target])
            for x, s in zip(xs, stats, strict=True):
                ax_rate.scatter([x] * len(s["delivered_runs"]), s["delivered_runs"], s=10, color="black", zorder=3)
            ax_lat.plot(
                xs, [s["p50_ms"] for s in stats], marker=marker, color=color, linestyle=":", label=f"{target} p50"
            )
            ax_lat.plot(xs, [s["p99_ms"] for s in stats], marker=marker, color=color, label=f"{target} p99")
        ax_rate.axhline(budget, color="grey", linestyle=":", linewidth=1, label="offered")
        if curve == "subscribers" and summary["ceiling"]:
            for target in TARGETS:
                marker, color = styles[target]
                kept = [
                    (r["subscribers"], r[target]["deliveries_per_s"], r[target]["bounded"])
                    for r in summary["ceiling"]
                    if r[target]["highest_rate_kept_up"] is not None
                ]
                ax_rate.plot(
                    [x for x, _, _ in kept],
                    [y for _, y, _ in kept],
                    marker=marker,
                    color=color,
                    linestyle="--",
                    label=f"{LABELS[target]}: highest kept up (>=: still kept up at the top)",
                )
                for x, y, bounded in kept:
                    if not bounded:
                        ax_rate.annotate(">=", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
        ax_rate.set_title(f"Deliveries/s vs {xlabel} ({fixed}, budget {budget:,}/s)", fontsize=11)
        ax_rate.set_ylabel("delivered / s")
        ax_rate.set_ylim(0, ax_rate.get_ylim()[1] * 1.15)
        ax_lat.set_title(f"Publish -> deliver latency vs {xlabel} (log)", fontsize=11)
        ax_lat.set_ylabel("ms")
        ax_lat.set_yscale("log")
        for ax in (ax_rate, ax_lat):
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:,}" for x in xs])
            ax.minorticks_off()
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    ax_kib, ax_rss = axes[0][2], axes[1][2]
    idle = summary["idle"]
    xs = [r["sockets"] for r in idle]
    for target in TARGETS:
        marker, color = styles[target]
        stats = [r[target] for r in idle]
        ax_kib.plot(xs, [s["per_socket_kib"] for s in stats], marker=marker, color=color, label=LABELS[target])
        for x, s in zip(xs, stats, strict=True):
            runs = [v for v in s["per_socket_kib_runs"] if v is not None]
            ax_kib.scatter([x] * len(runs), runs, s=10, color="black", zorder=3)
        ax_rss.plot(xs, [_mib(s["rss_held_kib"]) for s in stats], marker=marker, color=color, label=LABELS[target])
    ax_kib.set_title("Server RSS per idle socket (authenticated, subscribed)", fontsize=11)
    ax_kib.set_ylabel("KiB per socket")
    ax_kib.set_ylim(bottom=0)
    ax_rss.set_title("Server RSS with the sockets held", fontsize=11)
    ax_rss.set_ylabel("MiB")
    ax_rss.set_ylim(bottom=0)
    for ax in (ax_kib, ax_rss):
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("idle sockets")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"WebSocket gateway (JSON) vs raw ASGI peer: scaling curves - 1 uvicorn worker on CPU {config['server_cpu']}, "
        f"load generator on CPU {config['loadgen_cpu']}, median of {config['repeats']} run(s) (dots = runs)\n"
        f"{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
