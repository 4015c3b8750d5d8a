"""One web process against two (``serve --workers 2``) on this machine: ``python -m bench processes``.

Our server, JSON encoding, as 1 and as 2 web processes (``--web-processes``), in the
same run, interleaved by repeat so drift hits both alike:

- **broadcast** — 1,000 subscribers of one lounge, publishers at a steady rate R for
  D s (``bench.ws_load``'s broadcast scenario): delivered/s, publish→deliver
  p50/p99, gaps/duplicates/missing, and which node holds how many subscribers;
- **idle**      — N authenticated idle sockets held: (RSS held − RSS before) / N,
  where RSS is ``VmRSS`` summed over the supervisor and every node. Each idle run
  gets a fresh server, started for it and stopped after it.

Nothing is pinned: N processes cannot share one pinned CPU, so the servers, the load
generator and its publisher child, PostgreSQL and Valkey all run on every CPU the bench
may use, the load generator on the same cores as the server. CPU and RSS of a server
are those of its whole process tree (``--watch-tree``). Ratios pair runs of the same
repeat and compare each process count with the first (``1``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from bench import ws_setup
from bench.http_baseline import BUSY_WARNING
from bench.procfs import machine_busy_percent, nofile_limits, raise_nofile
from bench.results import (
    bar_panel,
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
from bench.stack import BenchStack, Server, stop_process
from bench.ws_baseline import OURS, OURS_ENV, Cell, _quiet, _run, broadcast_stats, code_version
from bench.ws_load import command as ws_command

log = logging.getLogger("bench")

WARMUP_SOCKETS = 200  # idle: opened and closed before "before" is read


def defaults(args: argparse.Namespace) -> dict[str, Any]:
    quick = getattr(args, "quick", False)
    return {
        "processes": getattr(args, "web_processes", None) or [1, 2],
        "idle": getattr(args, "ws_idle", None) or (2000 if quick else 10_000),
        "hold": getattr(args, "ws_hold", None) or (5.0 if quick else 30.0),
        "subscribers": getattr(args, "ws_subscribers", None) or 1000,
        "rates": getattr(args, "ws_rates", None)
        or ([50.0, 150.0, 300.0] if quick else [50.0, 100.0, 150.0, 200.0, 300.0]),
        "publishers": getattr(args, "ws_publishers", None) or 16,
        "drain": 10.0,
    }


def _affinity(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def _checked(server: Server, nodes: list[int], result: dict[str, Any]) -> dict[str, Any]:
    """Flag a run whose server exited, or one of whose nodes died (and was replaced)."""
    code = server.process.poll()
    if code is not None:
        log.error("%s (pid %d) exited with %s during the run", server.name, server.pid, code)
        result["server_exited"] = code
    elif sorted(server.nodes() or [server.pid]) != sorted(nodes):
        log.error("%s: a web process died during the run (nodes %s -> %s)", server.name, nodes, server.nodes())
        result["nodes_replaced"] = True
    return result


def run(args: argparse.Namespace) -> int:
    plan = defaults(args)
    counts: list[int] = plan["processes"]
    base = counts[0]
    json_path, png_path = output_paths("processes")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    soft, hard = nofile_limits()
    own_limit = raise_nofile()
    if hard < plan["idle"] + WARMUP_SOCKETS + 64:
        log.warning("RLIMIT_NOFILE hard limit is %d: idle sockets lowered from %d", hard, plan["idle"])
        plan["idle"] = max(100, hard - WARMUP_SOCKETS - 64)
    log.info("open-file limit: soft %d, hard %d (raised to %d for every bench process)", soft, hard, own_limit)
    log.info("nothing pinned: servers, load generator, PostgreSQL and Valkey share CPUs %s", _affinity(0))

    idle_cells = {n: Cell(f"{n}p", OURS) for n in counts}
    bcast_cells = {(rate, n): Cell(f"{n}p {rate:g}/s", OURS) for rate in plan["rates"] for n in counts}
    affinity: dict[str, Any] = {"bench": _affinity(0)}

    with BenchStack(keep_logs=args.keep_logs) as stack:
        env = stack.start_services()
        services = stack.service_pids()  # their CPU is reported apart from "other"
        servers = {
            n: stack.start_ours(cpu=None, name=f"ours-{n}p", extra_env=OURS_ENV, nofile=hard, workers=n) for n in counts
        }
        nodes = {n: s.nodes() or [s.pid] for n, s in servers.items()}
        affinity["servers"] = {
            f"{n}p": {pid: _affinity(pid) for pid in [s.pid, *s.nodes()]} for n, s in servers.items()
        }
        setup = ws_setup.prepare(
            {**env, **OURS_ENV},
            servers[base],
            stack.data_dir,
            idle=plan["idle"] + WARMUP_SOCKETS,
            subscribers=plan["subscribers"],
            publishers=plan["publishers"],
        )
        busy_before = machine_busy_percent(1.0)
        if busy_before > BUSY_WARNING:
            log.warning("the machine is busy (%.0f%% of one CPU in use): expect noisy numbers", busy_before)
        total = args.repeats * len(counts) * (1 + len(plan["rates"]))
        done = 0

        def progress(what: str) -> None:
            nonlocal done
            done += 1
            print(f"[{done}/{total}] {what} ...", file=sys.stderr, flush=True)

        # 1. idle: a fresh server per run (a second run on the same processes would reuse
        #    memory the first one freed), interleaved by repeat.
        for repeat in range(args.repeats):
            for n in counts:
                server = stack.start_ours(
                    cpu=None, name=f"idle-{n}p-{repeat + 1}", extra_env=OURS_ENV, nofile=hard, workers=n
                )
                idle_nodes = server.nodes() or [server.pid]
                progress(f"idle {n}p: {plan['idle']:,} sockets held {plan['hold']:g} s (run {repeat + 1})")
                busy = _quiet(args)
                argv = ws_command(
                    "idle",
                    OURS,
                    server.port,
                    setup=setup.path,
                    sockets=plan["idle"],
                    warmup_sockets=WARMUP_SOCKETS,
                    hold=plan["hold"],
                    watch_pid=server.pid,
                    watch_tree=True,
                    watch_service=list(services.values()),
                )
                result = _checked(server, idle_nodes, _run(argv, None, plan["idle"] / 20 + plan["hold"] + 180, busy))
                result["repeat"] = repeat
                idle_cells[n].runs.append(result)
                stop_process(server.process, server.name)

        # 2. broadcast, interleaved by repeat: every rate on 1 process, then on 2, ...
        for repeat in range(args.repeats):
            for rate in plan["rates"]:
                for n in counts:
                    server = servers[n]
                    progress(f"broadcast {n}p {rate:g}/s x {plan['subscribers']} (run {repeat + 1})")
                    busy = _quiet(args)
                    argv = ws_command(
                        "broadcast",
                        OURS,
                        server.port,
                        setup=setup.path,
                        sockets=plan["subscribers"],
                        rate=rate,
                        warmup=args.warmup,
                        duration=args.duration,
                        drain=plan["drain"],
                        publishers=plan["publishers"],
                        watch_pid=server.pid,
                        watch_tree=True,
                        watch_service=list(services.values()),
                    )
                    timeout = args.warmup + args.duration + plan["drain"] + 240
                    result = _checked(server, nodes[n], _run(argv, None, timeout, busy))
                    result["repeat"] = repeat
                    affinity.setdefault("loadgen", result.get("cpu_affinity"))
                    bcast_cells[(rate, n)].runs.append(result)

    config = {
        "repeats": args.repeats,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "encoding": "json",
        "pinning": (
            "none: every server process (supervisor and nodes), the load generator and its publisher child, "
            "PostgreSQL and Valkey run unpinned on the same CPUs"
        ),
        "cpu_affinity": affinity,
        "services_watched": sorted(services),
        "machine_busy_before_percent": round(busy_before, 1),
        "quiet_wait_s": args.quiet_wait,
        "nofile": {"soft": soft, "hard": hard},
        "ours_env": OURS_ENV,
        "setup_s": round(setup.seconds, 1),
        "users": setup.users,
        "code": code_version(),
        **plan,
    }
    summary = {
        "idle": summarize_idle(idle_cells, counts),
        "broadcast": summarize_broadcast(bcast_cells, plan["rates"], counts),
    }
    print()
    print(render(summary, config))
    payload: dict[str, Any] = {
        "benchmark": "processes",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "summary": summary,
        "runs": {
            "idle": [{"processes": n, "runs": c.runs} for n, c in idle_cells.items()],
            "broadcast": [{"rate": rate, "processes": n, "runs": c.runs} for (rate, n), c in bcast_cells.items()],
        },
    }
    save_json(json_path, payload)
    plot(png_path, summary, config, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    failed = [r for c in [*idle_cells.values(), *bcast_cells.values()] for r in c.runs if "failed" in r]
    if failed:
        print(f"WARNING: {len(failed)} run(s) failed; see the JSON", file=sys.stderr)
    return 0


# -- summaries -------------------------------------------------------------------------------


def _node_sockets(runs: list[dict[str, Any]], when: str | None = None) -> list[float]:
    """Client sockets per web node (the supervisor, which holds none, left out), most loaded
    first; the median of each rank over the runs."""
    ranked = []
    for run in runs:
        group = run.get("server_group") or {}
        if when is not None:
            group = group.get(when) or {}
        processes = group.get("processes") or []
        nodes = processes[1:] or processes  # one process: the node itself
        ranked.append(sorted((p["sockets"] for p in nodes), reverse=True))
    width = max((len(r) for r in ranked), default=0)
    return [median(r[i] for r in ranked if len(r) > i) or 0 for i in range(width)]


def summarize_idle(cells: dict[int, Cell], counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    base = cells[counts[0]]
    for n in counts:
        cell = cells[n]
        ok = [r for r in cell.runs if "failed" not in r]
        kib = [r.get("per_socket_kib") for r in ok]
        present = [k for k in kib if k is not None]
        rows.append(
            {
                "processes": n,
                "runs": len(cell.runs),
                "failed_runs": len(cell.runs) - len(ok),
                "sockets_requested": cell.median("sockets_requested"),
                "sockets_open": cell.median("sockets_open"),
                "sockets_per_node": _node_sockets(ok, "held"),
                "rss_before_kib": cell.median("rss_before_kib"),
                "rss_held_kib": cell.median("rss_held_kib"),
                "pss_before_kib": cell.median("server_group", "before", "pss_kib"),
                "pss_held_kib": cell.median("server_group", "held", "pss_kib"),
                "per_socket_kib": median(present),
                "per_socket_kib_min": min(present, default=None),
                "per_socket_kib_max": max(present, default=None),
                "per_socket_kib_runs": kib,
                "vs_base": paired_ratio(cell.stat("per_socket_kib"), base.stat("per_socket_kib")),
                "connects_per_s": cell.median("connects_per_s"),
                "pings_answered": cell.total("pings_answered"),
                "dropped_while_held": cell.total("dropped_while_held"),
                "open_server_cpu_percent": cell.median("opening", "server_cpu_percent"),
                "hold_server_cpu_percent": cell.median("holding", "server_cpu_percent"),
                "other_cpu_percent": cell.median("holding", "other_cpu_percent"),
            }
        )
    return rows


def _vs(cell: Cell, base: Cell, *keys: str) -> float | None:
    """``cell``'s runs against ``base``'s, paired by repeat."""
    return paired_ratio(cell.stat(*keys), base.stat(*keys))


def summarize_broadcast(
    cells: dict[tuple[float, int], Cell], rates: list[float], counts: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        base = cells[(rate, counts[0])]
        for n in counts:
            cell = cells[(rate, n)]

            rows.append(
                {
                    "rate": rate,
                    "processes": n,
                    **broadcast_stats(cell),
                    "sockets_per_node": _node_sockets([r for r in cell.runs if "failed" not in r]),
                    "services_cpu_percent": cell.median("services_cpu_percent"),
                    "rest_cpu_percent": cell.median("rest_cpu_percent"),
                    "delivered_vs_base": _vs(cell, base, "delivered_per_s"),
                    "p50_vs_base": _vs(cell, base, "latency_ms", "p50"),
                    "p99_vs_base": _vs(cell, base, "latency_ms", "p99"),
                    "server_cpu_vs_base": _vs(cell, base, "server_cpu_percent"),
                    "problem_runs": sum(1 for r in cell.runs if "server_exited" in r or r.get("nodes_replaced")),
                }
            )
    return rows


# -- text ------------------------------------------------------------------------------------


def _mib(kib: float | None) -> float | None:
    return kib / 1024 if kib is not None else None


def _nodes(sockets: list[float]) -> str:
    return " + ".join(f"{s:,.0f}" for s in sockets) or "-"


def render(summary: dict[str, Any], config: dict[str, Any]) -> str:
    counts = config["processes"]
    base = counts[0]
    vs = f"vs {base}p"
    out = [
        f"Web processes: `serve --workers N` for N in {', '.join(map(str, counts))} (JSON encoding); medians of "
        f"{config['repeats']} run(s) of {config['duration_s']:g} s (+{config['warmup_s']:g} s warm-up), interleaved "
        f"by repeat; code {config['code']['git_head']} + {config['code']['server_files_changed']} changed file(s) "
        "in server/",
        f"Pinning: {config['pinning']} (CPUs {config['cpu_affinity'].get('bench')}); the load generator runs on the "
        "same cores as the server.",
        f"Ratios ({vs}) pair runs of the same repeat.",
        "",
        f"1. broadcast: {config['subscribers']:,} subscribers of one lounge, steady publish rate, every delivery timed "
        "(publish -> subscriber's read)",
    ]
    rows = []
    for r in summary["broadcast"]:
        first = r["processes"] == base
        rows.append(
            [
                f"{r['rate']:g}/s",
                f"{r['processes']}p",
                _nodes(r["sockets_per_node"]),
                fmt(r["offered_per_s"], 0),
                fmt(r["delivered_per_s"], 0),
                f"{fmt(r['delivered_min'], 0)}-{fmt(r['delivered_max'], 0)}",
                fmt(r["p50_ms"], 1),
                fmt(r["p99_ms"], 1),
                fmt(r["max_ms"], 1),
                str(r["missing"]),
                f"{r['gaps']}/{r['duplicates']}/{r['text_mismatches'] if r['text_mismatches'] is not None else '-'}",
                str(r["dropped_subscribers"]),
                "yes" if r["keeps_up"] else "NO",
                fmt(r["server_cpu_percent"], 0, "%"),
                fmt(r["loadgen_cpu_percent"], 0, "%"),
                fmt(r["services_cpu_percent"], 0, "%"),
                fmt(r["rest_cpu_percent"], 0, "%"),
                "" if first else fmt_ratio(r["delivered_vs_base"]),
                "" if first else fmt_ratio(r["p50_vs_base"]),
                "" if first else fmt_ratio(r["p99_vs_base"]),
                "" if first else fmt_ratio(r["server_cpu_vs_base"]),
            ]
        )
    out.append(
        format_table(
            [
                "rate",
                "procs",
                "subscribers/node",
                "offered/s",
                "delivered/s",
                "range",
                "p50 ms",
                "p99 ms",
                "max ms",
                "missing",
                "gap/dup/text",
                "dropped",
                "keeps up",
                "server CPU",
                "loadgen CPU",
                "PG+Valkey CPU",
                "rest CPU",
                f"deliv {vs}",
                f"p50 {vs}",
                f"p99 {vs}",
                f"CPU {vs}",
            ],
            rows,
        )
    )
    out += [
        "",
        f"2. idle: {config['idle']:,} authenticated sockets held {config['hold']:g} s, a fresh server per run; "
        "RSS and PSS summed over the supervisor and its nodes",
    ]
    rows = []
    for r in summary["idle"]:
        first = r["processes"] == base
        rows.append(
            [
                f"{r['processes']}p",
                f"{r['sockets_open'] or 0:,.0f}/{r['sockets_requested'] or 0:,.0f}",
                _nodes(r["sockets_per_node"]),
                fmt(_mib(r["rss_before_kib"]), 1),
                fmt(_mib(r["pss_before_kib"]), 1),
                fmt(_mib(r["rss_held_kib"]), 1),
                fmt(r["per_socket_kib"], 1),
                f"{fmt(r['per_socket_kib_min'], 1)}-{fmt(r['per_socket_kib_max'], 1)}",
                "" if first else fmt_ratio(r["vs_base"]),
                str(r["pings_answered"]),
                str(r["dropped_while_held"]),
                fmt(r["open_server_cpu_percent"], 0, "%"),
                fmt(r["hold_server_cpu_percent"], 1, "%"),
            ]
        )
    out.append(
        format_table(
            [
                "procs",
                "open/asked",
                "sockets/node",
                "RSS before MiB",
                "PSS before MiB",
                "RSS held MiB",
                "KiB/socket",
                "range",
                vs,
                "pings",
                "dropped",
                "srv CPU opening",
                "srv CPU held",
            ],
            rows,
        )
    )
    out += ["", f"3. summary, {' vs '.join(f'{n}p' for n in counts)} (medians)", summary_table(summary, counts)]
    out += [
        "",
        "CPU columns: percent of one CPU over the measured window (a server of N processes: their sum); "
        "'PG+Valkey': PostgreSQL (postmaster and backends) and Valkey; 'rest': everything else on the machine "
        "(the publisher child, other jobs).",
        "'keeps up': >= 95% of the offered deliveries/s inside the window, nothing missing, the backlog drained "
        "within 1 s of the window's end. 'subscribers/node', 'sockets/node': client sockets each web process held.",
    ]
    return "\n".join(out)


def summary_table(summary: dict[str, Any], counts: list[int]) -> str:
    """One row per measure, one column per process count, and each count's ratio to the first
    (paired by repeat where the runs allow it). ``*``: that process count did not keep up."""
    base = counts[0]
    by = {(r["rate"], r["processes"]): r for r in summary["broadcast"]}
    idle = {r["processes"]: r for r in summary["idle"]}
    rates = sorted({r["rate"] for r in summary["broadcast"]})
    rows = []

    def row(
        label: str,
        values: dict[int, float | None],
        digits: int,
        suffix: str = "",
        ratios: dict[int, float | None] | None = None,
        marked: frozenset[int] | set[int] = frozenset(),
    ) -> None:
        if ratios is None:
            first = values[base]
            ratios = {n: v / first if v and first else None for n, v in values.items()}
        cells = [fmt(values[n], digits, suffix) + ("*" if n in marked else "") for n in counts]
        rows.append([label, *cells, *(fmt_ratio(ratios[n]) for n in counts[1:])])

    for rate in rates:
        cells = {n: by[(rate, n)] for n in counts}
        behind = {n for n in counts if not cells[n]["keeps_up"]}
        for label, key, digits, suffix, ratio in (
            ("delivered/s", "delivered_per_s", 0, "", "delivered_vs_base"),
            ("p50 ms", "p50_ms", 1, "", "p50_vs_base"),
            ("p99 ms", "p99_ms", 1, "", "p99_vs_base"),
            ("server CPU", "server_cpu_percent", 0, "%", "server_cpu_vs_base"),
        ):
            row(
                f"{label} at {rate:g}/s",
                {n: cells[n][key] for n in counts},
                digits,
                suffix,
                ratios={n: cells[n][ratio] for n in counts},
                marked=behind,
            )
    kept_up = {n: max((r for r in rates if by[(r, n)]["keeps_up"]), default=None) for n in counts}
    row("highest rate kept up, /s", kept_up, 0, ratios=dict.fromkeys(counts))
    row(
        "idle KiB/socket",
        {n: idle[n]["per_socket_kib"] for n in counts},
        1,
        ratios={n: idle[n]["vs_base"] for n in counts},
    )
    row("idle RSS before, MiB (all processes)", {n: _mib(idle[n]["rss_before_kib"]) for n in counts}, 1)
    row("idle PSS before, MiB (all processes)", {n: _mib(idle[n]["pss_before_kib"]) for n in counts}, 1)
    headers = ["measure", *(f"{n} process" + ("es" if n > 1 else "") for n in counts)]
    headers += [f"{n}p/{base}p" for n in counts[1:]]
    return format_table(headers, rows) + "\n* did not keep up at that rate (see 'keeps up' above)"


# -- plot ------------------------------------------------------------------------------------


def plot(path, summary: dict[str, Any], config: dict[str, Any], machine: dict[str, Any]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    (ax_rate, ax_lat), (ax_cpu, ax_idle) = axes
    counts = config["processes"]
    markers = "os^vD"
    rows = summary["broadcast"]
    for index, n in enumerate(counts):
        mine = [r for r in rows if r["processes"] == n]
        color, marker, label = f"C{index}", markers[index % len(markers)], f"{n} process" + ("es" if n > 1 else "")
        offered = [r["offered_per_s"] or r["rate"] * config["subscribers"] for r in mine]
        ax_rate.plot(offered, [r["delivered_per_s"] for r in mine], marker=marker, color=color, label=label)
        for x, r in zip(offered, mine, strict=True):
            ax_rate.scatter([x] * len(r["delivered_runs"]), r["delivered_runs"], s=10, color="black", zorder=3)
        rates = [r["rate"] for r in mine]
        ax_lat.plot(rates, [r["p50_ms"] for r in mine], marker=marker, color=color, linestyle=":", label=f"{label} p50")
        ax_lat.plot(rates, [r["p99_ms"] for r in mine], marker=marker, color=color, label=f"{label} p99")
        for rate, r in zip(rates, mine, strict=True):
            ax_lat.scatter([rate] * len(r["p99_runs"]), r["p99_runs"], s=8, color="black", zorder=3)
        ax_cpu.plot(
            rates, [r["server_cpu_percent"] for r in mine], marker=marker, color=color, label=f"{label}: server"
        )
        ax_cpu.plot(
            rates,
            [r["loadgen_cpu_percent"] for r in mine],
            marker=marker,
            color=color,
            linestyle=":",
            label=f"{label}: load generator",
        )
        ax_cpu.plot(
            rates,
            [r["services_cpu_percent"] for r in mine],
            marker=marker,
            color=color,
            linestyle="-.",
            linewidth=0.8,
            label=f"{label}: PostgreSQL + Valkey",
        )
    top = max([r["offered_per_s"] or 0 for r in rows] + [1])
    ax_rate.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle=":", label="delivered = offered")
    ax_rate.set_title(f"Broadcast to {config['subscribers']:,} subscribers (median; dots = runs)", fontsize=11)
    ax_rate.set_xlabel("offered deliveries / s (publish rate x subscribers)")
    ax_rate.set_ylabel("delivered / s")
    ax_rate.grid(alpha=0.3)
    ax_rate.legend(fontsize=8)
    ax_lat.set_yscale("log")
    ax_lat.set_title("Publish -> deliver latency (median of runs; log scale)", fontsize=11)
    ax_lat.set_xlabel("publications / s")
    ax_lat.set_ylabel("ms")
    ax_lat.grid(alpha=0.3, which="both")
    ax_lat.legend(fontsize=8)
    ax_cpu.set_title("CPU during the measured window (percent of one CPU; server = all its processes)", fontsize=11)
    ax_cpu.set_xlabel("publications / s")
    ax_cpu.set_ylabel("% of one CPU")
    ax_cpu.set_ylim(bottom=0)
    ax_cpu.grid(alpha=0.3)
    ax_cpu.legend(fontsize=7, ncol=2)
    idle = summary["idle"]
    bar_panel(
        ax_idle,
        [f"{r['processes']}p\nsockets/node {_nodes(r['sockets_per_node'])}" for r in idle],
        {"KiB per idle socket": [r["per_socket_kib"] for r in idle]},
        points={"KiB per idle socket": [[k for k in r["per_socket_kib_runs"] if k is not None] for r in idle]},
        notes={"KiB per idle socket": [fmt_ratio(r["vs_base"]) if i else None for i, r in enumerate(idle)]},
        title=f"Server RSS per idle socket ({config['idle']:,} sockets; supervisor + nodes)",
        ylabel="KiB",
        value_format="{:.1f}",
    )
    fig.suptitle(
        f"Web processes: serve --workers {' vs '.join(map(str, counts))} (JSON encoding), nothing pinned: servers and "
        f"load generator share CPUs {config['cpu_affinity'].get('bench')}; {config['repeats']} run(s)\n"
        f"{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
