"""How the realtime Redis's work spreads over shards, and what sharding costs: ``python -m bench shards``.

Two web nodes (two ``python -m server serve`` processes on their own ports, JSON encoding,
``bench ws``'s settings: raised rate limits, long-lived tokens) on either realtime Redis:

- **single**  — one Valkey server: ``REALTIME_REDIS_URL`` unset, so the realtime Redis is
  the queue Redis (``REDIS_URL``);
- **cluster** — a 3-primary Valkey cluster without replicas
  (:class:`tests.support.valkey_cluster.ValkeyCluster`) in ``REALTIME_REDIS_URL``; arq
  stays on the one server.

Both pairs of nodes run for the whole bench; runs alternate between them, interleaved by
repeat and rate. The workload is ``bench.ws_load``'s broadcast spread over many lounges:
L lounges (``--lounges``, 60) with S subscribers each (``--lounge-subscribers``, 10),
half of each lounge's subscribers on either node, and publisher members of every lounge
(half on either node) posting R publications/s in total, round robin over the lounges,
open loop, each carrying its send time.

Per configuration and rate, over the measured window: delivered/s, publish→deliver
p50/p99, missing/gaps/duplicates; CPU of each web node, of PostgreSQL and of each Redis
process (``valkey-server``; the scheduler's account in ``/proc``, to the nanosecond);
calls per command on each Redis server (``INFO commandstats``), ``SPUBLISH`` among them;
and CPU per publication of all Redis processes and of the web nodes, with their ratios
cluster / single paired by repeat.

Neither configuration persists anything: the bench's Valkey has its append-only file
turned off (the cluster's nodes have none), so the comparison is of the layouts, not of
disk writes. Nothing is pinned: the nodes, the shards, PostgreSQL and the load generator
share every CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench import ws_setup
from bench.procfs import nofile_limits, raise_nofile, tree_scheduled_seconds
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
from bench.stack import BenchStack, Server
from bench.ws_baseline import OURS, OURS_ENV, Cell, _alive, _quiet, _run, broadcast_stats, code_version
from bench.ws_load import command as ws_command

if TYPE_CHECKING:
    from tests.support.valkey_cluster import ValkeyCluster

log = logging.getLogger("bench")

SINGLE, CLUSTER = "single", "cluster"
LABELS = {SINGLE: "one server", CLUSTER: "3-primary cluster"}
PRIMARIES = 3
REDIS_FIGURES = (
    "cpu_percent",
    "spublish_per_s",
    "commands_per_s",
    "cycles_per_s",
    "commands_per_cycle",
    "exec_us_per_command",
    "cpu_us_per_command",
)
IDLE_S = 3.0  # Redis CPU with every node up and no load, measured once before the runs


@dataclass(frozen=True)
class RedisProcess:
    """One ``valkey-server``: what it is, its pid and its port."""

    name: str
    pid: int
    port: int


@dataclass
class Layout:
    """One configuration: its web nodes and the Redis processes it uses."""

    nodes: list[Server]
    realtime: list[RedisProcess]  # the realtime Redis: one server, or each primary of the cluster
    queue: RedisProcess | None  # the queue Redis when it is another process than the realtime one

    @property
    def redis(self) -> list[RedisProcess]:
        return [*self.realtime, *([self.queue] if self.queue else [])]


def defaults(args: argparse.Namespace) -> dict[str, Any]:
    quick = getattr(args, "quick", False)
    return {
        "lounges": getattr(args, "lounges", None) or 60,
        "per_lounge": getattr(args, "lounge_subscribers", None) or 10,
        "publishers": getattr(args, "ws_publishers", None) or 16,
        "rates": getattr(args, "ws_rates", None) or ([100.0, 400.0] if quick else [100.0, 200.0, 400.0]),
        "drain": 10.0,
    }


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _turn_off_append_only(port: int) -> None:
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as connection:
        connection.config_set("appendonly", "no")


def _idle_cpu(pids: list[int], seconds: float) -> dict[int, float | None]:
    """CPU of each process over ``seconds`` of nothing to do, in percent of one CPU."""
    before = {pid: tree_scheduled_seconds(pid) for pid in pids}
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    idle: dict[int, float | None] = {}
    for pid, then in before.items():
        now = tree_scheduled_seconds(pid)
        idle[pid] = 100 * (now - then) / elapsed if now is not None and then is not None else None
    return idle


def _derived(layout: Layout, pg_pid: int | None, result: dict[str, Any]) -> dict[str, Any]:
    """One run's per-process figures: web nodes (subscribers, CPU), PostgreSQL, each Redis
    process (CPU, SPUBLISH/s, commands/s, event loop cycles/s, commands per cycle, CPU per
    command), the load generator, other jobs, and CPU per publication of all Redis processes
    and of the nodes."""
    cpu = result.get("cpu_percent_by_pid") or {}
    subscribers = result.get("subscribers_by_port") or {}
    counters = result.get("redis_by_port") or {}
    elapsed = result["elapsed_s"]
    publications = result["publisher"]["sent_in_window"]
    redis = []
    for process in layout.redis:
        counted = counters.get(str(process.port)) or {"calls": {}, "stats": {}}
        # Every command but the bench's own INFO at the window's edges.
        commands = sum(n for c, n in counted["calls"].items() if c != "info")
        cycles = counted["stats"].get("eventloop_cycles", 0)
        percent = cpu.get(str(process.pid))
        redis.append(
            {
                "name": process.name,
                "cpu_percent": percent,
                "spublish_per_s": counted["calls"].get("spublish", 0) / elapsed,
                "commands_per_s": commands / elapsed,
                "cycles_per_s": cycles / elapsed,
                "commands_per_cycle": commands / cycles if cycles else None,
                # Its own clock of the time spent running commands, per command.
                "exec_us_per_command": counted["stats"].get("eventloop_duration_cmd_sum", 0) / commands
                if commands
                else None,
                "cpu_us_per_command": percent / 100 * elapsed / commands * 1e6 if percent and commands else None,
            }
        )
    nodes = [cpu.get(str(node.pid)) for node in layout.nodes]
    watched = sum(v for v in cpu.values() if v is not None)
    loadgen = result["loadgen_cpu_percent"] + (result.get("publisher") or {}).get("cpu_percent", 0.0)

    def per_publication_us(percents: list[float | None]) -> float | None:
        if not publications or None in percents:
            return None
        return sum(percents) / 100 * elapsed / publications * 1e6  # type: ignore[arg-type]

    return {
        "subscribers_per_node": [subscribers.get(str(node.port), 0) for node in layout.nodes],
        "nodes_cpu_percent": nodes,
        "postgresql_cpu_percent": cpu.get(str(pg_pid)) if pg_pid else None,
        "redis": redis,
        "redis_cpu_percent": sum(r["cpu_percent"] or 0 for r in redis),
        "loadgen_cpu_percent": loadgen,
        # The machine's busy CPU less the load generator and every watched process (both
        # layouts' nodes and Redis processes, PostgreSQL): other jobs.
        "other_cpu_percent": result["machine_cpu_percent"] - loadgen - watched,
        "redis_us_per_publication": per_publication_us([r["cpu_percent"] for r in redis]),
        "web_us_per_publication": per_publication_us(nodes),
    }


def run(args: argparse.Namespace) -> int:
    from tests.support.valkey_cluster import ValkeyCluster

    plan = defaults(args)
    json_path, png_path = output_paths("shards")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = os.getloadavg()
    _, hard = nofile_limits()
    raise_nofile()
    cells = {(rate, name): Cell(f"{name} {rate:g}/s", OURS) for rate in plan["rates"] for name in (SINGLE, CLUSTER)}

    with BenchStack(keep_logs=args.keep_logs) as stack, ValkeyCluster(primaries=PRIMARIES, replicas=0) as cluster:
        env = stack.start_services()
        services = stack.service_pids()
        queue_port = _port(env["REDIS_URL"])
        _turn_off_append_only(queue_port)
        queue = RedisProcess("valkey (queue)", services["valkey"], queue_port)
        shards = [
            RedisProcess(f"shard {i + 1} (slots {n.slots[0][0]}-{n.slots[0][1]})", n.process.pid, n.port)  # type: ignore[union-attr]
            for i, n in enumerate(cluster.nodes)
        ]
        log.info("Valkey cluster: %d primaries on ports %s", PRIMARIES, [s.port for s in shards])
        layouts = {}
        for name, extra in ((SINGLE, {}), (CLUSTER, {"REALTIME_REDIS_URL": cluster.url})):
            single = name == SINGLE
            layouts[name] = Layout(
                nodes=[
                    stack.start_ours(cpu=None, name=f"ours-{name}-{n}", extra_env={**OURS_ENV, **extra}, nofile=hard)
                    for n in (1, 2)
                ],
                realtime=[RedisProcess("valkey", queue.pid, queue.port)] if single else shards,
                queue=None if single else queue,
            )
        setup = ws_setup.prepare_lounges(
            {**env, **OURS_ENV},
            layouts[SINGLE].nodes[0],
            stack.data_dir,
            lounges=plan["lounges"],
            per_lounge=plan["per_lounge"],
            publishers=plan["publishers"],
        )
        lounges_per_shard = _lounges_per_shard(cluster, shards, setup.channels, env)
        every_redis = [queue, *shards]
        idle = _idle_cpu([r.pid for r in every_redis], IDLE_S)
        pg_pid = services.get("postgresql")
        watched = [node.pid for layout in layouts.values() for node in layout.nodes]
        watched += [pid for pid in [pg_pid, *(r.pid for r in every_redis)] if pid]
        total = args.repeats * len(plan["rates"]) * len(layouts)
        done = 0
        for repeat in range(args.repeats):
            busy = _quiet(args)  # once per repeat: the pairs of one repeat run back to back
            for rate in plan["rates"]:
                for name, layout in layouts.items():
                    done += 1
                    print(f"[{done}/{total}] {name} {rate:g}/s (run {repeat + 1}) ...", file=sys.stderr, flush=True)
                    argv = ws_command(
                        "broadcast",
                        OURS,
                        layout.nodes[0].port,
                        node_port=[node.port for node in layout.nodes[1:]],
                        setup=setup.path,
                        sockets=plan["lounges"] * plan["per_lounge"],
                        rate=rate,
                        warmup=args.warmup,
                        duration=args.duration,
                        drain=plan["drain"],
                        publishers=plan["publishers"],
                        watch_cpu=watched,
                        watch_redis=[r.port for r in every_redis],
                    )
                    timeout = args.warmup + args.duration + plan["drain"] + 240
                    result = _run(argv, None, timeout, busy)
                    for node in layout.nodes:
                        _alive(node, result)
                    result["repeat"] = repeat
                    if "failed" not in result:
                        result["derived"] = _derived(layout, pg_pid, result)
                    cells[(rate, name)].runs.append(result)

    config = {
        "repeats": args.repeats,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "encoding": "json",
        "web_nodes": "two `python -m server serve` processes per layout, each on its own port",
        "layouts": {
            name: {
                "label": LABELS[name],
                "realtime_redis": [r.name for r in layout.realtime],
                "queue_redis": layout.queue.name if layout.queue else "the realtime Redis",
            }
            for name, layout in layouts.items()
        },
        "lounges_per_shard": lounges_per_shard,
        "idle_redis_cpu_percent": {
            name: {r.name: idle[r.pid] for r in layout.redis} for name, layout in layouts.items()
        },
        "persistence": "none: the queue Valkey's appendonly turned off for the bench; cluster nodes without any",
        "pinning": "none: web nodes, Valkey processes, PostgreSQL and the load generator share every CPU",
        "quiet_wait_s": args.quiet_wait,
        "load_average": {"before": load_before, "after": os.getloadavg()},  # 1, 5 and 15 minutes
        "ours_env": OURS_ENV,
        "setup_s": round(setup.seconds, 1),
        "users": setup.users,
        "code": code_version(),
        **plan,
    }
    summary = summarize(cells, plan["rates"])
    print()
    print(render(summary, config))
    payload = {
        "benchmark": "shards",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "summary": summary,
        "runs": [{"rate": rate, "layout": name, "runs": cell.runs} for (rate, name), cell in cells.items()],
    }
    save_json(json_path, payload)
    plot(png_path, summary, config, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    failed = sum(1 for cell in cells.values() for r in cell.runs if "failed" in r)
    if failed:
        print(f"WARNING: {failed} run(s) failed; see the JSON", file=sys.stderr)
    return 0


def _lounges_per_shard(
    cluster: ValkeyCluster, shards: list[RedisProcess], channels: list[str], env: dict[str, str]
) -> dict:
    """How many of the lounges' pub/sub channels each primary owns (by their slots)."""
    from server.foundation.settings import load_settings
    from server.streams.broker import pubsub_channel

    prefix = load_settings(env).redis_prefix
    by_port = {s.port: s.name for s in shards}
    counts = dict.fromkeys(by_port.values(), 0)
    for channel in channels:
        counts[by_port[cluster.primary_for(pubsub_channel(prefix, channel)).port]] += 1
    return counts


# -- summaries -------------------------------------------------------------------------------


def _ok(cell: Cell) -> list[dict[str, Any]]:
    return [r for r in cell.runs if "derived" in r]


def _derived_stat(cell: Cell, key: str) -> list[Any]:
    return [(r.get("derived") or {}).get(key) for r in cell.runs]


def _per_node(runs: list[dict[str, Any]], key: str) -> list[float | None]:
    """The median of each node's ``key`` over the runs."""
    width = max((len(r["derived"][key]) for r in runs), default=0)
    return [median(r["derived"][key][i] for r in runs) for i in range(width)]


def _redis_rows(cell: Cell) -> list[dict[str, Any]]:
    """Medians over the runs, per Redis process (in the layout's order)."""
    runs = [r["derived"]["redis"] for r in _ok(cell)]
    if not runs:
        return []
    return [
        {
            "name": runs[0][i]["name"],
            **{key: median(run[i][key] for run in runs) for key in REDIS_FIGURES},
        }
        for i in range(len(runs[0]))
    ]


def summarize(cells: dict[tuple[float, str], Cell], rates: list[float]) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        base = cells[(rate, SINGLE)]
        for name in (SINGLE, CLUSTER):
            cell = cells[(rate, name)]
            ok = _ok(cell)
            rows.append(
                {
                    "rate": rate,
                    "layout": name,
                    **broadcast_stats(cell),
                    "subscribers_per_node": _per_node(ok, "subscribers_per_node"),
                    "nodes_cpu_percent": _per_node(ok, "nodes_cpu_percent"),
                    "postgresql_cpu_percent": median(_derived_stat(cell, "postgresql_cpu_percent")),
                    "loadgen_cpu_percent": median(_derived_stat(cell, "loadgen_cpu_percent")),
                    "other_cpu_percent": median(_derived_stat(cell, "other_cpu_percent")),
                    "redis": _redis_rows(cell),
                    "redis_cpu_percent": median(_derived_stat(cell, "redis_cpu_percent")),
                    "redis_us_per_publication": median(_derived_stat(cell, "redis_us_per_publication")),
                    "web_us_per_publication": median(_derived_stat(cell, "web_us_per_publication")),
                    "redis_us_vs_single": paired_ratio(
                        _derived_stat(cell, "redis_us_per_publication"), _derived_stat(base, "redis_us_per_publication")
                    ),
                    "web_us_vs_single": paired_ratio(
                        _derived_stat(cell, "web_us_per_publication"), _derived_stat(base, "web_us_per_publication")
                    ),
                    "p99_vs_single": paired_ratio(cell.stat("latency_ms", "p99"), base.stat("latency_ms", "p99")),
                    "problem_runs": sum(1 for r in cell.runs if "server_exited" in r),
                }
            )
    return rows


# -- text ------------------------------------------------------------------------------------


def _plus(values: list[float | None], digits: int = 0, suffix: str = "") -> str:
    return " + ".join(fmt(v, digits, suffix) for v in values) or "-"


def render(summary: list[dict[str, Any]], config: dict[str, Any]) -> str:
    subscribers = config["lounges"] * config["per_lounge"]
    out = [
        f"Sharded realtime Redis: two web nodes (two serve processes, JSON encoding) on one Valkey server vs a "
        f"{PRIMARIES}-primary Valkey cluster; medians of {config['repeats']} run(s) of {config['duration_s']:g} s "
        f"(+{config['warmup_s']:g} s warm-up), interleaved by repeat and rate; code {config['code']['git_head']} + "
        f"{config['code']['server_files_changed']} changed file(s) in server/",
        f"Workload: {config['lounges']} lounges x {config['per_lounge']} subscribers ({subscribers:,} sockets), "
        f"{config['publishers']} publishers posting round robin over the lounges. Lounges per shard: "
        + ", ".join(f"{n} {k.split(' (')[0]}" for k, n in config["lounges_per_shard"].items())
        + f". Persistence: {config['persistence']}. Pinning: {config['pinning']}. Load average (1/5/15 min) "
        + " -> ".join("/".join(f"{v:.2f}" for v in config["load_average"][k]) for k in ("before", "after")),
        "",
        "1. delivery",
    ]
    rows = []
    for r in summary:
        first = r["layout"] == SINGLE
        rows.append(
            [
                f"{r['rate']:g}/s",
                LABELS[r["layout"]],
                _plus(r["subscribers_per_node"]),
                fmt(r["offered_per_s"], 0),
                fmt(r["delivered_per_s"], 0),
                fmt(r["p50_ms"], 1),
                fmt(r["p99_ms"], 1),
                "" if first else fmt_ratio(r["p99_vs_single"]),
                f"{r['missing']}/{r['gaps']}/{r['duplicates']}",
                "yes" if r["keeps_up"] else "NO",
                _plus(r["nodes_cpu_percent"], 0, "%"),
                fmt(r["web_us_per_publication"], 0),
                "" if first else fmt_ratio(r["web_us_vs_single"]),
                fmt(r["postgresql_cpu_percent"], 0, "%"),
                fmt(r["loadgen_cpu_percent"], 0, "%"),
                fmt(r["other_cpu_percent"], 0, "%"),
            ]
        )
    out.append(
        format_table(
            [
                "rate",
                "realtime Redis",
                "subscribers/node",
                "offered/s",
                "delivered/s",
                "p50 ms",
                "p99 ms",
                "p99 vs single",
                "miss/gap/dup",
                "keeps up",
                "node CPU",
                "node µs/pub",
                "vs single",
                "PG CPU",
                "loadgen CPU",
                "other jobs CPU",
            ],
            rows,
        )
    )
    out += ["", "2. Redis: each valkey-server process over the window (idle: every node up, no load)"]
    rows = []
    idle = config["idle_redis_cpu_percent"]
    for r in summary:
        spublish = sum(p["spublish_per_s"] or 0 for p in r["redis"])
        for index, process in enumerate(r["redis"]):
            first = index == 0
            single = r["layout"] == SINGLE
            rows.append(
                [
                    f"{r['rate']:g}/s" if first else "",
                    LABELS[r["layout"]] if first else "",
                    process["name"],
                    fmt(process["cpu_percent"], 1, "%"),
                    fmt(idle[r["layout"]][process["name"]], 1, "%"),
                    fmt(process["spublish_per_s"], 0),
                    fmt(100 * (process["spublish_per_s"] or 0) / spublish, 0, "%") if spublish else "-",
                    fmt(process["commands_per_s"], 0),
                    fmt(process["commands_per_cycle"], 2),
                    fmt(process["exec_us_per_command"], 1),
                    fmt(process["cpu_us_per_command"], 1),
                    fmt(r["redis_cpu_percent"], 1, "%") if first else "",
                    fmt(r["redis_us_per_publication"], 1) if first else "",
                    fmt_ratio(r["redis_us_vs_single"]) if first and not single else "",
                ]
            )
    out.append(
        format_table(
            [
                "rate",
                "realtime Redis",
                "process",
                "CPU",
                "idle CPU",
                "SPUBLISH/s",
                "share",
                "commands/s",
                "cmds/cycle",
                "exec µs/cmd",
                "CPU µs/cmd",
                "all Redis CPU",
                "Redis µs/pub",
                "vs single",
            ],
            rows,
        )
    )
    out += [
        "",
        "CPU: percent of one CPU over the measured window. 'node CPU': each web node; "
        "'µs/pub': CPU per publication sent in the window (node: both nodes; Redis: every valkey-server the "
        "layout uses, the queue Valkey included); 'vs single': paired by repeat. 'loadgen': the subscribers' "
        "process and the publisher child; 'other jobs': the machine's busy CPU less the load generator and every "
        "process shown (both layouts').",
        "'keeps up': >= 95% of the offered deliveries inside the window, nothing missing, the backlog drained "
        "within 1 s. 'commands/s': every command the server ran (SPUBLISH, the history cache's ZADD/EXPIRE/"
        "ZREMRANGEBYRANK, rate limits, presence, heartbeats); 'cmds/cycle': commands per turn of its event loop "
        "(INFO stats eventloop_cycles); 'exec µs/cmd': its own clock of the time running commands "
        "(eventloop_duration_cmd_sum) per command; 'CPU µs/cmd': its CPU per command.",
    ]
    return "\n".join(out)


# -- plot ------------------------------------------------------------------------------------


def plot(path, summary: list[dict[str, Any]], config: dict[str, Any], machine: dict[str, Any]) -> None:
    plt = pyplot()
    fig, ((ax_cpu, ax_pub), (ax_us, ax_lat)) = plt.subplots(2, 2, figsize=(15, 10))
    rates = sorted({r["rate"] for r in summary})
    by = {(r["rate"], r["layout"]): r for r in summary}
    labels = [f"{rate:g} publications/s" for rate in rates]

    def per_process(key: str) -> dict[str, list[float | None]]:
        """``key`` of every Redis process of both layouts, one value per rate."""
        series: dict[str, list[float | None]] = {}
        for name in (SINGLE, CLUSTER):
            for index, process in enumerate(by[(rates[0], name)]["redis"]):
                label = f"{LABELS[name]}: {process['name']}"
                series[label] = [by[(rate, name)]["redis"][index][key] for rate in rates]
        return series

    bar_panel(
        ax_cpu,
        labels,
        per_process("cpu_percent"),
        title="CPU of each valkey-server over the window",
        ylabel="% of one CPU",
        value_format="{:.1f}",
    )
    bar_panel(
        ax_pub,
        labels,
        {k: v for k, v in per_process("spublish_per_s").items() if "queue" not in k},
        title="SPUBLISH calls per second on each realtime Redis server",
        ylabel="calls / s",
    )
    bar_panel(
        ax_us,
        labels,
        {LABELS[name]: [by[(rate, name)]["redis_us_per_publication"] for rate in rates] for name in (SINGLE, CLUSTER)},
        notes={LABELS[CLUSTER]: [fmt_ratio(by[(rate, CLUSTER)]["redis_us_vs_single"]) for rate in rates]},
        title="CPU of all valkey-server processes per publication (ratio cluster / single)",
        ylabel="µs",
    )
    for index, name in enumerate((SINGLE, CLUSTER)):
        for quantile, style in (("p50", ":"), ("p99", "-")):
            ax_lat.plot(
                rates,
                [by[(rate, name)][f"{quantile}_ms"] for rate in rates],
                marker="o",
                linestyle=style,
                color=f"C{index}",
                label=f"{LABELS[name]} {quantile}",
            )
    ax_lat.set_yscale("log")
    ax_lat.set_title("Publish -> deliver latency (median of runs; log scale)", fontsize=11)
    ax_lat.set_xlabel("publications / s")
    ax_lat.set_ylabel("ms")
    ax_lat.grid(alpha=0.3, which="both")
    ax_lat.legend(fontsize=8)
    fig.suptitle(
        f"Realtime Redis: one Valkey server vs a {PRIMARIES}-primary cluster; 2 web nodes, {config['lounges']} "
        f"lounges x {config['per_lounge']} subscribers, nothing pinned; {config['repeats']} run(s)\n"
        f"{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
