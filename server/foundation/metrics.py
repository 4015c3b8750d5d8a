"""Prometheus metrics: the process's switch, multiprocess mode, what a scrape reads, and the
series of the stores (PostgreSQL, Redis, the job queue).

**Where series live.** Each layer defines its own, once, at import, in its ``metrics``
module: this one; ``server.gateway.metrics``; ``server.http.metrics``;
``server.domain.<area>.metrics``; ``workers.metrics``. Names start with ``lounges_`` and
carry their unit (``_seconds``, ``_bytes``, ``_total``); label values come from small
fixed sets (route templates, command methods, result and close codes, encodings,
providers, models, job functions), never a user, channel or lounge id.

**The switch.** ``METRICS_ENABLED=false`` (:func:`configure`) turns :data:`collecting`
off: every hook checks it and records nothing, and ``/metrics`` answers 404, so the cost
of metrics can be measured against none (``python -m bench http|ws --metrics on,off``).

**Several processes.** ``python -m server serve --workers N`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before anything imports
prometheus_client: every process then keeps its values in its own memory-mapped files
there, and a scrape of any one of them adds up all of them (:func:`exposition`); a
gauge says how (``livesum``: the live processes' values summed; the supervisor marks a
dead child's gauges gone with :func:`mark_process_dead`). Without the variable a
process answers from its own registry.

**Samplers.** What is read rather than counted (pool sizes, the gateway's batched
counts, its subscriptions) is brought up to date by :func:`sample`: before each scrape
(in the scraped process) and once a second (:func:`sample_forever`, in every process).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("lounges.metrics")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Whether hooks record anything (METRICS_ENABLED); set once at start by configure().
collecting = True

disable_created_metrics()  # no ``*_created`` series beside every counter and histogram

# Latency buckets (seconds) shared by the stores: sub-millisecond to a stalled server.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def configure(enabled: bool) -> None:
    """Collect (``METRICS_ENABLED``) or not, for this process."""
    global collecting
    collecting = enabled


def multiprocess_dir() -> str | None:
    """Where the processes of a ``serve --workers N`` group write their values (None: one process)."""
    return os.environ.get(MULTIPROCESS_ENV) or None


def mark_process_dead(pid: int) -> None:
    """A process of the group ended: its live gauges no longer count (its counters still do)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)


# -- what a scrape reads -------------------------------------------------------------------------

_samplers: list[Callable[[], None]] = []


def add_sampler(sampler: Callable[[], None]) -> None:
    """Run ``sampler`` before every scrape and once a second (it sets gauges, moves batched counts)."""
    _samplers.append(sampler)


def remove_sampler(sampler: Callable[[], None]) -> None:
    if sampler in _samplers:
        _samplers.remove(sampler)


def sample() -> None:
    """Run every sampler; one that fails is logged and stops no other."""
    if not collecting:
        return
    for sampler in list(_samplers):
        try:
            sampler()
        except Exception:
            log.exception("metrics sampler failed", extra={"sampler": getattr(sampler, "__qualname__", "?")})


async def sample_forever(interval: float = 1.0) -> None:
    """:func:`sample` every ``interval`` seconds (what another process's scrape reads of this one)."""
    while True:
        await asyncio.sleep(interval)
        sample()


class _Registered:
    """A registry's collectors as one collector (so one exposition registry can add others)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def exposition(*extra: Collector) -> CollectorRegistry:
    """What a scrape of this process answers: every process of the group (multiprocess mode)
    or this process's own registry, plus ``extra`` collectors read at scrape time."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Registered(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (version 0.0.4) of ``registry``."""
    return generate_latest(registry)


def bounded(value: str, allowed: Iterable[str], other: str = "other") -> str:
    """``value`` if it is one of ``allowed``, else ``other``: a label keeps a fixed set of values."""
    return value if value in allowed else other


# -- PostgreSQL ----------------------------------------------------------------------------------

DB_POOL_CONNECTIONS = Gauge(
    "lounges_db_pool_connections",
    "PostgreSQL connections of the pool, by state (in_use: lent out, idle: ready); sampled",
    ["state"],
    multiprocess_mode="livesum",
)
DB_POOL_MAX_CONNECTIONS = Gauge(
    "lounges_db_pool_max_connections", "DB_POOL_MAX_SIZE, summed over processes", multiprocess_mode="livesum"
)
DB_POOL_ACQUIRE_SECONDS = Histogram(
    "lounges_db_pool_acquire_seconds",
    "Time to get a connection from the PostgreSQL pool (waiting for a free one, or connecting)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
DB_STATEMENT_SECONDS = Histogram(
    "lounges_db_statement_seconds",
    "Latency of named hot statements (post_message: a message, its offset and its log entry in one statement)",
    ["statement"],
    buckets=FAST_BUCKETS,
)

# -- Redis ---------------------------------------------------------------------------------------

REDIS_COMMAND_SECONDS = Histogram(
    "lounges_redis_command_seconds",
    "Latency of the broker's Redis round trips (broadcast: the history cache + publish pipeline; "
    "publish: an ephemeral publication)",
    ["operation"],
    buckets=FAST_BUCKETS,
)
REDIS_ERRORS = Counter("lounges_redis_errors_total", "Broker Redis round trips that failed or timed out", ["operation"])

# -- the job queue -------------------------------------------------------------------------------

JOBS_ENQUEUED = Counter(
    "lounges_jobs_enqueued_total",
    "arq jobs queued by this process, by function (result: queued, or duplicate when a job of that id exists)",
    ["function", "result"],
)
