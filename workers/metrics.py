"""The worker's Prometheus series and its exporter.

Every job function and cron job runs wrapped by :func:`metered`: started, finished (by
outcome) and how long it ran, labelled with the function's name (a fixed set: the
worker's functions). Jobs *queued* are counted where they are queued
(``lounges_jobs_enqueued_total``, :mod:`server.foundation.metrics`), in the web
processes as here. The queue's depth is read from Redis at scrape time.

The exporter is prometheus_client's own HTTP server on ``METRICS_HOST:WORKER_METRICS_PORT``
(a thread; off while the port is unset). It has no token: keep it on loopback (the
default) or a network only the scraper reaches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

from arq import Retry
from arq.cron import CronJob
from arq.typing import WorkerCoroutine
from arq.worker import Function
from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis import Redis
from redis.exceptions import RedisError

from server.foundation import metrics
from server.foundation.redis import queue_name
from server.foundation.settings import Settings

log = logging.getLogger("lounges.worker")

JOBS_STARTED = Counter("lounges_worker_jobs_started_total", "Jobs this worker started, by function", ["function"])
JOBS_FINISHED = Counter(
    "lounges_worker_jobs_finished_total",
    "Jobs this worker ran to an end, by function and outcome (succeeded; failed; retry: it asked to run again; "
    "cancelled: a timeout, an abort or shutdown, after which arq may run it again)",
    ["function", "outcome"],
)
JOB_SECONDS = Histogram(
    "lounges_worker_job_seconds",
    "How long jobs ran, by function",
    ["function"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
JOB_RETRIES = Counter(
    "lounges_worker_job_retries_total", "Jobs started again after an earlier try (arq's job_try > 1)", ["function"]
)
CRON_RUNS = Counter(
    "lounges_worker_cron_runs_total", "Scheduled (cron) jobs run, by job and outcome", ["job", "outcome"]
)

Job = TypeVar("Job", Function, CronJob)


def metered(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` (arq ``Function``s or ``CronJob``s) with their coroutines counted and timed."""
    return [dataclasses.replace(job, coroutine=_counted(job.name, job.coroutine)) for job in jobs]


def _counted(name: str, coroutine: WorkerCoroutine) -> WorkerCoroutine:
    cron = name.startswith("cron:")
    label = name.removeprefix("cron:")
    started_total, duration = JOBS_STARTED.labels(label), JOB_SECONDS.labels(label)
    outcomes = {
        outcome: JOBS_FINISHED.labels(label, outcome) for outcome in ("succeeded", "failed", "retry", "cancelled")
    }
    cron_runs = {outcome: CRON_RUNS.labels(label, outcome) for outcome in outcomes} if cron else {}

    @functools.wraps(coroutine)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not metrics.collecting:
            return await coroutine(ctx, *args, **kwargs)
        started_total.inc()
        if ctx.get("job_try", 1) > 1:
            JOB_RETRIES.labels(label).inc()
        outcome = "failed"
        began = time.perf_counter()
        try:
            result = await coroutine(ctx, *args, **kwargs)
            outcome = "succeeded"
            return result
        except Retry:
            outcome = "retry"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            duration.observe(time.perf_counter() - began)
            outcomes[outcome].inc()
            if cron:
                cron_runs[outcome].inc()

    return run


class QueueDepth:
    """The arq queue's size, read from Redis at each scrape (in the exporter's thread)."""

    def __init__(self, settings: Settings) -> None:
        self._redis = Redis.from_url(settings.redis_url or "", socket_timeout=1, socket_connect_timeout=1)
        self._queue = queue_name(settings)

    def collect(self) -> Iterable[Metric]:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self._queue)
                pipe.zcount(self._queue, "-inf", int(time.time() * 1000))
                total, due = pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("queue depth not read", extra={"error": repr(exc)})
            return
        yield GaugeMetricFamily(
            "lounges_worker_queue_jobs",
            "Jobs in the arq queue (waiting, deferred or running), read at scrape",
            value=total,
        )
        yield GaugeMetricFamily(
            "lounges_worker_queue_due_jobs", "Jobs in the arq queue whose time has come (waiting or running)", value=due
        )

    def close(self) -> None:
        self._redis.close()


class Exporter:
    """The worker's ``/metrics`` HTTP server (prometheus_client's, in a thread)."""

    def __init__(self, settings: Settings) -> None:
        self._depth = QueueDepth(settings)
        port = settings.worker_metrics_port
        assert port is not None
        self._server: WSGIServer
        self._server, self._thread = start_http_server(
            port, addr=settings.metrics_host, registry=metrics.exposition(self._depth)
        )
        log.info("worker metrics served", extra={"host": settings.metrics_host, "port": port})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._depth.close()


def start_exporter(settings: Settings) -> Exporter | None:
    """The exporter, when ``WORKER_METRICS_PORT`` is set (and metrics are on)."""
    if settings.worker_metrics_port is None or not settings.metrics_enabled:
        return None
    return Exporter(settings)
