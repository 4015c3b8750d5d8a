"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from server.domain.accounts.tokens import keys_of
from server.domain.ai import coach
from server.domain.chat.coach_link import connect_coach
from server.foundation import metrics
from server.foundation.database import acquire_engine, release_engine
from server.foundation.logging import configure_logging
from server.foundation.redis import create_redis
from server.foundation.settings import Settings, load_settings
from server.foundation.state import AppState
from server.foundation.tracing import setup_tracing, shutdown_tracing
from server.gateway.asyncapi import asyncapi_document
from server.gateway.endpoint import websocket_endpoint
from server.gateway.node import Node
from server.http.explorer import explorer_assets, explorer_plugin
from server.http.guards import AUTH_DEPENDENCIES
from server.http.health import HealthController
from server.http.metrics import metrics_endpoint
from server.http.middleware import RequestContextMiddleware
from server.http.openapi import TAGS, document_problems, document_summaries
from server.http.problems import EXCEPTION_HANDLERS
from server.http.requests import LoungesRequest
from server.http.routes.account_links import AccountLinkPages
from server.http.routes.accounts import AuthController, UsersController
from server.http.routes.admin import (
    AdminAuditLogController,
    AdminCategoryController,
    AdminMentorController,
    AdminStatsController,
    AdminUserController,
)
from server.http.routes.billing import BillingController
from server.http.routes.capsules import CapsuleController
from server.http.routes.cms import AdminCmsPageController, AdminFaqController, CmsController
from server.http.routes.compliance import ExportController
from server.http.routes.devices import AdminPushController, DeviceController
from server.http.routes.files import FileController, UploadController
from server.http.routes.lounges import LoungeController
from server.http.routes.mentors import CategoryController, MentorController
from server.http.routes.notes import NotesController
from server.http.routes.notifications import NotificationController
from server.http.routes.threads import ThreadController
from server.http.tracing import tracing_middleware
from server.piccolo_app import ALL_TABLES
from server.wiring import GatewayDomain

API_PREFIX = "/api/v1"


def _provide_state(state: State) -> AppState:
    return state.app_state


def _provide_settings(state: State) -> Settings:
    return state.app_state.settings


def _tracing_middleware(settings: Settings) -> list[DefineMiddleware]:
    """A server span per HTTP request (``server/http/tracing.py``) when tracing is on
    (``OTEL_EXPORTER_OTLP_ENDPOINT``); nothing when it is off."""
    return [tracing_middleware()] if setup_tracing(settings, "lounges-web") else []


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the ASGI app. ``settings`` default to the environment's."""
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    middleware = _tracing_middleware(settings)
    metrics.configure(settings.metrics_enabled)
    connect_coach(coach)  # the message store answers posts through the coach above it

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = await acquire_engine(settings, ALL_TABLES)
        redis = create_redis(settings)
        app.state.app_state = state = AppState(settings=settings, engine=engine, redis=redis)
        keys_of(state)  # signing keys made at start (an ephemeral key is announced now, not on first use)
        app.state.node = node = Node(state, GatewayDomain(state))
        await node.start()
        # What another process's scrape reads of this one is at most a second old.
        sampling = asyncio.create_task(metrics.sample_forever(), name="metrics-sampling")
        try:
            yield
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            await node.stop()
            await state.storage.close()
            await state.close_realtime_redis()
            await redis.aclose()
            await release_engine(engine)
            shutdown_tracing()  # what is still queued goes out

    api = Router(
        path=API_PREFIX,
        route_handlers=[
            AuthController,
            UsersController,
            CategoryController,
            MentorController,
            LoungeController,
            ThreadController,
            NotesController,
            CapsuleController,
            NotificationController,
            DeviceController,
            UploadController,
            FileController,
            ExportController,
            BillingController,
            CmsController,
            AdminMentorController,
            AdminCategoryController,
            AdminUserController,
            AdminStatsController,
            AdminAuditLogController,
            AdminPushController,
            AdminCmsPageController,
            AdminFaqController,
        ],
    )
    app = Litestar(
        route_handlers=[
            HealthController,
            metrics_endpoint,
            api,
            websocket_endpoint,
            asyncapi_document,
            explorer_assets(),
            AccountLinkPages,
        ],
        lifespan=[lifespan],
        dependencies={
            "app_state": Provide(_provide_state, sync_to_thread=False),
            "settings": Provide(_provide_settings, sync_to_thread=False),
            **AUTH_DEPENDENCIES,
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=LoungesRequest,
        cors_config=CORSConfig(allow_origins=settings.cors_allow_origins) if settings.cors_allow_origins else None,
        compression_config=CompressionConfig(backend="gzip", minimum_size=settings.compression_minimum_size),
        openapi_config=OpenAPIConfig(
            title="Lounges API",
            version="1.0.0",
            description="REST surface of Lounges. Realtime traffic uses /connection/websocket (see docs/protocol.md).",
            path="/schema",
            render_plugins=[explorer_plugin()],
            use_handler_docstrings=True,
            tags=TAGS,
            components=Components(
                security_schemes={"BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
        ),
        debug=False,
        logging_config=None,  # configure_logging() owns the root logger
        middleware=middleware,
    )
    document_problems(app.openapi_schema)
    document_summaries(app.openapi_schema)
    # Outermost, so that router-level answers (404, 405) carry a request id too. Gateway
    # sockets never reach the app: the server runs it behind the gateway's dispatch
    # (server.gateway.endpoint.gateway_dispatch, applied by `python -m server serve`).
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    if settings.trusted_proxies:
        # Outside everything: the client address that logs, sessions and rate limits see
        # is the one the named proxies forwarded (uvicorn's own handling is off).
        # uvicorn and Litestar each declare their own ASGI event TypedDicts, which mypy finds
        # incompatible; the handler is a plain ASGI 3 application for both.
        app.asgi_handler = ProxyHeadersMiddleware(  # type: ignore[assignment]
            app.asgi_handler,  # type: ignore[arg-type]
            trusted_hosts=settings.trusted_proxies,
        )
    return app
