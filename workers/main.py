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
from redis.exceptions import RedisError

from server.core.database import acquire_engine, release_engine
from server.core.redis import create_redis, deserialize_job, doorbell_channel, queue_name, serialize_job
from server.core.state import AppState
from server.settings import Settings
from workers.accounts import erase_user
from workers.billing import BILLING_FUNCTIONS, billing_sweep
from workers.capsules import unlock_capsules
from workers.coach import generate_reply
from workers.compliance import COMPLIANCE_FUNCTIONS
from workers.files import FILES_FUNCTIONS, clean_files
from workers.knowledge import KNOWLEDGE_FUNCTIONS
from workers.mail import send_email
from workers.notifications import prune_notifications

log = logging.getLogger("lounges.worker")

FUNCTIONS = [
    func(send_email, max_tries=8),
    func(erase_user, max_tries=5),
    # Not retried: a reply that failed is stored as failed, a second run would answer twice.
    func(generate_reply, max_tries=1, timeout=600),
    *KNOWLEDGE_FUNCTIONS,
    *BILLING_FUNCTIONS,
    *FILES_FUNCTIONS,
    *COMPLIANCE_FUNCTIONS,
]

# Scheduled jobs: ``unique`` (one run per slot across all workers), idempotent, retried with backoff.
# arq does not catch up slots missed while no worker ran, so each job handles everything due.
CRON_JOBS = [
    cron(unlock_capsules, second=0, unique=True, max_tries=5, timeout=300),  # every minute
    cron(prune_notifications, hour=3, minute=17, second=0, unique=True, max_tries=5, timeout=600),  # daily
    cron(billing_sweep, minute=set(range(0, 60, 5)), second=30, unique=True, max_tries=3, timeout=300),
    cron(clean_files, minute={7, 22, 37, 52}, second=0, unique=True, max_tries=3, timeout=900),  # orphaned files
]


class DoorbellWorker(Worker):
    """arq's worker, also woken by a pub/sub doorbell (:func:`server.core.redis.ring_doorbell`)
    so an urgent job (a coach reply someone waits for) starts within a millisecond or two
    instead of at the next poll. Polling stays as it was, for every other job and as the
    fallback when the doorbell is missed. An early pick-up runs beside the poll loop; that
    is safe because arq claims each job with a WATCH transaction, as it does across workers."""

    def __init__(self, *args: Any, doorbell: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._doorbell = doorbell

    async def main(self) -> None:
        listener = asyncio.create_task(self._listen_to_doorbell(), name="arq-doorbell")
        try:
            await super().main()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

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


def health_check_key(settings: Settings) -> str:
    return f"{queue_name(settings)}:health-check"


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker` under ``settings``."""

    async def startup(ctx: dict[str, Any]) -> None:
        engine = await acquire_engine(settings)
        ctx["state"] = AppState(settings=settings, engine=engine, redis=ctx["redis"])

    async def shutdown(ctx: dict[str, Any]) -> None:
        state: AppState | None = ctx.get("state")
        if state is not None:
            await state.storage.close()
            await release_engine(state.engine)

    return {
        "functions": FUNCTIONS,
        "cron_jobs": CRON_JOBS,
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
    }


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    return DoorbellWorker(**{**worker_options(settings), **overrides}, doorbell=doorbell_channel(settings))
