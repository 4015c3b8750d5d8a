"""Many small rooms, the realistic coaching load: ``python -m bench rooms``.

L lounges (``--lounges``, 1,000) with S members each (``--lounge-subscribers``, 10), every
member's socket subscribed to its lounge: 10,000 sockets. Posts spread round robin over
the lounges at R posts/s in total (``--ws-rates``, 500 / 1,000 / 2,000), open loop, each
sent by the lounge's next member over its own socket: a ``publish`` the gateway stores in
PostgreSQL (acknowledged after the commit), then broadcasts to the lounge. Meanwhile the
AI coach streams C replies (``--coach-replies``, 10) into C more lounges of S members: the
real ``python -m server worker`` calling the OpenAI stand-in (:mod:`bench.coach_standin`)
at 50 tokens/s, each reply lasting the whole window.

Processes: the web node (``python -m server serve``, one process) pinned to the server
CPU; the worker, the stand-in and the load generators pinned to the load generator CPU;
PostgreSQL and Valkey unpinned, as in the other benches. The sockets are split over several load generator processes
(:mod:`bench.rooms_load`, whole lounges each, ~2,500 sockets per process), plus one for
the coach lounges; they start each window on a shared ``CLOCK_MONOTONIC`` time.

Per rate, over the measured window: stored messages/s (rows of the measured lounges that
PostgreSQL stored in the window) and acknowledged posts; publish→ack p50/p99; publish→
deliver p50/p99 at the other S-1 members (every delivery timed, none sampled); offered and
delivered deliveries/s; CPU of the web node, PostgreSQL, Valkey, the worker and the load
generators, and how busy each CPU was; the web node's CPU per stored post beyond a baseline
window (every socket open, the coach streaming, nothing posted). Correctness per member, after a bounded drain: the
posts it received against those posted to its lounge (an acknowledged post missing is a
loss; one refused with an error may arrive or not, in its window or a later one, where
it is counted apart as "earlier"; duplicated, unexpected),
offsets without gap or repeat, no socket dropped, every post acknowledged without error;
every coach member got deltas 1..n and the reply's ``ai.end``. A rate "keeps up" when
deliveries inside the window are >= 97% of those offered, nothing is lost and the backlog
drains within 1 s.

The peer (:mod:`bench.ws_peer` with rooms: ``/ws?room=N``, each member's frame echoed to its
room) takes the same sockets and posts after ours, in the same run: no storage, no ack, no
coach; its delivery latency and CPU are the floor beside ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from bench import ws_setup
from bench.coach_stream import reply_text, set_knobs, worker_process
from bench.http_baseline import _pin_plan
from bench.loadgen import percentile
from bench.procfs import machine_cpu_seconds, nofile_limits, pin_preexec, tree_scheduled_seconds
from bench.results import bar_panel, fmt, format_table, machine_info, median, output_paths, pyplot, save_json
from bench.stack import HOST, REPO_ROOT, BenchStack, Server, stop_process
from bench.ws_baseline import OURS, OURS_ENV, PEER, _quiet, code_version

log = logging.getLogger("bench")

TARGET_RATE = 2000.0
TARGET_ACK_P99_MS = 50.0
TARGET_DELIVER_P99_MS = 100.0
KEEPS_UP = 0.97  # delivered / offered inside the window
SOCKETS_PER_PROCESS = 2500
COACH_TOKENS_PER_S = 50.0
COACH_CHUNK_CHARS = 4
COACH_ENV = {
    "OPENAI_API_KEY": "sk-bench",
    "AI_PROVIDERS": "openai",
    "AI_MAX_RETRIES": "0",
    "AI_FREE_MONTHLY_TOKENS": str(10**9),
    "EMBEDDINGS_PROVIDER": "hashing",  # no model to load in the worker; the lounges have no knowledge files
}
LABELS = {OURS: "ours", PEER: "peer (rooms)"}


def defaults(args: argparse.Namespace) -> dict[str, Any]:
    lounges = getattr(args, "lounges", None) or 1000
    per_lounge = getattr(args, "lounge_subscribers", None) or 10
    return {
        "lounges": lounges,
        "per_lounge": per_lounge,
        "rates": getattr(args, "ws_rates", None) or [500.0, 1000.0, 2000.0],
        "coach_replies": 10 if getattr(args, "rooms_coach_replies", None) is None else args.rooms_coach_replies,
        "loadgen_processes": max(1, math.ceil(lounges * per_lounge / SOCKETS_PER_PROCESS)),
        "drain": 10.0,
    }


# -- load generator processes ----------------------------------------------------------------


class Loadgen:
    """One :mod:`bench.rooms_load` process: JSON lines in, JSON lines out (read by a thread)."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, nofile: int, log_path: Any) -> None:
        self.name = name
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=pin_preexec(cpu, nofile),
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, order: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name} answered nothing within {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited with {self.process.wait()}")
        return json.loads(line)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send({"quit": True})
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            stop_process(self.process, self.name, timeout=2)
        self._log.close()


def start_loadgens(
    target: str, server: Server, setup_path: Any, plan: dict[str, Any], cpu: int | None, nofile: int, logs: Any
) -> tuple[list[tuple[Loadgen, int]], Loadgen | None]:
    """The rooms processes (each with its number of lounges) and, ours, the coach lounges' one;
    returns once every socket is open."""
    base = [sys.executable, "-m", "bench.rooms_load", "--target", target, "--port", str(server.port)]
    base += ["--setup", str(setup_path)]
    count = plan["loadgen_processes"]
    bounds = [plan["lounges"] * i // count for i in range(count + 1)]
    rooms = [
        (
            Loadgen(
                f"rooms-{target}-{i}",
                [*base, "--first", str(bounds[i]), "--count", str(bounds[i + 1] - bounds[i])],
                cpu,
                nofile,
                logs / f"rooms-{target}-{i}.log",
            ),
            bounds[i + 1] - bounds[i],
        )
        for i in range(count)
    ]
    coach = None
    if target == OURS and plan["coach_replies"]:
        coach = Loadgen(f"coach-{target}", [*base, "--coach"], cpu, nofile, logs / f"coach-{target}.log")
    started = time.monotonic()
    timeout = plan["lounges"] * plan["per_lounge"] / 20 + 120
    opened = 0
    for loadgen in [g for g, _ in rooms] + ([coach] if coach else []):
        ready = loadgen.read(timeout)
        opened += ready["sockets"]
        if ready["errors"]:
            log.warning("%s: sockets that failed to open: %s", loadgen.name, ready["errors"])
    log.info("%s: %d sockets open in %.1f s", target, opened, time.monotonic() - started)
    return rooms, coach


# -- one window ------------------------------------------------------------------------------


def settle(pid: int, max_wait: float = 60.0, threshold: float = 15.0) -> float:
    """Wait (at most ``max_wait`` s) until ``pid`` uses < ``threshold``% of one CPU over a
    second: the sockets just opened (joins announced, presence entered) are not charged to
    the first window. Returns the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        before = tree_scheduled_seconds(pid) or 0.0
        time.sleep(1.0)
        busy = 100 * ((tree_scheduled_seconds(pid) or 0.0) - before)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def per_cpu_busy() -> dict[int, float]:
    """Busy seconds so far of each CPU (``/proc/stat``)."""
    from bench.procfs import CLOCK_TICKS

    busy = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, _idle, _iowait, irq, softirq, _steal = (int(v) for v in values[:8])
                busy[int(name[3:])] = (user + nice + system + irq + softirq) / CLOCK_TICKS
    return busy


def cpu_sample(pids: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "at": time.perf_counter(),
        "machine": machine_cpu_seconds()[0],
        "per_cpu": per_cpu_busy(),
        "pids": {name: sum(tree_scheduled_seconds(pid) or 0.0 for pid in group) for name, group in pids.items()},
    }


def cpu_percent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    elapsed = after["at"] - before["at"]
    return {
        **{name: 100 * (after["pids"][name] - before["pids"][name]) / elapsed for name in before["pids"]},
        "machine": 100 * (after["machine"] - before["machine"]) / elapsed,
        "per_cpu": {str(c): 100 * (after["per_cpu"][c] - before["per_cpu"][c]) / elapsed for c in before["per_cpu"]},
    }


async def _stored(database_url: str, channels: list[str], window: tuple[float, float] | None) -> int:
    """Messages of ``channels`` in PostgreSQL; with ``window`` (wall clock), those created in it."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        if window is None:
            return await connection.fetchval("SELECT count(*) FROM messages WHERE channel = ANY($1)", channels)
        return await connection.fetchval(
            "SELECT count(*) FROM messages WHERE channel = ANY($1) AND created_at >= to_timestamp($2)"
            " AND created_at < to_timestamp($3)",
            channels,
            *window,
        )
    finally:
        await connection.close()


def ms_summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        **{f"p{q:g}".replace(".", ""): percentile(ordered, q) if ordered else None for q in (50, 90, 99, 99.9)},
        "max": ordered[-1] if ordered else None,
    }


def merge(parts: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """The rooms processes' results of one window as one."""

    def total(key: str) -> int:
        return sum(p[key] for p in parts)

    acks = [v for p in parts for v in (p["ack_ms"] or [])]
    errors: dict[str, int] = {}
    for p in parts:
        for name, n in p["ack_errors"].items():
            errors[name] = errors.get(name, 0) + n
    offered = total("offered_deliveries")
    return {
        "sockets": total("sockets"),
        "posts_sent": total("sent"),
        "posts_in_window": total("sent_in_window"),
        "posts_per_s": total("sent_in_window") / duration,
        "acked_in_window_per_s": total("acked_in_window") / duration if parts[0]["ack_ms"] is not None else None,
        "ack_ms": ms_summary(acks) if parts[0]["ack_ms"] is not None else None,
        "ack_errors": errors,
        "unanswered": total("unanswered"),
        "offered_per_s": offered / duration,
        "delivered_per_s": total("delivered_in_window") / duration,
        "latency_ms": ms_summary([v for p in parts for v in p["latency_ms"]]),
        "deliveries_total": total("deliveries_total"),
        "deliveries_expected": total("deliveries_expected"),
        "drained_after_s": max(p["drained_after_s"] for p in parts),
        "schedule_lag_ms_max": max(p["schedule_lag_ms_max"] for p in parts),
        **{
            key: total(key)
            for key in (
                "missing",
                "duplicates",
                "unexpected",
                "earlier",
                "members_short",
                "gaps",
                "duplicate_offsets",
                "foreign",
                "dropped_sockets",
            )
        },
    }


def run_window(
    rooms: list[tuple[Loadgen, int]],
    coach: Loadgen | None,
    pids: dict[str, list[int]],
    rate: float,
    plan: dict[str, Any],
    args: argparse.Namespace,
    stored: Any,
) -> dict[str, Any]:
    """One window at ``rate`` posts/s: orders every process, samples CPU over the measured part."""
    from bench.wsclient import clock

    wall_offset = time.time() - clock()
    start = clock() + 1.5
    measure_from, until = start + args.warmup, start + args.warmup + args.duration
    order = {"start": start, "warmup": args.warmup, "duration": args.duration, "drain": plan["drain"], "timeout": 30.0}
    before_total = stored(None)
    for loadgen, lounges in rooms:
        loadgen.send({**order, "rate": rate * lounges / plan["lounges"]})
    if coach is not None:
        coach.send({**order, "rate": 0, "reply_tail_s": 3.0})
    time.sleep(max(0.0, measure_from - clock()))
    before = cpu_sample(pids)
    time.sleep(max(0.0, until - clock()))
    cpu = cpu_percent(before, cpu_sample(pids))
    timeout = plan["drain"] + 90
    result = merge([loadgen.read(timeout) for loadgen, _ in rooms], args.duration)
    result["cpu_percent"] = cpu
    if coach is not None:
        coached = coach.read(timeout)
        coached["deltas_per_s"] = coached.pop("deltas_in_window") / args.duration
        result["coach"] = coached
    stored_total = stored(None) - before_total
    result["stored_total"] = stored_total
    result["stored_per_s"] = (
        stored((measure_from + wall_offset, until + wall_offset)) / args.duration if stored_total else None
    )
    return result


# -- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    plan = defaults(args)
    server_cpu, loadgen_cpu = _pin_plan(args.server_cpu, args.loadgen_cpu)
    json_path, png_path = output_paths("rooms")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _, hard = nofile_limits()
    sockets = plan["lounges"] * plan["per_lounge"]
    if hard < sockets + 500:
        log.warning("RLIMIT_NOFILE hard limit %d is below %d sockets + slack: expect failed sockets", hard, sockets)
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {
        (target, rate): [] for target in (OURS, PEER) for rate in plan["rates"]
    }
    with BenchStack(keep_logs=args.keep_logs) as stack, contextlib.ExitStack() as children:
        env = stack.start_services()
        services = stack.service_pids()
        standin = stack.start_server(
            "standin", [sys.executable, "-m", "bench.coach_standin", "--port", "{port}"], cpu=loadgen_cpu
        )
        ours_env = {**OURS_ENV, **COACH_ENV, "OPENAI_BASE_URL": standin.base_url + "/v1"}
        ours = stack.start_ours(cpu=server_cpu, extra_env=ours_env, nofile=hard)
        worker = children.enter_context(worker_process({**env, **ours_env}, loadgen_cpu, stack.data_dir / "worker.log"))
        peer = stack.start_server(
            "ws-peer",
            [sys.executable, "-m", "bench.ws_peer", "--host", HOST, "--port", "{port}"],
            cpu=server_cpu,
            nofile=hard,
        )
        setup = ws_setup.prepare_lounges(
            {**env, **ours_env},
            ours,
            stack.data_dir,
            lounges=plan["lounges"],
            per_lounge=plan["per_lounge"],
            publishers=0,
            coach_lounges=plan["coach_replies"],
        )

        def stored(window: tuple[float, float] | None) -> int:
            return asyncio.run(_stored(env["DATABASE_URL"], setup.channels, window))

        reply_s = 0.5 + args.warmup + args.duration + 1.0  # asked 0.5 s before the window starts
        set_knobs(
            standin,
            reply=reply_text(math.ceil(reply_s * COACH_TOKENS_PER_S)),
            chunk_size=COACH_CHUNK_CHARS,
            chunk_delay=1 / COACH_TOKENS_PER_S,
            headers_delay=0.2,
        )
        total = args.repeats * len(plan["rates"]) * 2
        done = 0
        baseline: dict[str, dict[str, Any]] = {}  # CPU of a window with every socket open, the coach streaming, no post
        for target, server in ((OURS, ours), (PEER, peer)):
            rooms, coach = start_loadgens(target, server, setup.path, plan, loadgen_cpu, hard, stack.data_dir)
            log.info("%s settled at %.0f%% CPU after opening the sockets", target, settle(server.pid))
            try:
                loadgens = [g.process.pid for g, _ in rooms] + ([coach.process.pid] if coach else [])
                pids = {
                    "server": [server.pid],
                    "postgresql": [services["postgresql"]] if "postgresql" in services else [],
                    "redis": [services["valkey"]] if "valkey" in services else [],
                    "worker": [worker.pid],
                    "standin": [standin.pid],
                    "loadgen": loadgens,
                }
                measured = run_window(rooms, coach, pids, 0.0, plan, args, stored)
                baseline[target] = {**measured["cpu_percent"], "coach": measured.get("coach")}
                for repeat, rate in ((repeat, rate) for repeat in range(args.repeats) for rate in plan["rates"]):
                    done += 1
                    what = f"{target} {rate:g} posts/s over {plan['lounges']:,} lounges (run {repeat + 1})"
                    print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)
                    busy = _quiet(args)
                    try:
                        result = run_window(rooms, coach, pids, rate, plan, args, stored)
                    except (RuntimeError, TimeoutError, ValueError) as exc:  # the processes' state is unknown now
                        log.error("%s failed: %s; skipping the rest of %s", what, exc, target)
                        cells[(target, rate)].append({"failed": str(exc), "repeat": repeat})
                        break
                    result["repeat"] = repeat
                    result["machine_busy_before_percent"] = busy
                    if server.process.poll() is not None:
                        result["server_exited"] = server.process.returncode
                    cells[(target, rate)].append(result)
            finally:
                for loadgen in [g for g, _ in rooms] + ([coach] if coach else []):
                    loadgen.stop()

    config = {
        "repeats": args.repeats,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "server_cpu": server_cpu,
        "loadgen_cpu": loadgen_cpu,
        "pinning": (
            f"web node (or peer) on CPU {server_cpu}; the coach worker, the stand-in and "
            f"{plan['loadgen_processes'] + 1} load generator processes on CPU {loadgen_cpu}; PostgreSQL and "
            "Valkey unpinned (as in the other benches)"
            if server_cpu is not None
            else "none"
        ),
        "baseline_cpu_percent": baseline,
        "quiet_wait_s": args.quiet_wait,
        "ours_env": {k: v for k, v in ours_env.items() if k != "OPENAI_API_KEY"},
        "coach_tokens_per_s": COACH_TOKENS_PER_S,
        "setup_s": round(setup.seconds, 1),
        "users": setup.users,
        "code": code_version(),
        **plan,
    }
    summary = summarize(cells, plan["rates"], baseline)
    verdict = verdicts(summary)
    print()
    print(render(summary, verdict, config))
    machine = machine_info()
    payload = {
        "benchmark": "rooms",
        "started_at": started_at,
        "config": config,
        "machine": machine,
        "summary": summary,
        "targets": verdict,
        "runs": [{"target": t, "rate": rate, "runs": runs} for (t, rate), runs in cells.items()],
    }
    save_json(json_path, payload)
    plot(png_path, summary, config, machine)
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    return 0


# -- summaries -------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], *keys: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        values.append(value if isinstance(value, int | float) else None)
    return median(values)


LOSSES = ("missing", "duplicates", "unexpected", "gaps", "duplicate_offsets", "dropped_sockets", "unanswered")


def _per_post_ms(cpu: float | None, base: float | None, posts_per_s: float | None) -> float | None:
    """CPU per post beyond the baseline (sockets open, the coach streaming, nothing posted), in ms."""
    if cpu is None or not posts_per_s:
        return None
    return (cpu - (base or 0.0)) / 100 / posts_per_s * 1000


def summarize(
    cells: dict[tuple[str, float], list[dict[str, Any]]], rates: list[float], baseline: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for target in (OURS, PEER):
        for rate in rates:
            runs = [r for r in cells[(target, rate)] if "failed" not in r]
            row: dict[str, Any] = {
                "target": target,
                "rate": rate,
                "runs": len(cells[(target, rate)]),
                "failed_runs": len(cells[(target, rate)]) - len(runs),
                "sockets": _median(runs, "sockets"),
                "posts_per_s": _median(runs, "posts_per_s"),
                "stored_per_s": _median(runs, "stored_per_s"),
                "acked_per_s": _median(runs, "acked_in_window_per_s"),
                "ack_p50_ms": _median(runs, "ack_ms", "p50"),
                "ack_p99_ms": _median(runs, "ack_ms", "p99"),
                "p50_ms": _median(runs, "latency_ms", "p50"),
                "p99_ms": _median(runs, "latency_ms", "p99"),
                "offered_per_s": _median(runs, "offered_per_s"),
                "delivered_per_s": _median(runs, "delivered_per_s"),
                "drained_after_s": _median(runs, "drained_after_s"),
                "ack_errors": sum(sum(r["ack_errors"].values()) for r in runs),
                "stored_vs_acked": [(r["stored_total"], r["posts_sent"] - sum(r["ack_errors"].values())) for r in runs]
                if target == OURS
                else None,
                **{key: sum(r[key] for r in runs) for key in (*LOSSES, "foreign")},
                **{
                    f"{name}_cpu_percent": _median(runs, "cpu_percent", name)
                    for name in ("server", "postgresql", "redis", "worker", "standin", "loadgen", "machine")
                },
                "cpu_busy_percent": {
                    cpu: _median(runs, "cpu_percent", "per_cpu", cpu)
                    for cpu in (runs[0]["cpu_percent"]["per_cpu"] if runs else {})
                },
                "coach_deltas_per_s": _median(runs, "coach", "deltas_per_s"),
                "coach_replies_ended": _median(runs, "coach", "replies_ended"),
                "coach_problems": [r["coach"]["problems"] for r in runs if r.get("coach", {}).get("problems")],
                "p99_runs": [r["latency_ms"]["p99"] for r in runs],
                "ack_p99_runs": [(r["ack_ms"] or {}).get("p99") for r in runs],
            }
            base_cpu = baseline.get(target) or {}
            done_per_s = row["stored_per_s"] if target == OURS else row["posts_per_s"]  # the work of the window
            for name in ("server", "postgresql"):
                row[f"{name}_ms_per_post"] = _per_post_ms(row[f"{name}_cpu_percent"], base_cpu.get(name), done_per_s)
            row["keeps_up"] = bool(
                runs
                and not row["failed_runs"]
                and all(row[key] == 0 for key in LOSSES)
                and row["ack_errors"] == 0
                and not row["coach_problems"]
                and (row["delivered_per_s"] or 0) >= KEEPS_UP * (row["offered_per_s"] or 0)
                and (row["drained_after_s"] or 0) <= 1.0
            )
            rows.append(row)
    return rows


def verdicts(summary: list[dict[str, Any]]) -> dict[str, Any]:
    ours = [r for r in summary if r["target"] == OURS]

    def meets(r: dict[str, Any]) -> bool:
        return bool(
            r["keeps_up"]
            and (r["ack_p99_ms"] or math.inf) <= TARGET_ACK_P99_MS
            and (r["p99_ms"] or math.inf) <= TARGET_DELIVER_P99_MS
        )

    at_target = next((r for r in ours if r["rate"] == TARGET_RATE), None)
    return {
        "target": f"{TARGET_RATE:,.0f} posts/s kept up, ack p99 <= {TARGET_ACK_P99_MS:g} ms, "
        f"delivery p99 <= {TARGET_DELIVER_P99_MS:g} ms",
        "measured_at_target": at_target is not None,
        "met": bool(at_target and meets(at_target)),
        "highest_rate_kept_up": max((r["rate"] for r in ours if r["keeps_up"]), default=None),
        "highest_rate_meeting_latency": max((r["rate"] for r in ours if meets(r)), default=None),
        "max_stored_per_s": max((r["stored_per_s"] or 0 for r in ours), default=None),
    }


# -- text ------------------------------------------------------------------------------------


def render(summary: list[dict[str, Any]], verdict: dict[str, Any], config: dict[str, Any]) -> str:
    sockets = config["lounges"] * config["per_lounge"]
    out = [
        f"Many small rooms: {config['lounges']:,} lounges x {config['per_lounge']} members ({sockets:,} sockets), "
        f"posts round robin over the lounges, each stored then broadcast; {config['coach_replies']} coach replies "
        f"streaming meanwhile ({config['coach_tokens_per_s']:g} tokens/s each, ours only). Medians of "
        f"{config['repeats']} run(s) of {config['duration_s']:g} s (+{config['warmup_s']:g} s warm-up); code "
        f"{config['code']['git_head']} + {config['code']['server_files_changed']} changed file(s) in server/",
        f"Cores: {config['pinning']}.",
        "Baseline (a window with every socket open and the coach streaming, nothing posted), % of one CPU: "
        + "; ".join(
            f"{LABELS[t]}: server {fmt(c.get('server'), 0, '%')}, PostgreSQL {fmt(c.get('postgresql'), 0, '%')}, "
            f"Valkey {fmt(c.get('redis'), 0, '%')}"
            for t, c in config["baseline_cpu_percent"].items()
        ),
        "",
    ]
    rows = []
    for r in summary:
        ours = r["target"] == OURS
        busy = r["cpu_busy_percent"]
        rows.append(
            [
                LABELS[r["target"]],
                f"{r['rate']:g}",
                f"{fmt(r['stored_per_s'], 0)} / {fmt(r['acked_per_s'], 0)}" if ours else "-",
                str(r["ack_errors"]) if ours else "-",
                f"{fmt(r['ack_p50_ms'], 1)} / {fmt(r['ack_p99_ms'], 1)}" if ours else "-",
                f"{fmt(r['p50_ms'], 1)} / {fmt(r['p99_ms'], 1)}",
                fmt(r["offered_per_s"], 0),
                fmt(r["delivered_per_s"], 0),
                f"{r['missing']}/{r['gaps']}/{r['duplicates'] + r['duplicate_offsets']}",
                "yes" if r["keeps_up"] else "NO",
                fmt(r["server_cpu_percent"], 0, "%"),
                fmt(r["server_ms_per_post"], 2),
                fmt(r["postgresql_cpu_percent"], 0, "%"),
                fmt(r["redis_cpu_percent"], 0, "%"),
                fmt(r["worker_cpu_percent"], 0, "%") if ours else "-",
                fmt(r["loadgen_cpu_percent"], 0, "%"),
                " / ".join(fmt(busy[c], 0, "%") for c in sorted(busy)),
                f"{fmt(r['coach_deltas_per_s'], 0)} ({fmt(r['coach_replies_ended'], 0)})" if ours else "-",
            ]
        )
    out.append(
        format_table(
            [
                "server",
                "posts/s",
                "stored/acked /s",
                "refused",
                "ack p50/p99 ms",
                "deliver p50/p99 ms",
                "offered/s",
                "delivered/s",
                "miss/gap/dup",
                "keeps up",
                "server CPU",
                "server ms/post",
                "PG CPU",
                "Redis CPU",
                "worker CPU",
                "loadgen CPU",
                "CPU busy (each)",
                "coach deltas/s (replies)",
            ],
            rows,
        )
    )
    keeps = verdict["highest_rate_kept_up"]
    out += [
        "",
        f"Target: {verdict['target']}: "
        + (
            "MET"
            if verdict["met"]
            else (
                "NOT MET" if verdict["measured_at_target"] else f"not measured ({TARGET_RATE:g}/s not among the rates)"
            )
        )
        + f". Highest rate kept up: {fmt(keeps, 0) if keeps else 'none'} posts/s; highest meeting both latency "
        f"targets: {fmt(verdict['highest_rate_meeting_latency'], 0) if verdict['highest_rate_meeting_latency'] else 'none'}; "
        f"most stored: {fmt(verdict['max_stored_per_s'], 0)} messages/s.",
        "",
        "ack: publish -> its reply "
        "(after the commit). deliver: publish -> the push at each other member of the lounge (the sender's own "
        "copy is checked, not timed). offered/delivered: deliveries to the other members inside the window. "
        "stored/acked: rows PostgreSQL stored / acknowledgements received inside the window, per second; refused: "
        "posts answered with an error (e.g. 108 after WS_COMMAND_TIMEOUT; such a post may still be stored). "
        "miss/gap/dup: per member, acknowledged posts of its lounge not received after the drain / offsets "
        "skipped / received twice (a post refused in an earlier window and delivered in this one is not counted "
        f"here: the JSON's 'earlier'). 'keeps up': delivered >= {KEEPS_UP:.0%} of offered, nothing lost, every post acknowledged, every "
        "coach reply complete, backlog drained within 1 s. CPU: percent of one CPU over the window (PG: the "
        "postmaster and its backends; loadgen: every load generator process); 'CPU busy': each CPU of the "
        "machine, other jobs included. 'server ms/post': the web node's CPU beyond its "
        "baseline, per post stored inside the window (peer: per post sent). coach: ai.delta deliveries/s at the coach lounges' members (replies "
        "completed). The peer stores nothing and acknowledges nothing: its numbers are a floor.",
    ]
    return "\n".join(out)


def plot(path, summary: list[dict[str, Any]], config: dict[str, Any], machine: dict[str, Any]) -> None:
    plt = pyplot()
    fig, (ax_lat, ax_cpu, ax_rate) = plt.subplots(1, 3, figsize=(19, 6))
    rates = config["rates"]
    by = {(r["target"], r["rate"]): r for r in summary}
    for key, label, color in (("ack", "ours publish->ack", "C1"), ("", "ours publish->deliver", "C0")):
        for quantile, style in (("p50", ":"), ("p99", "-")):
            name = f"{key}_{quantile}_ms" if key else f"{quantile}_ms"
            ax_lat.plot(
                rates,
                [by[(OURS, r)][name] for r in rates],
                marker="o",
                linestyle=style,
                color=color,
                label=f"{label} {quantile}",
            )
    for quantile, style in (("p50", ":"), ("p99", "-")):
        ax_lat.plot(
            rates,
            [by[(PEER, r)][f"{quantile}_ms"] for r in rates],
            marker="s",
            linestyle=style,
            color="C2",
            label=f"peer deliver {quantile}",
        )
    ax_lat.axhline(TARGET_ACK_P99_MS, color="C1", alpha=0.3, linestyle="--")
    ax_lat.axhline(TARGET_DELIVER_P99_MS, color="C0", alpha=0.3, linestyle="--")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("posts / s")
    ax_lat.set_ylabel("ms")
    ax_lat.set_title("Latency (median of runs; dashed: the targets)", fontsize=11)
    ax_lat.grid(alpha=0.3, which="both")
    ax_lat.legend(fontsize=8)
    labels = [f"{r:g}/s" for r in rates]
    bar_panel(
        ax_cpu,
        labels,
        {
            name: [by[(OURS, r)][f"{key}_cpu_percent"] for r in rates]
            for name, key in (
                ("web node", "server"),
                ("PostgreSQL", "postgresql"),
                ("Valkey", "redis"),
                ("worker", "worker"),
                ("load generators", "loadgen"),
            )
        },
        title="ours: CPU over the window (% of one CPU)",
        ylabel="%",
    )
    bar_panel(
        ax_rate,
        labels,
        {
            "offered posts/s": [by[(OURS, r)]["posts_per_s"] for r in rates],
            "stored/s": [by[(OURS, r)]["stored_per_s"] for r in rates],
            "acknowledged/s": [by[(OURS, r)]["acked_per_s"] for r in rates],
        },
        title="ours: posts offered; stored and acknowledged inside the window, per second",
        ylabel="posts / s",
    )
    fig.suptitle(
        f"Many small rooms: {config['lounges']:,} lounges x {config['per_lounge']} members, "
        f"{config['coach_replies']} coach replies streaming; {config['repeats']} run(s); {config['pinning']}\n"
        f"{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
