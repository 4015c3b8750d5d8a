"""Stored messages per second through the real domain write, across many lounges: ``python -m bench writes``.

``--writers`` (32) concurrent writers, asyncio tasks in this process, each its own member
account, post closed-loop through :func:`server.domain.chat.messages.do_post_message` with
a real :class:`~server.foundation.state.AppState` on the benchmark's PostgreSQL and Valkey:
the access check, the idempotency lookup, the rate limiter, the one statement that takes
the channel's next offset and stores the message and its publication (and commits), and
the after-commit broadcast to Valkey. That is what a socket ``publish`` does minus the
socket. Each post goes to a lounge drawn at random among L, for L in ``--write-lounges``
(1, 10, 100, 1,000): one channel row lock shared by every writer at L = 1, hardly any
contention at L = 1,000.

Per L and run (``--warmup`` s, then ``--duration`` s measured): messages stored per second;
post latency (the call, p50 / p99) and commit latency (the storing statement alone: lock
wait, execution, commit; timed by an asyncpg query logger on every pooled connection);
CPU of this process (the writers: everything the web node would spend on the post),
of PostgreSQL (postmaster and backends) and of Valkey, each also per stored message; and
WAL bytes per message (``pg_current_wal_lsn()`` before and after). A what-if, for the first
and the last L, runs the same with ``synchronous_commit = off`` server-wide: a commit then
returns before its WAL is flushed, which shows what waiting for the flush costs (the app
never runs so). Runs are interleaved by repeat (every scenario, then again); medians are
quoted, and ratios pair runs of the same repeat. Nothing is pinned: the writers, PostgreSQL
and Valkey share every CPU.

Setup, not measured: users and sessions in SQL (:mod:`bench.ws_setup`), principals from
tokens the way a socket's ``connect`` resolves them (:func:`authenticate`), the lounges
through the domain's own :func:`do_create_lounge` (by an admin on a mentor's behalf, so
no plan caps them), and every writer's membership of every lounge in one ``INSERT`` of
the row a join writes (32,000 joins through the service would take minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.procfs import cpu_seconds, machine_cpu_seconds, tree_cpu_seconds
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
from bench.stack import BenchStack
from bench.ws_baseline import _quiet, code_version
from bench.ws_setup import _insert_users, _make_mentor

log = logging.getLogger("bench")

LOUNGES = [1, 10, 100, 1000]
WRITERS = 32
SPARE_CONNECTIONS = 8  # beyond one per writer: the pool never makes a writer wait
TEXT = "Easy run today, 8 km at conversational pace; legs felt fresh after the rest day."  # 80 characters
PG_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
)


def plan_of(args: argparse.Namespace) -> dict[str, Any]:
    lounges = getattr(args, "write_lounges", None) or LOUNGES
    return {
        "lounges": lounges,
        "writers": getattr(args, "writers", None) or WRITERS,
        "unsynced_lounges": sorted({lounges[0], lounges[-1]}),  # the what-if runs: synchronous_commit off
    }


# -- setup ------------------------------------------------------------------------------------


@dataclass
class Fixture:
    principals: list[Any]  # server.domain.accounts.services.Principal, one per writer
    channels: list[str]  # the lounges' channels; L lounges = the first L
    seconds: float


async def _prepare(state: Any, env: dict[str, str], writers: int, lounges: int) -> Fixture:
    import asyncpg

    from server.domain.accounts.services import authenticate
    from server.domain.accounts.tokens import keys_of
    from server.domain.lounges.schemas import LoungeCreate
    from server.domain.lounges.services import do_create_lounge

    started = time.monotonic()
    database_url = env["DATABASE_URL"]
    pairs = await _insert_users(database_url, writers + 2, uuid.uuid4().hex[:8])
    (mentor, _), (admin, _) = pairs[-2], pairs[-1]
    await _make_mentor(database_url, mentor)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE users SET role = 'admin' WHERE id = $1", admin)
        mentor_id = await connection.fetchval('SELECT id FROM mentors WHERE "user" = $1', mentor)
    finally:
        await connection.close()
    keys = keys_of(state)
    writer_principals = [await authenticate(state, keys.issue(user, session)[0]) for user, session in pairs[:writers]]
    admin_principal = await authenticate(state, keys.issue(*pairs[-1])[0])
    creating = asyncio.Semaphore(8)

    async def create(n: int) -> str:
        async with creating:
            lounge = await do_create_lounge(
                state, admin_principal, LoungeCreate(title=f"Writes {n}", mentor_id=mentor_id)
            )
        return lounge.channel

    channels = list(await asyncio.gather(*(create(n) for n in range(lounges))))
    connection = await asyncpg.connect(database_url)
    try:
        # The row a join inserts (server.domain.lounges.services._activate), for every writer and lounge.
        await connection.execute(
            """
            INSERT INTO lounge_memberships (id, lounge, "user", role, status, joined_at, last_read_offset, created_at, updated_at)
            SELECT gen_random_uuid(), l.id, u, 'member', 'active', now(), 0, now(), now()
            FROM lounges l, unnest($2::uuid[]) AS u WHERE l.channel = ANY($1::text[])
            """,
            channels,
            [user for user, _ in pairs[:writers]],
        )
        await connection.execute("ANALYZE")  # as autovacuum soon would: the plans of a settled database
    finally:
        await connection.close()
    seconds = time.monotonic() - started
    log.info("setup: %d writers, %d lounges, %d memberships in %.1f s", writers, lounges, writers * lounges, seconds)
    return Fixture(principals=writer_principals, channels=channels, seconds=seconds)


async def _time_storing_statements(pool: Any, size: int, sink: list[tuple[float, float]]) -> None:
    """Log (finish time, seconds) of every execution of the post's storing statement, on each of
    the pool's ``size`` connections (all of them are open: min size = max size)."""
    from server.domain.chat.messages import _POST_SQL

    def logged(record: Any) -> None:
        if record.query == _POST_SQL:
            sink.append((time.perf_counter(), record.elapsed))

    connections = [await pool.acquire() for _ in range(size)]
    for connection in connections:
        connection.add_query_logger(logged)
    for connection in connections:
        await pool.release(connection)


def _flush_ms(directory: Path, count: int = 200) -> dict[str, float]:
    """fdatasync latency (ms) of an 8 KiB overwrite in ``directory``: the disk's own share of a
    commit (PostgreSQL flushes its WAL pages so, ``wal_sync_method = fdatasync``)."""
    path = directory / "flush-probe"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    took = []
    try:
        for n in range(count):
            os.pwrite(descriptor, bytes(8192), (n % 16) * 8192)
            started = time.perf_counter()
            os.fdatasync(descriptor)
            took.append(time.perf_counter() - started)
    finally:
        os.close(descriptor)
        path.unlink()
    took.sort()
    return {"p50": 1000 * percentile(took, 50), "p99": 1000 * percentile(took, 99)}


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Reading:
    at: float
    cpu: dict[str, float]  # CPU seconds so far: ours, postgresql, valkey, and the machine's busy and steal
    wal: int  # bytes of WAL written so far


async def _read(monitor: Any, pids: dict[str, int]) -> Reading:
    at = time.perf_counter()
    busy, steal = machine_cpu_seconds()
    cpu = {
        "ours": cpu_seconds(os.getpid()) or 0.0,
        "postgresql": tree_cpu_seconds(pids["postgresql"]) or 0.0,
        "valkey": cpu_seconds(pids["valkey"]) or 0.0,
        "busy": busy,
        "steal": steal,
    }
    wal = await monitor.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
    return Reading(at=at, cpu=cpu, wal=int(wal))


async def _measure(
    state: Any,
    fixture: Fixture,
    lounges: int,
    *,
    warmup: float,
    duration: float,
    monitor: Any,
    pids: dict[str, int],
    statements: list[tuple[float, float]],
) -> dict[str, Any]:
    """Every writer posts closed-loop to one of the first ``lounges`` lounges at random; the
    window opens after ``warmup`` s and lasts ``duration`` s."""
    from server.domain.chat.messages import do_post_message
    from server.domain.chat.schemas import MessageIn

    channels = fixture.channels[:lounges]
    stop = asyncio.Event()
    posts: list[tuple[float, float]] = []  # (finish time, seconds)
    errors: list[str] = []

    async def writer(principal: Any, seed: int) -> None:
        draw = random.Random(seed)
        while not stop.is_set():
            channel = channels[draw.randrange(lounges)]
            started = time.perf_counter()
            try:
                result = await do_post_message(state, principal, channel, MessageIn(client_id=uuid.uuid4(), text=TEXT))
            except Exception as exc:  # counted and reported; one refusal must not stop the writer
                if not errors:
                    log.error("post failed: %r", exc)
                errors.append(repr(exc))
                continue
            finished = time.perf_counter()
            if result.created:
                posts.append((finished, finished - started))

    tasks = [asyncio.create_task(writer(p, seed)) for seed, p in enumerate(fixture.principals)]
    try:
        await asyncio.sleep(warmup)
        before = await _read(monitor, pids)
        await asyncio.sleep(duration)
        after = await _read(monitor, pids)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    seconds = after.at - before.at
    window = [took for at, took in posts if before.at <= at <= after.at]
    committed = [took for at, took in statements if before.at <= at <= after.at]
    statements.clear()
    stored = len(window)
    spent = {key: after.cpu[key] - before.cpu[key] for key in before.cpu}
    cpu = {key: spent[key] for key in ("ours", "postgresql", "valkey")}
    shares = {
        **cpu,
        "other": spent["busy"] - sum(cpu.values()),
        "idle": (os.cpu_count() or 1) * seconds - spent["busy"] - spent["steal"],
    }

    def quantiles(values: list[float]) -> dict[str, float]:
        values.sort()
        return {"p50": 1000 * percentile(values, 50), "p99": 1000 * percentile(values, 99)}

    return {
        "lounges": lounges,
        "messages": stored,
        "seconds": seconds,
        "messages_per_s": stored / seconds,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "post_ms": quantiles(window),
        "commit_ms": quantiles(committed),
        "cpu_percent": {key: 100 * value / seconds for key, value in shares.items()},
        "cpu_ms_per_message": {k: 1000 * v / stored if stored else None for k, v in cpu.items()},
        "wal_bytes": after.wal - before.wal,
        "wal_bytes_per_message": (after.wal - before.wal) / stored if stored else None,
    }


async def _set_synchronous_commit(monitor: Any, value: str) -> None:
    """Server-wide (``ALTER SYSTEM``, then a reload): each pooled session applies it before its next statement."""
    await monitor.execute(f"ALTER SYSTEM SET synchronous_commit = {value}")
    await monitor.execute("SELECT pg_reload_conf()")


async def _session(args: argparse.Namespace, env: dict[str, str], pids: dict[str, int], plan: dict[str, Any]) -> dict:
    """Setup, then every scenario once per repeat; returns the runs, the setup time and PostgreSQL's settings."""
    import asyncpg

    from server.domain.ai import coach
    from server.domain.chat.coach_link import connect_coach
    from server.foundation.database import acquire_engine, release_engine
    from server.foundation.redis import create_redis
    from server.foundation.settings import load_settings
    from server.foundation.state import AppState
    from server.piccolo_app import ALL_TABLES

    logging.getLogger("lounges").setLevel(logging.WARNING)
    settings = load_settings(env)
    engine = await acquire_engine(settings, ALL_TABLES)
    redis = create_redis(settings)
    state = AppState(settings=settings, engine=engine, redis=redis)
    connect_coach(coach)  # as create_app does: a post asks the coach whether to answer
    monitor = await asyncpg.connect(env["DATABASE_URL"])
    statements: list[tuple[float, float]] = []
    scenarios = [(lounges, "on") for lounges in plan["lounges"]]
    scenarios += [(lounges, "off") for lounges in plan["unsynced_lounges"]]
    runs: list[dict[str, Any]] = []
    try:
        await _time_storing_statements(engine.pool, settings.db_pool_max_size, statements)
        pg_settings = {name: await monitor.fetchval(f"SHOW {name}") for name in PG_SETTINGS}
        fixture = await _prepare(state, env, plan["writers"], max(plan["lounges"]))
        for repeat in range(args.repeats):
            busy = await asyncio.to_thread(_quiet, args)
            for lounges, synchronous_commit in scenarios:
                print(
                    f"[{len(runs) + 1}/{args.repeats * len(scenarios)}] {plan['writers']} writers over {lounges} "
                    f"lounge(s), synchronous_commit {synchronous_commit} (run {repeat + 1}) ...",
                    file=sys.stderr,
                    flush=True,
                )
                await _set_synchronous_commit(monitor, synchronous_commit)
                result = await _measure(
                    state,
                    fixture,
                    lounges,
                    warmup=args.warmup,
                    duration=args.duration,
                    monitor=monitor,
                    pids=pids,
                    statements=statements,
                )
                runs.append(
                    {
                        **result,
                        "synchronous_commit": synchronous_commit,
                        "repeat": repeat,
                        "machine_busy_before_percent": busy,
                    }
                )
    finally:
        await monitor.close()
        await redis.aclose()
        await release_engine(engine)
    return {"runs": runs, "setup_s": fixture.seconds, "postgresql": pg_settings}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m bench writes``."""
    import uvloop

    plan = plan_of(args)
    json_path, png_path = output_paths("writes")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = os.getloadavg()
    pool_size = str(plan["writers"] + SPARE_CONNECTIONS)
    writes_env = {
        "PUBLISH_RATE_LIMIT": "100000000/10",  # each writer posts far beyond a person's rate
        "DB_POOL_MIN_SIZE": pool_size,
        "DB_POOL_MAX_SIZE": pool_size,
    }
    with BenchStack(keep_logs=args.keep_logs) as stack:
        env = {**stack.start_services(), **writes_env}
        pids = stack.service_pids()
        flush_ms = _flush_ms(stack.data_dir)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the event loop `serve` runs on
            session = runner.run(_session(args, env, pids, plan))
    config = {
        "repeats": args.repeats,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        **plan,
        "text_chars": len(TEXT),
        "pinning": "none: the writers (this process), PostgreSQL and Valkey share every CPU",
        "cpus": sorted(os.sched_getaffinity(0)),
        "env": writes_env,
        "postgresql": session["postgresql"],
        "fdatasync_ms": flush_ms,
        "setup_s": round(session["setup_s"], 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "quiet_wait_s": args.quiet_wait,
        "code": code_version(),
    }
    summary = summarize(session["runs"], plan)
    print()
    print(render(summary, config))
    payload = {
        "benchmark": "writes",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "summary": summary,
        "runs": session["runs"],
    }
    save_json(json_path, payload)
    plot(png_path, summary, config, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    failed = sum(r["errors"] for r in session["runs"])
    if failed:
        print(f"WARNING: {failed} post(s) failed; see the JSON", file=sys.stderr)
    return 0


# -- summary, text, plot ----------------------------------------------------------------------


def _runs_of(runs: list[dict[str, Any]], lounges: int, synchronous_commit: str) -> list[dict[str, Any]]:
    mine = (r for r in runs if r["lounges"] == lounges and r["synchronous_commit"] == synchronous_commit)
    return sorted(mine, key=lambda r: r["repeat"])


def _row(mine: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one scenario's runs; ``vs_base`` pairs its messages/s with ``base``'s by repeat."""
    rates = [r["messages_per_s"] for r in mine]
    return {
        "lounges": mine[0]["lounges"],
        "messages_per_s": median(rates),
        "messages_per_s_runs": rates,
        "vs_base": paired_ratio(rates, [r["messages_per_s"] for r in base]),
        "messages": sum(r["messages"] for r in mine),
        "errors": sum(r["errors"] for r in mine),
        **{
            f"{what}_{q}_ms": median(r[f"{what}_ms"][q] for r in mine)
            for what in ("post", "commit")
            for q in ("p50", "p99")
        },
        "cpu_percent": {key: median(r["cpu_percent"][key] for r in mine) for key in mine[0]["cpu_percent"]},
        "cpu_ms_per_message": {
            key: median(r["cpu_ms_per_message"][key] for r in mine) for key in mine[0]["cpu_ms_per_message"]
        },
        "wal_bytes_per_message": median(r["wal_bytes_per_message"] for r in mine),
    }


def summarize(runs: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``synced``: every L, against the first L; ``unsynced``: the what-if, against the same L synced."""
    first = _runs_of(runs, plan["lounges"][0], "on")
    return {
        "synced": [_row(_runs_of(runs, lounges, "on"), first) for lounges in plan["lounges"]],
        "unsynced": [
            _row(_runs_of(runs, lounges, "off"), _runs_of(runs, lounges, "on")) for lounges in plan["unsynced_lounges"]
        ],
    }


def _table(rows: list[dict[str, Any]], vs: str) -> str:
    cells = [
        [
            str(r["lounges"]),
            fmt(r["messages_per_s"], 0),
            f"{fmt(min(r['messages_per_s_runs']), 0)}-{fmt(max(r['messages_per_s_runs']), 0)}",
            fmt_ratio(r["vs_base"]),
            fmt(r["post_p50_ms"], 1),
            fmt(r["post_p99_ms"], 1),
            fmt(r["commit_p50_ms"], 2),
            fmt(r["commit_p99_ms"], 2),
            *(fmt(r["cpu_percent"][key], 0, "%") for key in ("ours", "postgresql", "valkey", "other", "idle")),
            *(fmt(r["cpu_ms_per_message"][key], 3) for key in ("ours", "postgresql", "valkey")),
            fmt(r["wal_bytes_per_message"], 0),
            str(r["errors"]),
        ]
        for r in rows
    ]
    headers = ["lounges", "msgs/s", "range", vs, "post p50 ms", "post p99 ms", "commit p50 ms", "commit p99 ms"]
    headers += ["ours CPU", "PG CPU", "Valkey CPU", "other CPU", "idle CPU", "ours ms/msg", "PG ms/msg"]
    headers += ["Valkey ms/msg", "WAL B/msg", "errors"]
    return format_table(headers, cells)


def render(summary: dict[str, list[dict[str, Any]]], config: dict[str, Any]) -> str:
    pg = config["postgresql"]
    out = [
        f"Write path: {config['writers']} writers post closed-loop through do_post_message (real AppState, "
        f"PostgreSQL + Valkey, broadcast after commit), each post to one of L lounges at random; medians of "
        f"{config['repeats']} run(s) of {config['duration_s']:g} s (+{config['warmup_s']:g} s warm-up), "
        f"interleaved by repeat; code {config['code']['git_head']} + {config['code']['server_files_changed']} "
        "changed file(s) in server/",
        f"PostgreSQL {pg['server_version']}: fsync {pg['fsync']}, synchronous_commit {pg['synchronous_commit']}, "
        f"wal_sync_method {pg['wal_sync_method']} (an 8 KiB fdatasync in the data dir: p50 "
        f"{config['fdatasync_ms']['p50']:.3f} ms, p99 {config['fdatasync_ms']['p99']:.3f} ms); nothing pinned (CPUs {config['cpus']}); load average "
        f"{config['load_average_before'][0]:.2f} before, {config['load_average_after'][0]:.2f} after",
        "",
        "1. as the app runs (synchronous_commit on)",
        _table(summary["synced"], f"vs L={config['lounges'][0]}"),
    ]
    if summary["unsynced"]:
        out += [
            "",
            "2. what-if, not how the app runs: synchronous_commit off (a commit returns before its WAL is flushed)",
            _table(summary["unsynced"], "vs on"),
        ]
    out += [
        "",
        "post: the do_post_message call; commit: its storing statement (offset, message, publication, commit). "
        "CPU: percent of one CPU over the window; ours = this process (the writers), PG = postmaster and backends, "
        f"other = the rest of the machine, idle = what no one used (of {100 * (os.cpu_count() or 1)}%). "
        "ms/msg: CPU ms per stored message.",
    ]
    return "\n".join(out)


def plot(path: Any, summary: dict[str, list[dict[str, Any]]], config: dict[str, Any], machine: dict[str, Any]) -> None:
    plt = pyplot()
    fig, (ax_rate, ax_cost, ax_latency) = plt.subplots(1, 3, figsize=(18, 5.6))
    synced = summary["synced"]
    unsynced = {r["lounges"]: r for r in summary["unsynced"]}
    labels = [f"L = {r['lounges']:,}" for r in synced]
    what_if = [unsynced.get(r["lounges"]) for r in synced]
    bar_panel(
        ax_rate,
        labels,
        {
            "synchronous_commit on": [r["messages_per_s"] for r in synced],
            "off (what-if)": [w["messages_per_s"] if w else None for w in what_if],
        },
        points={
            "synchronous_commit on": [r["messages_per_s_runs"] for r in synced],
            "off (what-if)": [w["messages_per_s_runs"] if w else [] for w in what_if],
        },
        notes={"synchronous_commit on": [fmt_ratio(r["vs_base"]) if i else None for i, r in enumerate(synced)]},
        title=f"Stored messages/s, {config['writers']} writers over L lounges (dots = runs)",
        ylabel="messages / s",
    )
    bar_panel(
        ax_cost,
        labels,
        {
            name: [r["cpu_ms_per_message"][key] for r in synced]
            for key, name in (("ours", "ours (writers)"), ("postgresql", "PostgreSQL"), ("valkey", "Valkey"))
        },
        title="CPU per stored message (synchronous_commit on)",
        ylabel="CPU ms / message",
        value_format="{:.2f}",
    )
    bar_panel(
        ax_latency,
        labels,
        {
            "post p50": [r["post_p50_ms"] for r in synced],
            "post p99": [r["post_p99_ms"] for r in synced],
            "commit p50": [r["commit_p50_ms"] for r in synced],
            "commit p99": [r["commit_p99_ms"] for r in synced],
        },
        title="Latency: the post call, and its storing statement (log scale)",
        ylabel="ms",
        value_format="{:.1f}",
        log=True,
    )
    fig.suptitle(
        f"Write path (do_post_message, PostgreSQL {config['postgresql']['server_version']}), nothing pinned, "
        f"{config['repeats']} run(s) of {config['duration_s']:g} s\n{machine.get('cpu_model', '')}, "
        f"{machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
