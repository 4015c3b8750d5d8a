"""The AI coach's streaming path: time-to-first-token overhead and one reply fanned out to 1,000 sockets.

``python -m bench coach`` (defaults) or ``python -m bench.coach_stream --replies 50 --rates 50,100 ...``.

Processes (all on 127.0.0.1, in a temporary dir removed at the end):

- embedded PostgreSQL + pgvector and Valkey, migrated (:class:`bench.stack.BenchStack`);
- **web node**: ``python -m server serve`` (one uvicorn worker) pinned to the server CPU;
- **worker**: ``python -m server worker`` (arq, the real ``generate_reply`` job) pinned
  to the other CPU, with ``AI_PROVIDERS=openai`` pointing at
- **the stand-in**: the test suite's OpenAI stand-in (real SSE wire format) in its
  own process (:mod:`bench.coach_standin`), latency on a fixed schedule, every
  stream's timeline recorded with ``CLOCK_MONOTONIC``;
- **clients** (:mod:`bench.coach_load`), pinned to the other CPU, raw sockets.

(a) **Time to first token.** A lounge member (with notes the retrieval searches)
posts a message over the socket; the coach answers every message (policy
``always``). The stand-in answers headers after ``--headers-ms`` (200) and the
first content chunk ``--chunk-ms`` (20) later: that fixed latency is subtracted.
Server overhead = first ``ai.delta`` at the subscriber - the stored message at
the subscriber (the server broadcasts it right after the commit) - fixed latency.
``--embeddings openai`` embeds the question through the stand-in's ``/v1/embeddings``
(answered ``--embedding-ms`` after arrival): that latency is fixed too and subtracted.
The **peer** is the official ``openai`` SDK calling the same stand-in from a
process pinned to the worker's CPU: its time to the first content chunk minus
the same fixed latency is what any SDK client pays. The stand-in's and arq's
timestamps split our overhead into: queue wait (enqueue → job start, arq's
own times), job start → request at the provider (prompt, retrieval, budget),
and first token sent → first ``ai.delta`` received (coalescing tick, Redis, fan-out).

(b) **Fan-out.** ``--subscribers`` (1,000) members subscribe to the lounge on one
web node; one posts; the stand-in streams ``--stream-s`` seconds at each rate of
``--rates`` tokens/s (one stand-in chunk of 4 characters = one token). Every
socket must receive every ``ai.delta`` in ``seq`` order and their concatenation
must equal the ``ai.end`` text and the text the stand-in sent. Reported:
delivered deltas/s, tokens per delta (coalescing), lag of each delta (receive
time - send time of the newest token it carries) overall and per subscriber,
and the spread between the first and the last socket receiving a delta. The
client also subscribes to the lounge's Redis pub/sub channel like a web node,
which splits the lag into the worker's side (token sent -> delta on Redis) and
the web node's (Redis -> each socket); it runs without GC while the reply
streams and logs its own event-loop stalls, so a late receive is not its own.

Profiles: an in-process run of the job's steps before the provider call
(prompt, retrieval, embedding, budget, SDK request; pinned like the worker),
always; ``--profile`` adds py-spy on the worker (TTFT rounds) and on the web
node (while each reply streams), collapsed stacks saved next to the JSON;
``--gc-trace`` logs every GC pause >= 1 ms of the web node and the worker
(``bench/gctrace/sitecustomize.py`` on their ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import percentile
from bench.procfs import available_cpus, machine_busy_percent, pin_preexec, wait_for_quiet
from bench.results import bar_panel, fmt, format_table, machine_info, output_paths, pyplot, save_json
from bench.stack import HOST, REPO_ROOT, BenchStack, Server, http_json, run_pinned_json, stop_process

log = logging.getLogger("bench")

DEFAULTS = {"replies": 50, "rates": [50.0, 100.0], "stream_s": 6.0, "subscribers": 1000}
QUICK = {"replies": 20, "rates": [50.0], "stream_s": 3.0, "subscribers": 1000}
TARGET_OVERHEAD_P99_MS = 10.0
TARGET_TOKENS_PER_S = 50.0
TOKEN_CHARS = 4
BUSY_WARNING = 15.0
ROUND = 20  # replies per round: arq keeps job results 60 s, read after each round


# -- processes --------------------------------------------------------------------------------


@contextlib.contextmanager
def worker_process(env: dict[str, str], cpu: int | None, log_path: Path):
    """``python -m server worker`` pinned to ``cpu``; ready when its arq health key appears."""
    import redis

    from server.foundation.settings import load_settings
    from workers.main import health_check_key

    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "worker"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=pin_preexec(cpu),
            start_new_session=True,
        )
    try:
        key = health_check_key(load_settings(env))
        client = redis.Redis.from_url(env["REDIS_URL"])
        deadline = time.monotonic() + 60
        while not client.exists(key):
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not start within 60 s")
            time.sleep(0.1)
        client.close()
        log.info("worker ready (pid %s, cpu %s)", process.pid, cpu)
        yield process
    finally:
        stop_process(process, "worker")


# -- setup ------------------------------------------------------------------------------------


async def _setup_database(
    database_url: str, members: int, model: str | None, dim: int, seed: int
) -> tuple[list[tuple[uuid.UUID, uuid.UUID]], uuid.UUID]:
    """``members + 1`` users with a live session each (the last is the mentor, approved); the
    first gets notes with embedded chunks under ``model`` for the retrieval to search."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    users = [uuid.uuid4() for _ in range(members + 1)]
    sessions = [uuid.uuid4() for _ in users]
    tag = uuid.uuid4().hex[:8]
    connection = await asyncpg.connect(database_url)
    await register_vector(connection)
    try:
        async with connection.transaction():
            await connection.execute(
                """INSERT INTO users (id, email, full_name, email_verified_at)
                   SELECT u, 'coach-' || $2 || '-' || n || '@example.com', 'Bench Member ' || n, now()
                   FROM unnest($1::uuid[]) WITH ORDINALITY AS t(u, n)""",
                users,
                tag,
            )
            await connection.execute(
                """INSERT INTO user_sessions (id, "user", expires_at, user_agent, ip)
                   SELECT s, u, now() + interval '1 day', 'lounges-bench', '127.0.0.1'
                   FROM unnest($1::uuid[], $2::uuid[]) AS t(s, u)""",
                sessions,
                users,
            )
            await connection.execute(
                "INSERT INTO mentors (\"user\", headline, bio, status) VALUES ($1, 'Bench coach', '', 'approved')",
                users[-1],
            )
            await connection.execute("UPDATE users SET role = 'mentor' WHERE id = $1", users[-1])
            if model is not None:
                rng = np.random.default_rng(seed)
                notes = [uuid.uuid4() for _ in range(60)]
                await connection.executemany(
                    """INSERT INTO notes (id, "user", title, content, tags) VALUES ($1, $2, $3, 'synthetic', '{}')""",
                    [(n, users[0], f"Running note {i}") for i, n in enumerate(notes)],
                )
                vectors = rng.normal(size=(300, dim))
                vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
                await connection.executemany(
                    """INSERT INTO knowledge_chunks (id, source_type, note, owner, chunk_index, content, content_hash,
                       embedding, embedding_model, embedding_dim) VALUES ($1, 'note', $2, $3, $4, $5, 'h', $6, $7, $8)""",
                    [
                        (
                            uuid.uuid4(),
                            notes[i % 60],
                            users[0],
                            i // 60,
                            f"Keep an easy pace on long runs ({i}).",
                            v,
                            model,
                            dim,
                        )
                        for i, v in enumerate(vectors)
                    ],
                )
    finally:
        await connection.close()
    return list(zip(users, sessions, strict=True)), users[-1]


def prepare(env: dict[str, str], web: Server, out_dir: Path, members: int, seed: int) -> dict[str, Any]:
    """Users and tokens (SQL + the server's own token keys), a lounge created by its mentor
    through the API with the coach answering every message, and its members joined through the API."""
    from server.domain.accounts.tokens import TokenKeys
    from server.domain.knowledge.embeddings import resolve_provider
    from server.foundation.settings import load_settings

    started = time.monotonic()
    settings = load_settings(env)
    provider = resolve_provider(settings)
    model = {"minilm": "all-minilm-l6-v2", "hashing": "hashing-384", "openai": "text-embedding-3-small"}.get(provider)
    dim = 1536 if provider == "openai" else 384
    pairs, _ = asyncio.run(_setup_database(env["DATABASE_URL"], members, model, dim, seed))
    keys = TokenKeys(settings)
    tokens = [keys.issue(user, session)[0] for user, session in pairs]
    status, lounge = http_json(
        "POST",
        f"{web.base_url}/api/v1/lounges",
        {
            "title": "Coach benchmark lounge",
            "description": "python -m bench coach",
            "ai_reply_policy": "always",
            "ai_persona": "Answer like a running coach.",
        },
        token=tokens[-1],
    )
    if status != 201:
        raise RuntimeError(f"creating the lounge answered {status}: {lounge}")

    def join(token: str) -> None:
        status, body = http_json("POST", f"{web.base_url}/api/v1/lounges/{lounge['id']}/join", token=token)
        if status != 200 or body.get("status") != "active":
            raise RuntimeError(f"join answered {status}: {body}")

    with ThreadPoolExecutor(8) as executor:
        list(executor.map(join, tokens[:members]))
    path = out_dir / "coach-setup.json"
    path.write_text(
        json.dumps({"channel": lounge["channel"], "asker_token": tokens[0], "subscriber_tokens": tokens[:members]})
    )
    log.info(
        "setup: %d members of %s, embeddings %s, in %.1f s",
        members,
        lounge["channel"],
        provider,
        time.monotonic() - started,
    )
    return {"path": path, "channel": lounge["channel"], "embeddings": provider, "model": model}


async def _job_times(env: dict[str, str], stream_ids: list[str]) -> dict[str, dict[str, float]]:
    """arq's own enqueue/start/finish times (wall clock, ms resolution) of the coach jobs."""
    from arq.jobs import Job

    from server.foundation.redis import create_redis, deserialize_job
    from server.foundation.settings import load_settings

    redis = create_redis(load_settings(env))
    out: dict[str, dict[str, float]] = {}
    try:
        for stream_id in stream_ids:
            info = await Job(f"coach:{stream_id}", redis, _deserializer=deserialize_job).result_info()
            if info is not None:
                out[stream_id] = {
                    "enqueued": info.enqueue_time.timestamp(),
                    "started": info.start_time.timestamp(),
                    "finished": info.finish_time.timestamp(),
                }
    finally:
        await redis.aclose()
    return out


def set_knobs(standin: Server, **knobs: Any) -> None:
    status, body = http_json("POST", standin.base_url + "/bench/knobs", knobs)
    if status != 200:
        raise RuntimeError(f"stand-in knobs answered {status}: {body}")


def reply_text(tokens: int) -> str:
    """``tokens`` chunks of exactly TOKEN_CHARS characters (the stand-in sends one per chunk)."""
    words = " ".join(f"w{i:02d}" for i in range(tokens))  # "w00 w01 ..." : 4 characters per word + space
    return (words + " " * TOKEN_CHARS)[: tokens * TOKEN_CHARS]


# -- the run ----------------------------------------------------------------------------------


def _pin_plan(server_cpu: int, loadgen_cpu: int) -> tuple[int | None, int | None]:
    cpus = available_cpus()
    if {server_cpu, loadgen_cpu} <= cpus and server_cpu != loadgen_cpu:
        return server_cpu, loadgen_cpu
    log.warning("CPUs %s and %s are not both available (have %s): not pinning", server_cpu, loadgen_cpu, sorted(cpus))
    return None, None


def _quiet(args: argparse.Namespace) -> float | None:
    if args.quiet_wait <= 0:
        return None
    busy = wait_for_quiet(args.quiet_wait, BUSY_WARNING)
    if busy >= BUSY_WARNING:
        log.warning("machine still busy (%.0f%% of one CPU) after %.0f s; running anyway", busy, args.quiet_wait)
    return busy


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m bench coach``."""
    quick = getattr(args, "quick", False)
    base = QUICK if quick else DEFAULTS
    o = argparse.Namespace(
        replies=getattr(args, "coach_replies", None) or base["replies"],
        rates=getattr(args, "coach_rates", None) or base["rates"],
        stream_s=getattr(args, "coach_stream_s", None) or base["stream_s"],
        subscribers=getattr(args, "coach_subscribers", None) or base["subscribers"],
        headers_ms=getattr(args, "coach_headers_ms", None) or 200.0,
        chunk_ms=getattr(args, "coach_chunk_ms", None) or 20.0,
        embeddings=getattr(args, "coach_embeddings", None) or "auto",
        embedding_ms=getattr(args, "coach_embedding_ms", None) or 30.0,
        delta_ms=getattr(args, "coach_delta_ms", None),
        profile=getattr(args, "coach_profile", False),
        gc_trace=getattr(args, "coach_gc_trace", False),
        seed=7,
    )
    server_cpu, client_cpu = _pin_plan(args.server_cpu, args.loadgen_cpu)
    json_path, png_path = output_paths("coach")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with BenchStack(keep_logs=args.keep_logs) as stack, contextlib.ExitStack() as children:
        env = stack.start_services()
        standin = stack.start_server(
            "standin",
            [sys.executable, "-m", "bench.coach_standin", "--port", "{port}", "--embedding-ms", str(o.embedding_ms)],
            cpu=client_cpu,
        )
        env = {
            **env,
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": standin.base_url + "/v1",
            "AI_PROVIDERS": "openai",
            "AI_MAX_RETRIES": "0",
            "AI_FREE_MONTHLY_TOKENS": str(10**9),
            "ACCESS_TOKEN_TTL": "3600",
            "PUBLISH_RATE_LIMIT": "1000/10",
            "EMBEDDINGS_PROVIDER": o.embeddings,
        }
        if o.embeddings == "openai":  # the stand-in's /v1/embeddings, a provider with a fixed latency
            env["EMBEDDINGS_OPENAI_BASE_URL"] = standin.base_url + "/v1"
        if o.delta_ms:
            env["AI_DELTA_INTERVAL_MS"] = str(int(o.delta_ms))
        gc_logs = {}
        if o.gc_trace:  # bench/gctrace/sitecustomize.py logs every GC pause >= 1 ms of web and worker
            trace_dir = str(Path(__file__).resolve().parent / "gctrace")
            path = os.pathsep.join(p for p in (trace_dir, os.environ.get("PYTHONPATH", "")) if p)
            gc_logs = {"web": stack.data_dir / "gc-web", "worker": stack.data_dir / "gc-worker"}
            web_env = {**env, "PYTHONPATH": path, "BENCH_GC_LOG": str(gc_logs["web"])}
            worker_env = {**env, "PYTHONPATH": path, "BENCH_GC_LOG": str(gc_logs["worker"])}
        else:
            web_env = worker_env = env
        web = stack.start_server(
            "web",
            [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", "{port}"],
            cpu=server_cpu,
            env=web_env,
            ready_path="/ready",
        )
        worker = children.enter_context(worker_process(worker_env, client_cpu, stack.data_dir / "worker.log"))
        setup = prepare(env, web, stack.data_dir, o.subscribers, o.seed)
        from server.foundation.settings import load_settings
        from server.streams.broker import pubsub_channel

        settings = load_settings(env)
        busy_before = machine_busy_percent(1.0)

        # (a) time to first token: rounds of (peer calls, our replies), pooled.
        fixed_s = (o.headers_ms + o.chunk_ms) / 1000
        # With the OpenAI embeddings stand-in, the question's embedding is a provider call with a
        # fixed latency too: subtracted from our overhead (the peer makes no such call).
        embedding_s = o.embedding_ms / 1000 if setup["embeddings"] == "openai" else 0.0
        set_knobs(
            standin,
            reply=reply_text(24),
            chunk_size=TOKEN_CHARS,
            chunk_delay=o.chunk_ms / 1000,
            headers_delay=o.headers_ms / 1000,
        )
        rounds = max(args.repeats, math.ceil(o.replies / ROUND))
        per_round = math.ceil(o.replies / rounds)
        peer_runs: list[dict[str, Any]] = []
        worker_profiles: list[dict[str, Any] | None] = []
        ours_runs: list[dict[str, Any]] = []
        # Warm-up (not measured, not profiled): the SDK clients, the pools, the embedding model.
        print("[ttft] warm-up: 3 replies ...", file=sys.stderr, flush=True)
        warm = [sys.executable, "-m", "bench.coach_load", "ttft", "--port", str(web.port), "--setup"]
        warm += [
            str(setup["path"]),
            "--standin",
            standin.base_url,
            "--replies",
            "0",
            "--warmup",
            "3",
            "--timeout",
            "120",
        ]
        run_pinned_json(warm, client_cpu, timeout=300)
        for r in range(rounds):
            print(f"[ttft {r + 1}/{rounds}] peer: {per_round} SDK calls ...", file=sys.stderr, flush=True)
            busy = _quiet(args)
            peer_argv = [sys.executable, "-m", "bench.coach_load", "peer", "--base-url", standin.base_url + "/v1"]
            peer_argv += ["--calls", str(per_round), "--warmup", "2", "--seed", str(r)]
            peer_argv += ["--prompt-chars", "2500", "--standin", standin.base_url]
            result = run_pinned_json(peer_argv, client_cpu, timeout=per_round * 5 + 60)
            peer_runs.append({"round": r, "busy_before": busy, **result})
            set_knobs(
                standin,
                reply=reply_text(24),
                chunk_size=TOKEN_CHARS,
                chunk_delay=o.chunk_ms / 1000,
                headers_delay=o.headers_ms / 1000,
            )
            print(f"[ttft {r + 1}/{rounds}] ours: {per_round} coach replies ...", file=sys.stderr, flush=True)
            busy = _quiet(args)
            ours_argv = [sys.executable, "-m", "bench.coach_load", "ttft", "--port", str(web.port)]
            ours_argv += ["--setup", str(setup["path"]), "--standin", standin.base_url, "--replies", str(per_round)]
            ours_argv += ["--warmup", "0", "--seed", str(r), "--timeout", "60"]
            profiler = (
                start_profiler(worker.pid, json_path.with_name(f"{json_path.stem}-worker-ttft-{r}.collapsed"), 600)
                if o.profile
                else None
            )
            result = run_pinned_json(ours_argv, client_cpu, timeout=per_round * 10 + 120)
            if profiler:
                worker_profiles.append(stop_profiler(profiler))
            result["jobs"] = asyncio.run(_job_times(env, [x["stream_id"] for x in result["replies"]]))
            ours_runs.append({"round": r, "busy_before": busy, **result})
            set_knobs(
                standin,
                reply=reply_text(24),
                chunk_size=TOKEN_CHARS,
                chunk_delay=o.chunk_ms / 1000,
                headers_delay=o.headers_ms / 1000,
            )
        ttft = summarize_ttft(peer_runs, ours_runs, fixed_s, embedding_s)
        print("[ttft] in-process profile of the job before the provider call ...", file=sys.stderr, flush=True)
        set_knobs(
            standin,
            reply=reply_text(2),
            chunk_size=TOKEN_CHARS,
            chunk_delay=o.chunk_ms / 1000,
            headers_delay=o.headers_ms / 1000,
        )
        prefix = profile_job_prefix(env, setup["channel"], standin.base_url, client_cpu)

        # (b) fan-out, one stream per rate.
        fanouts: list[dict[str, Any]] = []
        for rate in o.rates:
            tokens = max(10, int(rate * o.stream_s))
            set_knobs(
                standin,
                reply=reply_text(tokens),
                chunk_size=TOKEN_CHARS,
                chunk_delay=1 / rate,
                headers_delay=0.0,
            )
            print(
                f"[fan-out] {o.subscribers:,} subscribers, {rate:g} tokens/s x {tokens} tokens ...",
                file=sys.stderr,
                flush=True,
            )
            busy = _quiet(args)
            argv = [sys.executable, "-m", "bench.coach_load", "fanout", "--port", str(web.port)]
            argv += ["--setup", str(setup["path"]), "--standin", standin.base_url, "--subscribers", str(o.subscribers)]
            argv += ["--watch-pid", str(web.pid), "--watch-pid", str(worker.pid), "--timeout", str(o.stream_s * 4 + 60)]
            argv += ["--question", f"Tell me everything about pacing ({rate:g} tokens/s)."]
            argv += [
                "--redis-url",
                env["REDIS_URL"],
                "--redis-channel",
                pubsub_channel(settings.redis_prefix, setup["channel"]),
            ]
            profile_path = json_path.with_name(f"{json_path.stem}-web-fanout-{rate:g}.collapsed")
            if o.profile:  # the client runs py-spy on the web node while the reply streams
                argv += ["--profile-pid", str(web.pid), "--profile-out", str(profile_path)]
            result = run_pinned_json(argv, client_cpu, timeout=o.stream_s * 4 + 240)
            profile = top_frames(profile_path) if o.profile and profile_path.exists() else None
            fanouts.append({"rate": rate, "tokens": tokens, "busy_before": busy, "profile": profile, **result})
        rss_web = web.rss_kib()
        gc_pauses = {name: read_gc_log(path) for name, path in gc_logs.items()}
        for f in fanouts:
            f["gc_web"] = gc_in_window(gc_pauses.get("web"), f.get("window"))
            f["gc_worker"] = gc_in_window(gc_pauses.get("worker"), f.get("window"))

    config = {
        "replies": o.replies,
        "rounds": rounds,
        "headers_delay_ms": o.headers_ms,
        "first_chunk_delay_ms": o.chunk_ms,
        "fixed_latency_ms": fixed_s * 1000,
        "embedding_latency_ms": embedding_s * 1000,
        "ttft_reply_tokens": 24,
        "rates": o.rates,
        "stream_s": o.stream_s,
        "subscribers": o.subscribers,
        "ai_delta_interval_ms": settings.ai_delta_interval_ms,
        "embeddings": setup["embeddings"],
        "web_cpu": server_cpu,
        "worker_cpu": client_cpu,
        "client_cpu": client_cpu,
        "standin_cpu": client_cpu,
        "machine_busy_before_percent": round(busy_before, 1),
        "web_rss_kib_end": rss_web,
    }
    fan = [summarize_fanout(f) for f in fanouts]
    verdict = verdicts(ttft, fan)
    print()
    print(render(ttft, fan, config, verdict))
    print("\nin-process profile of the job before it calls the provider (median / p90 ms, pinned like the worker):")
    print(
        format_table(
            ["step", "p50 ms", "p90 ms"],
            [[name, fmt(ms, 2), fmt(prefix["p90_ms"][name], 2)] for name, ms in prefix["steps_ms"].items()],
            align="lrr",
        )
    )
    payload = {
        "benchmark": "coach",
        "started_at": started_at,
        "config": config,
        "machine": machine_info(),
        "verdicts": verdict,
        "ttft": ttft,
        "fanout": fan,
        "job_prefix_profile": prefix,
        "worker_profiles": worker_profiles,
        "raw": {"peer": peer_runs, "ours": ours_runs, "fanout": fanouts},
    }
    save_json(json_path, payload)
    plot(png_path, ttft, fan, config, payload["machine"])
    print(f"\nraw results: {json_path}\nplot:        {png_path}")
    return 0 if all(f["complete"] == f["subscribers"] for f in fan) else 1


# -- in-process profile of the job's work before the provider call -------------------------------


def _stats(base_url: str) -> dict[str, Any]:
    status, body = http_json("GET", base_url + "/bench/stats")
    if status != 200:
        raise RuntimeError(f"stand-in stats answered {status}")
    return body


async def _profile_job_prefix(env: dict[str, str], channel: str, standin_url: str, repeats: int) -> dict[str, Any]:
    """Median wall time of each step ``generate_reply`` runs before it calls the provider, run
    here (pinned like the worker) against the same database, Redis and lounge."""
    import statistics

    from server.domain.ai.prompt import build_prompt
    from server.domain.ai.streams import LiveReply, acquire_slot, forget_reply
    from server.domain.knowledge.embeddings import get_embedder
    from server.domain.knowledge.retrieval import retrieve
    from server.domain.llm.registry import build_providers
    from server.foundation.database import acquire_engine, release_engine
    from server.foundation.redis import create_redis
    from server.foundation.settings import load_settings
    from server.foundation.state import AppState
    from server.piccolo_app import ALL_TABLES

    for name in ("httpx", "httpx2", "httpcore", "openai", "sentence_transformers", "piccolo", "lounges"):
        logging.getLogger(name).setLevel(logging.WARNING)  # keep the table readable
    settings = load_settings({**env, "DB_POOL_MIN_SIZE": "1"})
    engine = await acquire_engine(settings, ALL_TABLES)
    redis = create_redis(settings)
    state = AppState(settings=settings, engine=engine, redis=redis)
    timings: dict[str, list[float]] = {}
    try:
        async with engine.pool.acquire() as connection:
            row = await connection.fetchrow(
                """SELECT "offset", sender, text FROM messages WHERE channel = $1 AND sender_type <> 'ai'
                   ORDER BY "offset" DESC LIMIT 1""",
                channel,
            )
        reply_to, asker, question = row["offset"], row["sender"], row["text"]
        embedder = get_embedder(settings)
        provider = build_providers(settings)[0]
        sdk_started: list[float] = []
        scratch = f"lounge:{uuid.uuid4()}"  # bookkeeping is timed on a channel nobody reads
        clock = time.perf_counter

        async def timed(name: str, coroutine) -> Any:
            started = clock()
            result = await coroutine
            timings.setdefault(name, []).append(clock() - started)
            return result

        for n in range(repeats + 2):  # the first two warm up (the embedding model loads here)
            if n == 2:
                timings.clear()
            started = clock()
            slot = LiveReply(
                stream_id=uuid.uuid4().hex, channel=scratch, user_id=str(asker), reply_to=0, worker="bench"
            )
            await timed("acquire_slot (Redis)", acquire_slot(state, asker, slot.stream_id))
            prompt, _, _ = await timed(
                "build_prompt (SQL, retrieval and the budget)",
                build_prompt(state, channel=channel, reply_to=reply_to, asker=asker, question=question),
            )
            key = f"{settings.redis_prefix}:bench:streams:{scratch}"
            await timed("stream state + ai.start (Redis)", _bookkeeping(state, key, scratch))
            timings.setdefault("total before the provider call", []).append(clock() - started)
            await forget_reply(state, slot)
            # The provider call up to the moment its request reaches the stand-in (its clock).
            sdk_started.append(time.monotonic())
            async with contextlib.aclosing(provider.stream(prompt)) as events:
                async for _ in events:
                    pass
            await timed("  of which: embed the question", embedder.embed([question]))
            await timed(
                "  of which: retrieve() incl. embedding",
                retrieve(user_id=asker, lounge_id=None, query=question, k=settings.ai_rag_passages, embedder=embedder),
            )
        timelines = (await asyncio.to_thread(_stats, standin_url))["timelines"][-len(sdk_started) :]
        timings["SDK call -> request at the provider"] = [
            t["arrived"] - started for t, started in zip(timelines, sdk_started, strict=True)
        ][2:]
    finally:
        await redis.aclose()
        await release_engine(engine)
    return {
        "embeddings": getattr(embedder, "model", "?"),
        "repeats": repeats,
        "steps_ms": {name: statistics.median(values) * 1000 for name, values in timings.items()},
        "p90_ms": {name: sorted(values)[int(0.9 * (len(values) - 1))] * 1000 for name, values in timings.items()},
    }


async def _bookkeeping(state: Any, key: str, channel: str) -> None:
    """What ``_stream`` does while the provider's request goes out: the stream's state and
    ``ai.start`` in one pipeline (the clean-up is not timed by the worker either)."""
    from server.streams.broker import ephemeral_wire, publish, pubsub_channel

    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, "bench", b"{}")
        pipe.expire(key, 60)
        publish(pipe, pubsub_channel(state.settings.redis_prefix, channel), ephemeral_wire({"type": "ai.start"}))
        await pipe.execute()
    await state.redis.delete(key)


def profile_job_prefix(
    env: dict[str, str], channel: str, standin_url: str, cpu: int | None, repeats: int = 20
) -> dict[str, Any]:
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # like the worker (torch sizes its thread pool from this)
    try:
        return asyncio.run(_profile_job_prefix(env, channel, standin_url, repeats))
    finally:
        os.sched_setaffinity(0, before)


# -- GC pauses (optional, --gc-trace) ---------------------------------------------------------------


def read_gc_log(prefix: Path) -> list[tuple[float, int, float, int, int]]:
    """``(start, generation, ms, objects in gen 2, frozen)`` of every logged collection of the
    processes writing ``prefix.<pid>`` (see bench/gctrace/sitecustomize.py)."""
    pauses = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            start, generation, ms, _, old, frozen = line.split()
            pauses.append((float(start), int(generation), float(ms), int(old), int(frozen)))
    return sorted(pauses)


def gc_in_window(pauses: list[tuple] | None, window: list[float] | None) -> dict[str, Any] | None:
    if pauses is None or not window:
        return None
    inside = [p for p in pauses if window[0] <= p[0] <= window[1]]
    worst = max(inside, key=lambda p: p[2], default=None)
    return {
        "collections_over_1ms": len(inside),
        "total_ms": round(sum(p[2] for p in inside), 1),
        "max_ms": round(worst[2], 1) if worst else 0.0,
        "max_generation": worst[1] if worst else None,
        "max_at_ms": round(1000 * (worst[0] - window[0]), 1) if worst else None,  # after the first token
        "max_gen2_objects": worst[3] if worst else None,
        "frozen": worst[4] if worst else None,
    }


# -- profiling (optional) -----------------------------------------------------------------------


def start_profiler(pid: int, path: Path, seconds: float) -> tuple[subprocess.Popen, Path] | None:
    """py-spy sampling the web node (``--profile``), when py-spy is installed and allowed."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        log.warning("py-spy not found: no profile")
        return None
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--format", "raw"]
    argv += ["--output", str(path), "--nonblocking"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    return process, path


def stop_profiler(handle: tuple[subprocess.Popen, Path] | None) -> dict[str, Any] | None:
    if handle is None:
        return None
    process, path = handle
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)  # py-spy writes what it has on Ctrl-C
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        stop_process(process, "py-spy", timeout=2)
    if not path.exists():
        return {"error": (process.stderr.read() if process.stderr else b"").decode(errors="replace")[-500:]}
    return top_frames(path)


def top_frames(path: Path, limit: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    top_incl = sorted(inclusive.items(), key=lambda kv: -kv[1])[:limit]
    return {
        "samples": total,
        "self": [(f, n, round(100 * n / total, 1)) for f, n in top_own] if total else [],
        "inclusive": [(f, n, round(100 * n / total, 1)) for f, n in top_incl] if total else [],
        "file": str(path),
    }


# -- summaries --------------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, float | None]:
    ms = sorted(v * 1000 for v in values if v is not None)
    if not ms:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "min": None}
    return {
        "count": len(ms),
        "min": ms[0],
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": ms[-1],
    }


def summarize_ttft(
    peer_runs: list[dict], ours_runs: list[dict], fixed_s: float, embedding_s: float = 0.0
) -> dict[str, Any]:
    """TTFT and our overhead over the fixed latency (the chat's, plus the embeddings provider's when set)."""
    peer = [t for run in peer_runs for t in run["ttft_s"]]
    peer_standin = []
    for run in peer_runs:
        # The stand-in's own lateness against its schedule (arrival -> first content chunk - fixed).
        for timeline in (run.get("standin") or {}).get("timelines", []):
            if len(timeline["events"]) > 1:
                peer_standin.append(timeline["events"][1] - timeline["arrived"] - fixed_s)
    parts: dict[str, list[float]] = {
        "post_to_stored": [],
        "stored_to_job_start": [],
        "queue_wait": [],
        "job_start_to_request": [],
        "stored_to_request": [],
        "request_to_first_token": [],
        "standin_lateness": [],
        "first_token_to_delta": [],
        "stored_to_ai_start": [],
        "embedding_call": [],
    }
    ttft_post, ttft_stored, overhead, overhead_post = [], [], [], []
    first_delta_chars = []
    bad = 0
    for run in ours_runs:
        timelines = run["standin"]["timelines"]
        offset = run["clock_offset"]  # wall - monotonic
        replies = run["replies"]
        # One stream per reply, in order (replies are sequential); warm-up replies come first.
        timelines = timelines[len(timelines) - len(replies) :]
        for reply, timeline in zip(replies, timelines, strict=True):
            if reply["first_delta"] is None or reply["stored"] is None or not reply["text_ok"]:
                bad += 1
                continue
            first_token = timeline["events"][1] if len(timeline["events"]) > 1 else None
            ttft_post.append(reply["first_delta"] - reply["sent"])
            ttft_stored.append(reply["first_delta"] - reply["stored"])
            overhead.append(reply["first_delta"] - reply["stored"] - fixed_s - embedding_s)
            overhead_post.append(reply["first_delta"] - reply["sent"] - fixed_s - embedding_s)
            first_delta_chars.append(reply["first_delta_chars"])
            parts["post_to_stored"].append(reply["stored"] - reply["sent"])
            parts["stored_to_request"].append(timeline["arrived"] - reply["stored"])
            if reply["start"] is not None:
                parts["stored_to_ai_start"].append(reply["start"] - reply["stored"])
            if first_token is not None:
                parts["request_to_first_token"].append(first_token - timeline["arrived"])
                parts["standin_lateness"].append(first_token - timeline["arrived"] - fixed_s)
                parts["first_token_to_delta"].append(reply["first_delta"] - first_token)
            job = run["jobs"].get(reply["stream_id"])
            if job is not None:
                start_mono = job["started"] - offset
                parts["queue_wait"].append(job["started"] - job["enqueued"])
                parts["stored_to_job_start"].append(start_mono - reply["stored"])
                parts["job_start_to_request"].append(timeline["arrived"] - start_mono)
        for call in run["standin"].get("embeddings", []):
            parts["embedding_call"].append(call["answered"] - call["arrived"])
    return {
        "fixed_latency_ms": fixed_s * 1000,
        "peer_ttft_ms": _ms(peer),
        "peer_overhead_ms": _ms([t - fixed_s for t in peer]),
        "peer_standin_lateness_ms": _ms(peer_standin),
        "ours_ttft_from_post_ms": _ms(ttft_post),
        "ours_ttft_from_stored_ms": _ms(ttft_stored),
        "server_overhead_ms": _ms(overhead),
        "server_overhead_from_post_ms": _ms(overhead_post),
        "parts_ms": {name: _ms(values) for name, values in parts.items()},
        "first_delta_chars": {
            "mean": float(np.mean(first_delta_chars)) if first_delta_chars else None,
            "max": max(first_delta_chars, default=None),
        },
        "replies": len(overhead),
        "bad_replies": bad,
        "failures": [run["failures"] for run in ours_runs if run["failures"]],
    }


def summarize_fanout(run: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "subscribers",
        "complete",
        "ordered",
        "matches_end",
        "problems",
        "tokens",
        "token_rate",
        "frames_per_stream",
        "tokens_per_frame",
        "delivered_deltas",
        "delivered_per_s",
        "ws_messages_per_s",
        "lag_ms",
        "per_subscriber_p99_ms",
        "spread_ms",
        "first_token_to_first_delta_ms",
        "server_cpu_percent",
        "server_rss_kib_peak",
        "gc_web",
        "gc_worker",
        "client_stalls_over_20ms",
        "worker_side_lag_ms",
        "web_side_lag_ms",
        "client_stall_max_ms",
        "loadgen_cpu_percent",
        "open_s",
        "open_errors",
        "closed_early",
        "error",
        "profile",
        "busy_before",
    )
    by_seq = run.get("lag_by_seq_ms") or {}
    worst = max(by_seq.items(), key=lambda kv: kv[1][1], default=None)
    return {
        "rate": run["rate"],
        **{k: run.get(k) for k in keys},
        # The delta every subscriber got latest (median over subscribers): a stall upstream of the
        # per-socket fan-out shows up here for all sockets at once.
        "worst_delta": {"seq": int(worst[0]), "min_median_max_ms": worst[1]} if worst else None,
    }


def verdicts(ttft: dict[str, Any], fan: list[dict[str, Any]]) -> dict[str, Any]:
    p99 = ttft["server_overhead_ms"]["p99"]
    streams = [f for f in fan if f["rate"] >= TARGET_TOKENS_PER_S]
    return {
        "ttft_overhead_p99_ms": p99,
        "ttft_overhead_target_met": p99 is not None and p99 <= TARGET_OVERHEAD_P99_MS,
        "fanout": [
            {
                "rate": f["rate"],
                "subscribers": f["subscribers"],
                "all_complete": f["complete"] == f["subscribers"] and f["subscribers"] is not None,
                "coalesced": (f["tokens_per_frame"] or 0) > 1,
                "target_met": f["complete"] == f["subscribers"]
                and (f["subscribers"] or 0) >= 1000
                and (f["token_rate"] or 0) >= TARGET_TOKENS_PER_S * 0.98,
            }
            for f in streams
        ],
    }


def _p50_p99(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return f"{summary['p50']:.1f}/{summary['p99']:.1f}"


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def _embedding_latency(config: dict[str, Any]) -> str:
    ms = config.get("embedding_latency_ms") or 0
    return f" + the question's embedding {ms:.0f}" if ms else ""


def render(ttft: dict[str, Any], fan: list[dict[str, Any]], config: dict[str, Any], verdict: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, Any]) -> list[str]:
        return [name, str(s["count"]), fmt(s["p50"], 1), fmt(s["p90"], 1), fmt(s["p99"], 1), fmt(s["max"], 1)]

    head = (
        f"AI coach, time to first token: {ttft['replies']} replies (+ warm-up), stand-in fixed latency "
        f"{config['fixed_latency_ms']:.0f} ms (headers {config['headers_delay_ms']:.0f} + first chunk "
        f"{config['first_chunk_delay_ms']:.0f}{_embedding_latency(config)}); web node on CPU {config['web_cpu']}, worker, stand-in and clients "
        f"on CPU {config['worker_cpu']}; embeddings {config['embeddings']}, AI_DELTA_INTERVAL_MS "
        f"{config['ai_delta_interval_ms']}"
    )
    p = ttft["parts_ms"]
    table = format_table(
        ["measure", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            row("peer: SDK call -> first content chunk", ttft["peer_ttft_ms"]),
            row("peer overhead (- fixed latency)", ttft["peer_overhead_ms"]),
            row("ours: post sent -> first ai.delta", ttft["ours_ttft_from_post_ms"]),
            row("ours: stored message -> first ai.delta", ttft["ours_ttft_from_stored_ms"]),
            row("SERVER OVERHEAD (stored -> delta - fixed)", ttft["server_overhead_ms"]),
            row("  post sent -> stored message at subscriber", p["post_to_stored"]),
            row("  stored -> job start (arq poll)", p["stored_to_job_start"]),
            row("     arq enqueue -> start (its clock)", p["queue_wait"]),
            row("  job start -> request at stand-in", p["job_start_to_request"]),
            row("     the embeddings call at its stand-in", p["embedding_call"]),
            row("  stand-in: request -> first token - fixed", p["standin_lateness"]),
            row("  first token sent -> first ai.delta", p["first_token_to_delta"]),
            row("  (stored -> ai.start at subscriber)", p["stored_to_ai_start"]),
        ],
        align="lrrrrr",
    )
    fan_rows = []
    for f in fan:
        lag, per, spread = f["lag_ms"] or {}, f["per_subscriber_p99_ms"] or {}, f["spread_ms"] or {}
        cpu = f["server_cpu_percent"] or [None, None]
        fan_rows.append(
            [
                f"{f['rate']:g}",
                fmt(f["token_rate"], 1),
                f"{f['complete']}/{f['subscribers']}",
                f"{f['tokens']}/{f['frames_per_stream']}",
                fmt(f["tokens_per_frame"], 2),
                fmt(f["delivered_per_s"], 0),
                fmt(lag.get("p50"), 1),
                fmt(lag.get("p99"), 1),
                fmt(per.get("p50"), 1),
                fmt(per.get("max"), 1),
                fmt(spread.get("p99"), 1),
                fmt(cpu[0], 0, "%"),
                fmt(cpu[1], 0, "%"),
                fmt(f["loadgen_cpu_percent"], 0, "%"),
                _p50_p99(f.get("worker_side_lag_ms")),
                _p50_p99(f.get("web_side_lag_ms")),
                f"{f['worst_delta']['seq']}: {f['worst_delta']['min_median_max_ms'][1]:.0f} ms"
                if f["worst_delta"]
                else "-",
                fmt(f["client_stall_max_ms"], 0, " ms"),
                f"{f['gc_web']['collections_over_1ms']}, {f['gc_web']['max_ms']:.0f} ms (gen {f['gc_web']['max_generation']})"
                if f.get("gc_web")
                else "-",
            ]
        )
    fan_table = format_table(
        [
            "tokens/s",
            "measured",
            "complete",
            "tokens/deltas",
            "tokens/delta",
            "deltas/s",
            "lag p50",
            "lag p99",
            "sub p99 med",
            "sub p99 max",
            "spread p99",
            "web CPU",
            "worker CPU",
            "client CPU",
            "worker-side p50/p99",
            "web-side p50/p99",
            "worst delta (seq: median lag)",
            "client stall max",
            "web GC in stream (n, max)",
        ],
        fan_rows,
    )
    fan_head = (
        f"Fan-out: one reply to {config['subscribers']:,} subscriber sockets on one web node, "
        f"{config['stream_s']:g} s per stream. 'complete': sockets whose deltas came in seq order 1..n and "
        "concatenate to the ai.end text == the text the stand-in sent. lag: delta received - newest token in it "
        "sent by the stand-in (ms; includes the coalescing wait). 'sub p99': each subscriber's own p99 lag "
        "(median / max over subscribers). spread: delta received - first socket receiving it."
    )
    v = verdict
    verdict_rows = [
        [
            "TTFT server overhead p99 <= 10 ms",
            fmt(v["ttft_overhead_p99_ms"], 1) + " ms",
            _yes(v["ttft_overhead_target_met"]),
        ]
    ] + [
        [
            f"fan-out {f['rate']:g} tokens/s to {f['subscribers']} subscribers, complete, coalesced",
            f"complete {_yes(f['all_complete'])}, coalesced {_yes(f['coalesced'])}",
            _yes(f["target_met"]),
        ]
        for f in v["fanout"]
    ]
    verdict_table = format_table(["target", "measured", "met"], verdict_rows, align="llr")
    return f"{head}\n\n{table}\n\n{fan_head}\n\n{fan_table}\n\ntargets:\n{verdict_table}"


def plot(
    path, ttft: dict[str, Any], fan: list[dict[str, Any]], config: dict[str, Any], machine: dict[str, Any]
) -> None:
    plt = pyplot()
    fig, (ax_ttft, ax_parts, ax_fan) = plt.subplots(
        1, 3, figsize=(18, 5.6), gridspec_kw={"width_ratios": [1, 1.4, 1.2]}
    )
    labels = ["peer (SDK)", "ours (stored->delta)"]
    bar_panel(
        ax_ttft,
        labels,
        {q: [ttft["peer_overhead_ms"][q], ttft["server_overhead_ms"][q]] for q in ("p50", "p90", "p99")},
        title=f"TTFT overhead over the {config['fixed_latency_ms']:.0f} ms fixed latency",
        ylabel="ms",
        value_format="{:.1f}",
    )
    ax_ttft.axhline(TARGET_OVERHEAD_P99_MS, color="red", linestyle="--", linewidth=1)
    p = ttft["parts_ms"]
    names = [
        ("post_to_stored", "post->\nstored"),
        ("stored_to_job_start", "stored->\njob start"),
        ("job_start_to_request", "job start->\nprovider req."),
        ("standin_lateness", "stand-in\nlateness"),
        ("first_token_to_delta", "1st token->\n1st delta"),
    ]
    bar_panel(
        ax_parts,
        [label for _, label in names],
        {q: [p[key][q] for key, _ in names] for q in ("p50", "p99")},
        title="Where our overhead goes",
        ylabel="ms",
        value_format="{:.1f}",
    )
    if fan:
        bar_panel(
            ax_fan,
            [f"{f['rate']:g} tok/s\n{f['tokens_per_frame'] or 0:.1f} tok/delta" for f in fan],
            {
                "lag p50": [(f["lag_ms"] or {}).get("p50") for f in fan],
                "lag p99": [(f["lag_ms"] or {}).get("p99") for f in fan],
                "max subscriber p99": [(f["per_subscriber_p99_ms"] or {}).get("max") for f in fan],
                "worker-side p99": [(f.get("worker_side_lag_ms") or {}).get("p99") for f in fan],
                "web-side p99": [(f.get("web_side_lag_ms") or {}).get("p99") for f in fan],
            },
            title=f"Fan-out to {config['subscribers']:,} sockets: token -> screen lag",
            ylabel="ms",
            value_format="{:.0f}",
        )
    fig.suptitle(
        f"AI coach streaming - web node on CPU {config['web_cpu']}, worker/stand-in/clients on CPU "
        f"{config['worker_cpu']}, AI_DELTA_INTERVAL_MS {config['ai_delta_interval_ms']}, embeddings "
        f"{config['embeddings']}\n{machine.get('cpu_model', '')}, {machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- standalone CLI ---------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated numbers, e.g. 50,100") from None
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates must be > 0")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coach_stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", dest="coach_replies", type=int, help="replies for TTFT (default 50; --quick 20)")
    parser.add_argument(
        "--headers-ms", dest="coach_headers_ms", type=float, help="stand-in headers delay (default 200)"
    )
    parser.add_argument(
        "--chunk-ms", dest="coach_chunk_ms", type=float, help="stand-in delay per chunk for TTFT (default 20)"
    )
    parser.add_argument(
        "--rates", dest="coach_rates", type=_rates, help="fan-out tokens/s (default 50,100; --quick 50)"
    )
    parser.add_argument("--stream-s", dest="coach_stream_s", type=float, help="seconds per fan-out stream (default 6)")
    parser.add_argument("--subscribers", dest="coach_subscribers", type=int, help="fan-out sockets (default 1000)")
    parser.add_argument(
        "--embeddings",
        dest="coach_embeddings",
        choices=("auto", "minilm", "hashing", "openai"),
        help="EMBEDDINGS_PROVIDER (default auto); openai: the stand-in's /v1/embeddings with --embedding-ms latency",
    )
    parser.add_argument(
        "--embedding-ms",
        dest="coach_embedding_ms",
        type=float,
        help="latency of the stand-in's /v1/embeddings, subtracted like the chat's (default 30)",
    )
    parser.add_argument(
        "--delta-ms", dest="coach_delta_ms", type=float, help="AI_DELTA_INTERVAL_MS (default: the setting's, 50)"
    )
    parser.add_argument(
        "--profile", dest="coach_profile", action="store_true", help="py-spy the web node during fan-out"
    )
    parser.add_argument(
        "--gc-trace",
        dest="coach_gc_trace",
        action="store_true",
        help="log GC pauses of the web node and the worker (bench/gctrace/sitecustomize.py)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="minimum TTFT rounds (peer then ours), pooled")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    from bench.__main__ import _terminate

    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\nbench: interrupted; child processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
