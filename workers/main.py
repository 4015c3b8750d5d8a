"""arq worker: the options shared by the CLI, the dev launcher and the tests.

Run it with ``python -m server worker``; ``python -m server worker --check``
exits non-zero when no worker has refreshed its health key within
``WORKER_HEALTH_CHECK_INTERVAL`` seconds, for a supervisor to watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.cron import cron
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.domain.accounts.tokens import keys_of
from server.domain.ai import coach
from server.domain.ai.streams import process_id, reap_dead_replies
from server.domain.chat.coach_link import connect_coach
from server.domain.llm.registry import build_providers
from server.domain.push.providers import close_providers
from server.foundation import metrics
from server.foundation.database import acquire_engine, release_engine
from server.foundation.redis import create_redis, deserialize_job, doorbell_channel, queue_name, serialize_job
from server.foundation.settings import Settings
from server.foundation.state import AppState
from server.foundation.tracing import setup_tracing, shutdown_tracing
from server.piccolo_app import ALL_TABLES
from workers.accounts import erase_user
from workers.billing import BILLING_FUNCTIONS, billing_sweep
from workers.capsules import unlock_capsules
from workers.coach import generate_reply
from workers.compliance import COMPLIANCE_FUNCTIONS
from workers.files import FILES_FUNCTIONS, clean_files
from workers.knowledge import KNOWLEDGE_FUNCTIONS
from workers.mail import send_email
from workers.metrics import metered, start_exporter
from workers.notifications import prune_notifications
from workers.push import PUSH_FUNCTIONS, prune_push

log = logging.getLogger("lounges.worker")

FUNCTIONS = [
    func(send_email, max_tries=8),
    func(erase_user, max_tries=5),
    # A failed reply is stored as failed and not run again (that would answer twice). The
    # second try exists for arq's replay of a job whose worker vanished: it ends the reply
    # as worker_lost (server/domain/ai/replies.py) rather than arq dropping it as "max retries exceeded".
    func(generate_reply, max_tries=2, timeout=600),
    *KNOWLEDGE_FUNCTIONS,
    *BILLING_FUNCTIONS,
    *FILES_FUNCTIONS,
    *COMPLIANCE_FUNCTIONS,
    *PUSH_FUNCTIONS,
]

# Scheduled jobs: ``unique`` (one run per slot across all workers), idempotent, retried with backoff.
# arq does not catch up slots missed while no worker ran, so each job handles everything due.
CRON_JOBS = [
    cron(unlock_capsules, second=0, unique=True, max_tries=5, timeout=300),  # every minute
    cron(prune_notifications, hour=3, minute=17, second=0, unique=True, max_tries=5, timeout=600),  # daily
    cron(prune_push, hour=3, minute=27, second=0, unique=True, max_tries=5, timeout=600),  # daily
    cron(billing_sweep, minute=set(range(0, 60, 5)), second=30, unique=True, max_tries=3, timeout=300),
    cron(clean_files, minute={7, 22, 37, 52}, second=0, unique=True, max_tries=3, timeout=900),  # orphaned files
]


class DoorbellWorker(Worker):
    """arq's worker, also woken by a pub/sub doorbell (:func:`server.foundation.redis.ring_doorbell`)
    so an urgent job (a coach reply someone waits for) starts within a millisecond or two
    instead of at the next poll. Polling stays as it was, for every other job and as the
    fallback when the doorbell is missed. An early pick-up runs beside the poll loop; that
    is safe because arq claims each job with a WATCH transaction, as it does across workers.

    It also outlives Redis outages: arq's own loop exits on the first connection error,
    this one waits with backoff (its heartbeat lapses meanwhile, so ``worker --check``
    reports it unhealthy) and carries on when Redis answers again."""

    def __init__(self, *args: Any, doorbell: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._doorbell = doorbell
        self._redis_retry: float | None = None  # the next backoff while Redis is unreachable

    async def main(self) -> None:
        while True:  # Redis down at start: wait for it, as for an outage later
            try:
                await self.pool.ping()
                break
            except (RedisError, OSError) as exc:
                await self._redis_unreachable(exc)
        listener = asyncio.create_task(self._listen_to_doorbell(), name="arq-doorbell")
        try:
            await super().main()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            await self._redis_unreachable(exc)
        else:
            if self._redis_retry is not None:
                self._redis_retry = None
                log.info("worker reaches Redis again")

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                # arq counted the job and took a semaphore slot before its claim failed,
                # and gives neither back: without this, each outage would shrink the worker.
                self.job_counter -= 1
                self.sem.release()
                raise

    async def _redis_unreachable(self, exc: BaseException) -> None:
        delay = self._redis_retry = min(2 * (self._redis_retry or 0.05), 5.0)
        log.warning("worker cannot reach Redis; retrying", extra={"error": repr(exc), "retry_in": delay})
        await asyncio.sleep(delay)

    async def _listen_to_doorbell(self) -> None:
        while self._pool is None:  # main() creates the pool when none was given
            await asyncio.sleep(0.05)
        delay = 0.1
        while True:
            try:
                async with self.pool.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._doorbell)
                    delay = 0.1
                    while True:
                        if await pubsub.get_message(timeout=5.0) is not None:
                            await self._poll_iteration()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("worker doorbell lost; polling meanwhile", extra={"error": repr(exc), "retry_in": delay})
            except Exception:  # a failed early pick-up must not silence the doorbell for good
                log.exception("worker doorbell failed; polling meanwhile")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _reap_forever(state: AppState, worker_id: str) -> None:
    """End, every second or so, the coach replies whose worker died (``server/domain/ai/streams.py``)."""
    interval = min(1.0, state.settings.ai_stream_lease_seconds / 3)
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await reap_dead_replies(state, worker_id)
            failing = False
        except (RedisError, OSError) as exc:  # the poll loop reports the outage; say it once here
            if not failing:
                log.warning("coach reaper cannot reach Redis", extra={"error": repr(exc)})
            failing = True
        except Exception:  # PostgreSQL down, say: the next round tries again
            log.exception("coach reaper failed")


def health_check_key(settings: Settings) -> str:
    return f"{queue_name(settings)}:health-check"


async def check_health(settings: Settings) -> tuple[bool, str]:
    """Whether a worker refreshed its heartbeat within ``WORKER_HEALTH_CHECK_INTERVAL``, and why
    not. Redis unreachable is unhealthy too: no worker can take jobs then."""
    redis = Redis.from_url(settings.redis_url or "", socket_connect_timeout=3, socket_timeout=3)
    try:
        beat = await redis.get(health_check_key(settings))
    except (RedisError, OSError) as exc:
        return False, f"Redis is unreachable ({exc})"
    finally:
        await redis.aclose()
    if not beat:
        return False, "no worker refreshed its heartbeat within WORKER_HEALTH_CHECK_INTERVAL"
    return True, beat.decode(errors="replace")


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker` under ``settings``."""

    metrics.configure(settings.metrics_enabled)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["metrics_exporter"] = start_exporter(settings)  # first: a port in use stops the worker at once
        ctx["metrics_sampling"] = asyncio.create_task(metrics.sample_forever(), name="metrics-sampling")
        setup_tracing(settings, "lounges-worker")  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
        connect_coach(coach)  # as the web process: jobs that delete messages stop the coach's replies
        engine = await acquire_engine(settings, ALL_TABLES)
        ctx["state"] = state = AppState(settings=settings, engine=engine, redis=ctx["redis"])
        keys_of(state)  # as the web process: its signing keys at start
        # The model SDKs take seconds to import, which would block the event loop inside the
        # first reply and could outlast its lease (reaped as worker_lost): import them now.
        build_providers(settings)
        ctx["worker_id"] = process_id("worker")
        if not settings.push_configured:
            log.info("push notifications are off: neither APNS_KEY nor FCM_SERVICE_ACCOUNT is set")
        ctx["reaper"] = asyncio.create_task(_reap_forever(state, ctx["worker_id"]), name="coach-reaper")

    async def shutdown(ctx: dict[str, Any]) -> None:
        for name in ("reaper", "metrics_sampling"):
            task: asyncio.Task[None] | None = ctx.get(name)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if ctx.get("metrics_exporter") is not None:
            await asyncio.to_thread(ctx["metrics_exporter"].close)  # waits for its thread's poll
        state: AppState | None = ctx.get("state")
        if state is not None:
            await close_providers(state)
            await state.storage.close()
            await state.close_realtime_redis()
            await release_engine(state.engine)
        shutdown_tracing()  # what is still queued goes out

    return {
        "functions": metered(FUNCTIONS),
        "cron_jobs": metered(CRON_JOBS),
        "redis_pool": create_redis(settings),
        "queue_name": queue_name(settings),
        "health_check_interval": settings.worker_health_check_interval,
        "health_check_key": health_check_key(settings),
        "job_serializer": serialize_job,
        "job_deserializer": deserialize_job,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": 0.1,  # the doorbell wakes workers earlier for coach replies
        "keep_result": 60,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
        # SIGTERM: no new jobs, running ones (coach replies mid-sentence) get this long to finish.
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
    }


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    return DoorbellWorker(**{**worker_options(settings), **overrides}, doorbell=doorbell_channel(settings))
