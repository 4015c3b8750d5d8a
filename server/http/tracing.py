"""Litestar's OpenTelemetry plugin as the app uses it (imported only when tracing is on).

A server span per HTTP request (the socket's commands are the gateway's own spans), named
after the route's template once the request is routed (``GET /api/v1/lounges/{id}``,
not its path with an id in it: one name per route, as trace backends group by name).
Probes (``/health``, ``/ready``) are not traced.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryInstrumentationMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace


class _RouteNamedMiddleware(OpenTelemetryInstrumentationMiddleware):
    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            span = trace.get_current_span()  # the request's server span, ended once the body is sent

            async def named_send(message: Message) -> None:
                template = scope.get("path_template")  # set by Litestar's router, on this scope
                if message["type"] == "http.response.start" and template:
                    span.update_name(f"{scope.get('method', '')} {template}".strip())
                    span.set_attribute("http.route", template)
                await send(message)

            await app(scope, receive, named_send)

        super().__init__(routed, config)


def tracing_middleware() -> DefineMiddleware:
    """The OpenTelemetry middleware for ``Litestar(middleware=...)``: Litestar turns it into its
    plugin, outermost of the app's own middleware."""
    config = OpenTelemetryConfig(
        scopes={ScopeType.HTTP},
        exclude=["^/health$", "^/ready$"],
        exclude_spans=["receive", "send"],
        middleware_class=_RouteNamedMiddleware,
    )
    return config.middleware
