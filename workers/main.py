"""arq worker: the options shared by the CLI, the dev launcher and the tests.

Run it with ``python -m server worker``; ``python -m server worker --check``
exits non-zero when no worker has refreshed its health key within
``WORKER_HEALTH_CHECK_INTERVAL`` seconds, for a supervisor to watch.
"""

from __future__ import annotations

from typing import Any

from arq.cron import cron
from arq.worker import Worker, func

from server.core.database import acquire_engine, release_engine
from server.core.redis import create_redis, deserialize_job, queue_name, serialize_job
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
        "poll_delay": 0.1,  # coach replies should start within a tenth of a second
        "keep_result": 60,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
    }


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    return Worker(**{**worker_options(settings), **overrides})
