"""HTTP baseline: our app's request path against a raw ASGI peer, same uvicorn, same CPU.

Scenarios (each run R times, interleaved so drift hits all of them alike):

- ``peer GET /``          — ``bench.peer``: a few lines of ASGI answering ``{"status":"ok"}``;
- ``peer GET /db``        — the same after one ``SELECT $1::text`` through an asyncpg pool:
  the floor of any read that touches PostgreSQL, for the reads below;
- ``ours GET /health``    — the real app, no I/O: routing, middleware, msgspec;
- ``ours GET /users/me``  — an authenticated call at its cheapest: the bearer token and
  its session (kept per process for ``AUTH_CACHE_SECONDS``), the caller's own row;
- the reads a mobile app makes when it opens, as that signed-in user: the lounge list
  (``/lounges?limit=20``), its threads (``/chat/threads?limit=20``), one page of a
  thread's history (``/chat/threads/{id}/messages?limit=20``, 20 stored messages) and
  its notifications (``/notifications?limit=20``): each one or two SQL statements.

``--metrics on,off`` runs ours twice, with Prometheus metrics collected and with
``METRICS_ENABLED=false`` (two servers on the same CPU, their runs interleaved), and
reports what collecting costs: ours with / ours without, paired by repeat.

One uvicorn worker per server, pinned to the server CPU; the load generator
pinned to the other CPU. PostgreSQL and Valkey are not pinned (they share the
machine with both, as they would share a small host).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

from bench.loadgen import command as loadgen_command
from bench.procfs import available_cpus, machine_busy_percent, wait_for_quiet
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
from bench.stack import BenchStack, Server, create_user_token, http_json, run_pinned_json

log = logging.getLogger("bench")

# CPU in use (percent of one CPU) by the idle stack + everything else above which we warn.
BUSY_WARNING = 15.0
PEER = "peer"
OURS = "ours"
OURS_NO_METRICS = "ours-no-metrics"  # METRICS_ENABLED=false, beside ``ours`` with --metrics on,off


@dataclass
class Scenario:
    name: str
    server: str
    path: str
    headers: list[str] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    def stat(self, *keys: str) -> list[float | None]:
        values = []
        for run in self.runs:
            value = run
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return values

    def median(self, *keys: str) -> float | None:
        return median(self.stat(*keys))

    def vs(self, peer: Scenario, *keys: str) -> float | None:
        """Ours / peer for one statistic, paired by repeat (see :func:`bench.results.paired_ratio`)."""
        return paired_ratio(self.stat(*keys), peer.stat(*keys))

    @property
    def failures(self) -> int:
        return sum(run["non_2xx"] + sum(run["errors"].values()) for run in self.runs)


def _pin_plan(server_cpu: int, loadgen_cpu: int) -> tuple[int | None, int | None]:
    cpus = available_cpus()
    if {server_cpu, loadgen_cpu} <= cpus and server_cpu != loadgen_cpu:
        return server_cpu, loadgen_cpu
    log.warning("CPUs %s and %s are not both available (have %s): not pinning", server_cpu, loadgen_cpu, sorted(cpus))
    return None, None


def _check(server: Server, path: str, token: str | None, expect: str) -> None:
    status, body = http_json("GET", server.base_url + path, token=token)
    if status != 200 or expect not in str(body):
        raise RuntimeError(f"{server.name} GET {path} answered {status}: {body}")


def _swap_pairs(scenarios: list[Scenario]) -> list[Scenario]:
    """The peer first, then each path's two servers in the other order."""
    swapped = scenarios[:1]
    rest = scenarios[1:]
    for i in range(0, len(rest) - 1, 2):
        if rest[i].path == rest[i + 1].path:
            swapped += [rest[i + 1], rest[i]]
        else:
            swapped += rest[i : i + 2]
    if len(rest) % 2:
        swapped.append(rest[-1])
    return swapped


MESSAGES = 20  # in the thread whose history page is read


def _reads(base_url: str, token: str) -> list[str]:
    """Make a thread of ``MESSAGES`` messages (through the API); the authenticated paths read."""
    status, thread = http_json("POST", f"{base_url}/api/v1/chat/threads", {"title": "Bench"}, token=token)
    if status != 201:
        raise RuntimeError(f"creating a thread answered {status}: {thread}")
    for n in range(MESSAGES):
        body = {"client_id": f"00000000-0000-4000-8000-{n:012d}", "text": f"message {n}"}
        status, posted = http_json("POST", f"{base_url}/api/v1/chat/threads/{thread['id']}/messages", body, token)
        if status != 201:
            raise RuntimeError(f"posting answered {status}: {posted}")
    return [
        "/api/v1/users/me",
        "/api/v1/lounges?limit=20",
        "/api/v1/chat/threads?limit=20",
        f"/api/v1/chat/threads/{thread['id']}/messages?limit=20",
        "/api/v1/notifications?limit=20",
    ]


def _settle_rss(server: Server) -> int | None:
    time.sleep(1.0)
    return server.rss_kib()


def run(args: argparse.Namespace) -> int:
    server_cpu, loadgen_cpu = _pin_plan(args.server_cpu, args.loadgen_cpu)
    json_path, png_path = output_paths("http")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    variants = getattr(args, "metrics", ["on"])
    with BenchStack(keep_logs=args.keep_logs) as stack:
        stack.start_services()
        peer = stack.start_peer(cpu=server_cpu, database=True)
        servers = {PEER: peer}
        # "on" is ``ours``; "off" is ``ours`` too when it runs alone, else ``ours-no-metrics``.
        names = {"on": OURS, "off": OURS_NO_METRICS if "on" in variants else OURS}
        for variant in variants:
            name = names[variant]
            servers[name] = stack.start_ours(
                cpu=server_cpu, name=name, extra_env={"METRICS_ENABLED": "true" if variant == "on" else "false"}
            )
        email, token = create_user_token(servers[OURS].base_url)
        reads = _reads(servers[OURS].base_url, token)
        _check(peer, "/", None, "ok")
        ours = [name for name in servers if name != PEER]
        for name in ours:
            _check(servers[name], "/health", None, "ok")
            _check(servers[name], "/api/v1/users/me", token, email)
            for path in reads[1:]:
                _check(servers[name], path, token, "")
        rss_idle = {name: _settle_rss(server) for name, server in servers.items()}
        busy_before = machine_busy_percent(1.0)
        if busy_before > BUSY_WARNING:
            log.warning(
                "the machine is busy before the run (%.0f%% of one CPU in use): expect noisy numbers", busy_before
            )

        # With --metrics on,off each path runs on both servers back to back, so drift hits both alike.
        labels = {OURS: "ours", OURS_NO_METRICS: "ours (no metrics)"}
        scenarios = [Scenario("peer GET /", PEER, "/")]
        bearer = [f"Authorization: Bearer {token}"]
        for path, headers in [("/health", []), *((path, bearer) for path in reads)]:
            label = path.split("?")[0].replace(reads[3].split("?")[0], "/api/v1/chat/threads/{id}/messages")
            scenarios += [Scenario(f"{labels[name]} GET {label}", name, path, headers) for name in ours]
        # Last, so that --metrics on,off keeps each path's two servers side by side.
        scenarios.append(Scenario("peer GET /db (one asyncpg statement)", PEER, "/db"))
        total = args.repeats * len(scenarios)
        for repeat in range(args.repeats):
            # A path's two servers swap places every other repeat, so an order effect cancels out.
            order = scenarios if repeat % 2 == 0 else _swap_pairs(scenarios)
            for n, scenario in enumerate(order, start=1):
                server = servers[scenario.server]
                done = repeat * len(scenarios) + n
                print(
                    f"[{done}/{total}] {scenario.name} (run {repeat + 1}/{args.repeats}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                argv = loadgen_command(
                    server.port,
                    scenario.path,
                    headers=scenario.headers,
                    connections=args.connections,
                    warmup=args.warmup,
                    duration=args.duration,
                    watch_pid=server.pid,
                )
                busy = None
                if args.quiet_wait > 0:
                    busy = wait_for_quiet(args.quiet_wait, BUSY_WARNING)
                else:
                    time.sleep(0.3)
                if busy is not None and busy >= BUSY_WARNING:
                    log.warning(
                        "machine still busy (%.0f%% of one CPU) after %.0f s; running anyway", busy, args.quiet_wait
                    )
                result = run_pinned_json(argv, loadgen_cpu, timeout=args.warmup + args.duration + 60)
                cpu = result.get("server_cpu_percent")
                per_cpu_s = result["requests_per_s"] / (cpu / 100) if cpu else None
                scenario.runs.append(
                    {"repeat": repeat, "machine_busy_before_percent": busy, "requests_per_cpu_s": per_cpu_s, **result}
                )
        rss_after = {name: _settle_rss(server) for name, server in servers.items()}

    config = {
        "metrics": {names[v]: v for v in variants},
        "repeats": args.repeats,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "connections": args.connections,
        "server_cpu": server_cpu,
        "loadgen_cpu": loadgen_cpu,
        "uvicorn_workers": 1,
        "machine_busy_before_percent": round(busy_before, 1),
        "quiet_wait_s": args.quiet_wait,
    }
    memory = {
        name: {
            "rss_idle_kib": rss_idle[name],
            "rss_load_peak_kib": max(
                (v for s in scenarios if s.server == name for v in s.stat("server_rss_kib_max") if v), default=None
            ),
            "rss_idle_after_kib": rss_after[name],
        }
        for name in servers
    }
    print()
    print(render_table(scenarios, config, memory))
    payload = {
        "benchmark": "http",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "memory": memory,
        "summary": summarize(scenarios),
        "metrics_overhead": metrics_overhead(scenarios),
        "scenarios": [{"name": s.name, "server": s.server, "path": s.path, "runs": s.runs} for s in scenarios],
    }
    save_json(json_path, payload)
    plot(png_path, scenarios, config, memory, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    failures = sum(s.failures for s in scenarios)
    if failures:
        print(f"WARNING: {failures} non-2xx answers or connection errors; see the JSON", file=sys.stderr)
    return 0


def metrics_overhead(scenarios: list[Scenario]) -> list[dict]:
    """With --metrics on,off: each path's runs with metrics against the same repeat's without."""
    without = {s.path: s for s in scenarios if s.server == OURS_NO_METRICS}
    rows = []
    for s in scenarios:
        other = without.get(s.path)
        if s.server != OURS or other is None:
            continue
        rows.append(
            {
                "path": s.name.removeprefix("ours GET "),
                "requests_per_s_on": s.median("requests_per_s"),
                "requests_per_s_off": other.median("requests_per_s"),
                "rps_on_vs_off": s.vs(other, "requests_per_s"),
                "p50_on_vs_off": s.vs(other, "latency_ms", "p50"),
                "p99_on_vs_off": s.vs(other, "latency_ms", "p99"),
                "server_cpu_on": s.median("server_cpu_percent"),
                "server_cpu_off": other.median("server_cpu_percent"),
            }
        )
    return rows


def summarize(scenarios: list[Scenario]) -> list[dict]:
    peer = scenarios[0]
    rows = []
    for s in scenarios:
        rows.append(
            {
                "scenario": s.name,
                "requests_per_s": s.median("requests_per_s"),
                "p50_ms": s.median("latency_ms", "p50"),
                "p90_ms": s.median("latency_ms", "p90"),
                "p99_ms": s.median("latency_ms", "p99"),
                "server_cpu_percent": s.median("server_cpu_percent"),
                "loadgen_cpu_percent": s.median("loadgen_cpu_percent"),
                "other_cpu_percent": s.median("other_cpu_percent"),
                "server_rss_kib_max": s.median("server_rss_kib_max"),
                "rps_vs_peer": s.vs(peer, "requests_per_s"),
                "requests_per_cpu_s": s.median("requests_per_cpu_s"),
                "per_cpu_s_vs_peer": s.vs(peer, "requests_per_cpu_s"),
                "p50_vs_peer": s.vs(peer, "latency_ms", "p50"),
                "p99_vs_peer": s.vs(peer, "latency_ms", "p99"),
                "steal_cpu_percent": s.median("steal_cpu_percent"),
                "failures": s.failures,
            }
        )
    return rows


def render_table(scenarios: list[Scenario], config: dict, memory: dict) -> str:
    rows = []
    for row, s in zip(summarize(scenarios), scenarios, strict=True):
        rps = [v for v in s.stat("requests_per_s") if v is not None]
        rows.append(
            [
                row["scenario"],
                fmt(row["requests_per_s"], 0),
                f"{fmt(min(rps), 0)}-{fmt(max(rps), 0)}" if rps else "-",
                fmt(row["p50_ms"], 2),
                fmt(row["p90_ms"], 2),
                fmt(row["p99_ms"], 2),
                fmt_ratio(row["rps_vs_peer"]),
                fmt(row["requests_per_cpu_s"], 0),
                fmt_ratio(row["per_cpu_s_vs_peer"]),
                fmt_ratio(row["p50_vs_peer"]),
                fmt_ratio(row["p99_vs_peer"]),
                fmt(row["server_cpu_percent"], 0, "%"),
                fmt(row["loadgen_cpu_percent"], 0, "%"),
                fmt(row["other_cpu_percent"], 0, "%"),
                fmt(row["steal_cpu_percent"], 0, "%"),
                str(row["failures"]),
            ]
        )
    head = (
        f"HTTP baseline: median of {config['repeats']} run(s) x {config['duration_s']:g} s "
        f"(+{config['warmup_s']:g} s warm-up), {config['connections']} keep-alive connections, closed loop; "
        f"1 uvicorn worker on CPU {config['server_cpu']}, load generator on CPU {config['loadgen_cpu']}"
    )
    main_table = format_table(
        [
            "scenario",
            "req/s",
            "req/s range",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "req/s vs peer",
            "req per server CPU-s",
            "per CPU-s vs peer",
            "p50 vs peer",
            "p99 vs peer",
            "server CPU",
            "loadgen CPU",
            "other CPU",
            "steal",
            "errors",
        ],
        rows,
    )
    mem_rows = [
        [
            name,
            fmt(_mib(m["rss_idle_kib"]), 1),
            fmt(_mib(m["rss_load_peak_kib"]), 1),
            fmt(_mib(m["rss_idle_after_kib"]), 1),
        ]
        for name, m in memory.items()
    ]
    mem_table = format_table(["server RSS (MiB)", "idle before", "peak under load", "idle after"], mem_rows)
    overhead = metrics_overhead(scenarios)
    if overhead:
        mem_table += (
            "\n\nPrometheus metrics on vs off (METRICS_ENABLED=false), same CPU, paired by repeat:\n"
            + format_table(
                ["path", "req/s on", "req/s off", "req/s on/off", "p50 on/off", "p99 on/off"],
                [
                    [
                        row["path"],
                        fmt(row["requests_per_s_on"], 0),
                        fmt(row["requests_per_s_off"], 0),
                        fmt_ratio(row["rps_on_vs_off"]),
                        fmt_ratio(row["p50_on_vs_off"]),
                        fmt_ratio(row["p99_on_vs_off"]),
                    ]
                    for row in overhead
                ],
            )
        )
    note = (
        "'vs peer': median over repeats of ours / peer from the same repeat (runs seconds apart).\n"
        "'req per server CPU-s': req/s / the server's CPU share: what the process would serve with its core "
        "saturated (it is not, when PostgreSQL or the load generator on the other core is the limit).\n"
        "CPU columns: percent of one CPU over the measured window; 'other' is the rest of the machine "
        "(PostgreSQL, Valkey, other jobs);\n'steal': CPU the hypervisor gave to other tenants. "
        f"Machine busy before the runs: {config['machine_busy_before_percent']:.0f}% of one CPU."
    )
    return f"{head}\n\n{main_table}\n{note}\n\n{mem_table}"


def _mib(kib: float | None) -> float | None:
    return kib / 1024 if kib is not None else None


def plot(path, scenarios: list[Scenario], config: dict, memory: dict, machine: dict) -> None:
    plt = pyplot()
    labels = [s.name.replace(" GET ", "\nGET ").replace("/api/v1", "") for s in scenarios]
    fig, (ax_rps, ax_lat, ax_mem) = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1, 1.3, 0.9]})
    bar_panel(
        ax_rps,
        labels,
        {"req/s": [s.median("requests_per_s") for s in scenarios]},
        points={"req/s": [[v for v in s.stat("requests_per_s") if v] for s in scenarios]},
        notes={"req/s": [None] + [f"{fmt_ratio(s.vs(scenarios[0], 'requests_per_s'))} peer" for s in scenarios[1:]]},
        title="Throughput (median; dots = runs)",
        ylabel="requests / s",
    )
    bar_panel(
        ax_lat,
        labels,
        {q: [s.median("latency_ms", q) for s in scenarios] for q in ("p50", "p90", "p99")},
        title="Latency per request (median of runs; log scale)",
        ylabel="ms",
        value_format="{:.2f}",
        log=True,
    )
    bar_panel(
        ax_mem,
        list(memory),
        {
            "idle before": [_mib(m["rss_idle_kib"]) for m in memory.values()],
            "peak under load": [_mib(m["rss_load_peak_kib"]) for m in memory.values()],
            "idle after": [_mib(m["rss_idle_after_kib"]) for m in memory.values()],
        },
        title="Server RSS",
        ylabel="MiB",
        value_format="{:.0f}",
    )
    fig.suptitle(
        f"HTTP baseline - 1 uvicorn worker on CPU {config['server_cpu']}, load generator on CPU {config['loadgen_cpu']}, "
        f"{config['connections']} connections, {config['repeats']} x {config['duration_s']:g} s runs\n"
        f"{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
