"""HTTP metrics: the request series (recorded by :mod:`server.http.middleware`) and ``GET /metrics``.

``/metrics`` answers the Prometheus text format to a scraper presenting
``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time); without the
setting it answers 404, as if it did not exist, and so it does with
``METRICS_ENABLED=false``. It is not in the OpenAPI document, not counted in the request
series and not in the access log. Under ``serve --workers N`` whichever process takes
the scrape answers for all of them (:mod:`server.foundation.metrics`).
"""

from __future__ import annotations

import asyncio
import hmac

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.types import HTTPScope
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.foundation import metrics
from server.foundation.errors import NotFound, Unauthorized
from server.foundation.settings import Settings

METRICS_PATH = "/metrics"

REQUESTS = Counter(
    "lounges_http_requests_total",
    "HTTP requests answered, by method, route template (unmatched: no route) and status",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "lounges_http_request_seconds",
    "Time from a request's arrival to its response's last byte, by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of requests no route took (404s, bad hosts)

# (method, route, status) -> the children bound for it: one dict lookup per request.
_bound: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _children(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    key = (method, route, status)
    children = _bound.get(key)
    if children is None:
        children = _bound[key] = (REQUESTS.labels(method, route, str(status)), REQUEST_SECONDS.labels(method, route))
    return children


def observe_request(scope: HTTPScope, status: int, seconds: float) -> None:
    """Count and time an answered HTTP request (called by the request-context middleware, which
    times every request anyway), labelled with its route's template
    (``/api/v1/lounges/{lounge_id:uuid}``), never the path itself."""
    method = scope["method"] if scope["method"] in METHODS else "other"
    route = scope.get("path_template") or UNMATCHED  # set by Litestar's router once it matched
    counter, histogram = _children(method, route, status)
    counter.inc()
    histogram.observe(seconds)


_registry: CollectorRegistry | None = None


def _scrape() -> bytes:
    global _registry
    if _registry is None:
        _registry = metrics.exposition()
    return metrics.render(_registry)


@get(METRICS_PATH, include_in_schema=False)
async def metrics_endpoint(request: Request, settings: NamedDependency[Settings]) -> Response[bytes]:
    """The Prometheus text format, for a scraper with ``METRICS_TOKEN``."""
    token = settings.metrics_token
    if token is None or not settings.metrics_enabled:
        raise NotFound("no such resource")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("a bearer token is required", code="invalid_token")
    metrics.sample()  # on the event loop: the gateway's counts and the pool's sizes, now
    body = await asyncio.to_thread(_scrape)  # reading every process's files may take milliseconds
    return Response(body, media_type=metrics.CONTENT_TYPE)
