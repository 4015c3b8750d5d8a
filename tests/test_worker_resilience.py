"""The worker outlives Redis outages, and the dev launcher keeps its stack up without leaking it.

Real parts: ``python -m server worker`` against a private Valkey that is killed and
started again (``tests/support/redis_server.py``), ``python -m server worker --check``,
``python -m server dev`` with its web and worker children, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import msgspec
from arq.worker import JobExecutionFailed

from server.devstack import Supervisor
from server.domain.tables.ai import AIUsage
from server.foundation.redis import create_redis, deserialize_job, serialize_job
from server.foundation.settings import Settings
from tests.support.coach_faults import Worker, ai_messages, open_thread, pid_alive, post
from tests.support.community import Community
from tests.support.llm_standins import running_openai_standin
from tests.support.nodes import ROOT, free_port, node_env
from tests.support.redis_server import RedisServer


def check(env: dict[str, str]) -> tuple[int, str, float]:
    """``python -m server worker --check``: exit status, output, seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "server", "worker", "--check"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    return done.returncode, (done.stdout + done.stderr).decode(), time.monotonic() - started


async def until(predicate, timeout: float, step: float = 0.1) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)


async def test_the_worker_waits_out_a_redis_outage_reports_it_and_runs_jobs_after(
    settings: Settings, private_redis: RedisServer
) -> None:
    private = msgspec.structs.replace(settings, redis_url=private_redis.url)
    outbox = tempfile.mkdtemp(prefix="lounges-outbox-")
    env = {"WORKER_HEALTH_CHECK_INTERVAL": "1", "MAIL_OUTBOX_DIR": outbox, "SMTP_HOST": ""}
    worker = Worker(private, **env)
    try:
        await worker.start()
        assert (await asyncio.to_thread(check, worker.env))[0] == 0

        private_redis.stop()
        await asyncio.sleep(2.5)  # the heartbeat key would have lapsed by now; the worker must not have
        assert worker.process is not None and worker.process.poll() is None, "the worker died with Redis"
        status, output, took = await asyncio.to_thread(check, worker.env)
        assert status == 1 and took < 10
        assert "lounges: worker unhealthy: Redis is unreachable" in output and "Traceback" not in output

        await private_redis.astart()  # back, and empty
        redis = create_redis(private)
        try:
            await redis.enqueue_job("send_email", {"to": "back@example.com", "subject": "after", "text": "the outage"})
            await until(lambda: any(Path(outbox).iterdir()), timeout=15)
        finally:
            await redis.aclose()
        status, output, _ = await asyncio.to_thread(check, worker.env)
        assert status == 0, output
        assert worker.process.poll() is None
    finally:
        worker.close()


async def test_a_reply_cut_off_by_a_redis_outage_is_stored_and_the_worker_carries_on(
    settings: Settings, private_redis: RedisServer, client, community: Community
) -> None:
    """The reply's text so far reaches PostgreSQL (failed, with its ledger row) though Redis is gone."""
    private = msgspec.structs.replace(settings, redis_url=private_redis.url)
    async with running_openai_standin() as llm:
        llm.reset(reply=" ".join(f"w{i}" for i in range(300)), api_key="sk-outage", chunk_size=4, chunk_delay=0.05)
        worker = Worker(
            private,
            OPENAI_API_KEY="sk-outage",
            OPENAI_BASE_URL=llm.base_url,
            AI_PROVIDERS="openai",
            AI_MAX_RETRIES="0",
            EMBEDDINGS_PROVIDER="hashing",
        )
        try:
            await worker.start()
            owner = await community.user("outage@example.com", verified=False)
            thread, channel = await open_thread(client, owner)
            await post(client, community, owner, thread, "talk to me")  # queued on the app's Redis: not run here
            redis = create_redis(private)
            try:  # the same reply, queued where this worker listens
                await redis.enqueue_job("generate_reply", channel, 1, owner.id, uuid.uuid4().hex, "talk to me")
            finally:
                await redis.aclose()
            await until(lambda: llm.requests, timeout=15)
            await asyncio.sleep(1.0)  # some text streamed
            private_redis.stop()
            async with asyncio.timeout(30):
                while not (stored := await ai_messages(channel)):
                    await asyncio.sleep(0.2)
            [reply] = stored
            assert reply["status"] == "failed" and reply["text"].startswith("w0 w1")
            [ledger] = await AIUsage.select().where(AIUsage.message == reply["id"])
            assert ledger["outcome"] == "failed" and ledger["output_tokens"] > 0
            await asyncio.sleep(1.0)
            assert worker.process is not None and worker.process.poll() is None, "the worker died with Redis"
        finally:
            worker.close()


def children_of(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` and their command lines (from /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
    return found


async def test_the_dev_launcher_restarts_a_crashed_child_and_no_child_outlives_it(settings: Settings) -> None:
    env = node_env(
        settings,
        PORT=str(free_port()),
        DATA_DIR=tempfile.mkdtemp(prefix="lounges-dev-"),
        S3_ENDPOINT=settings.s3_endpoint or "",
        S3_ACCESS_KEY=settings.s3_access_key or "",
        S3_SECRET_KEY=settings.s3_secret_key or "",
        WORKER_SHUTDOWN_GRACE_SECONDS="1",
        REDIS_PREFIX=f"{settings.redis_prefix}-devstack",  # its worker must not run other tests' jobs
    )
    launcher = subprocess.Popen([sys.executable, "-m", "server", "dev"], cwd=ROOT, env=env)
    try:

        def role(name: str) -> list[int]:
            return [pid for pid, command in children_of(launcher.pid).items() if f"-m server {name}" in command]

        await until(lambda: len(role("serve")) == 1 and len(role("worker")) == 1, timeout=60)
        [web], [worker] = role("serve"), role("worker")
        async with httpx.AsyncClient() as http, asyncio.timeout(30):  # serving, not just started
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{env['PORT']}/health", timeout=1)).status_code == 200:
                        break
                await asyncio.sleep(0.2)

        os.kill(worker, signal.SIGKILL)  # a crash
        await until(lambda: role("worker") not in ([], [worker]), timeout=10)
        assert launcher.poll() is None and role("serve") == [web]
        [restarted] = role("worker")

        launcher.kill()  # SIGKILL: no chance to stop its children itself
        launcher.wait()
        await until(lambda: not pid_alive(web) and not pid_alive(restarted), timeout=15)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


async def test_a_child_that_keeps_crashing_stops_the_stack_after_the_limit() -> None:
    supervisor = Supervisor(dict(os.environ), limit=2, window=60.0)
    supervisor.start("broken", [sys.executable, "-c", "import sys; sys.exit(3)"])
    started: list[int] = []
    try:
        async with asyncio.timeout(20):
            while (status := supervisor.check()) is None:
                if supervisor.children["broken"].pid not in started:
                    started.append(supervisor.children["broken"].pid)
                await asyncio.sleep(0.05)
    finally:
        supervisor.stop()
    assert status == 3
    assert len(started) == 3  # the first run and two restarts


def test_a_failed_jobs_exception_is_kept_as_its_result() -> None:
    """arq stores the exception a job failed with (or "max retries exceeded") as its result;
    msgpack has no exceptions, so without this every failure came with a serialisation traceback."""
    result = {"r": JobExecutionFailed("max 2 retries exceeded"), "s": False}
    assert deserialize_job(serialize_job(result)) == {"r": "JobExecutionFailed('max 2 retries exceeded')", "s": False}
