"""Liveness and readiness probes."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from server.foundation.database import check_database
from server.foundation.errors import Unavailable
from server.foundation.redis import check_redis
from server.foundation.state import AppState
from server.http.problems import problem_responses


class HealthStatus(msgspec.Struct):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


class HealthController(Controller):
    """``/health`` says the process serves; ``/ready`` that its dependencies answer."""

    include_in_schema = True
    tags = ["health"]

    @get("/health", summary="Liveness: the process is serving")
    async def health(self) -> HealthStatus:
        """The process is up and serving HTTP (it checks no dependency)."""
        return HealthStatus(status="ok")

    @get(
        "/ready",
        summary="Readiness: PostgreSQL, Redis and the object store answer",
        description="The object store is checked when S3_ENDPOINT is set; without it the check reads "
        '"not configured", which fails readiness only in production.',
        responses=problem_responses(503),
    )
    async def ready(self, app_state: NamedDependency[AppState], state: State) -> HealthStatus:
        node = getattr(state, "node", None)
        if node is not None and node.draining:  # a load balancer must stop sending clients here
            raise Unavailable("draining: this node is shutting down", code="draining")
        checks: dict[str, str] = {}
        probes = [("postgres", check_database(app_state.engine)), ("redis", check_redis(app_state.redis))]
        if app_state.realtime_redis is not app_state.redis:
            probes.append(("realtime_redis", check_redis(app_state.realtime_redis)))
        if app_state.storage.configured:
            probes.append(("storage", app_state.storage.ping()))
        elif app_state.settings.is_production:
            checks["storage"] = "down: not configured"
        for name, probe in probes:
            try:
                await probe
                checks[name] = "ok"
            except Exception as exc:  # any failure means "not ready"; the reason is reported
                checks[name] = f"down: {type(exc).__name__}"
        down = sorted(name for name, result in checks.items() if result != "ok")
        if down:
            raise Unavailable(f"not ready: {', '.join(down)} unreachable", code="not_ready", checks=checks)
        return HealthStatus(status="ready", checks=checks)
