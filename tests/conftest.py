"""Fixtures: a real PostgreSQL+pgvector database and a real Redis per test worker,
the real app served in the test's event loop, and per-test isolation."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from litestar import Litestar

from server.app import create_app
from server.foundation.settings import Settings
from tests.support import sdk
from tests.support.cluster import Cluster
from tests.support.community import Community
from tests.support.js_sdk import install_js_sdk
from tests.support.lifespan import running_lifespan
from tests.support.redis_server import RedisServer
from tests.support.s3 import s3_settings
from tests.support.services import (
    PG_ENV,
    REDIS_ENV,
    RUN_ENV,
    TestServices,
    clone_database,
    drop_database,
    redis_url_for,
    template_name,
)
from tests.support.smtp import SmtpSink
from tests.support.valkey_cluster import ValkeyCluster
from tests.support.worker import run_worker_until_idle

_services: TestServices | None = None


def pytest_configure(config: pytest.Config) -> None:
    """In the controller (or a lone process): find or start the services once."""
    global _services
    if hasattr(config, "workerinput"):
        return
    _services = TestServices()
    _services.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _services is not None:
        _services.close()


def _worker_index(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


@pytest.fixture(scope="session")
def run_id() -> str:
    return os.environ[RUN_ENV]


@pytest.fixture(scope="session")
async def database_url(worker_id: str, run_id: str) -> AsyncIterator[str]:
    """This worker's database, cloned from the migrated template."""
    name = f"lounges_test_{run_id}_{worker_id}"
    yield await clone_database(os.environ[PG_ENV], name, template_name())
    await drop_database(os.environ[PG_ENV], name)


@pytest.fixture
async def empty_database_url(run_id: str) -> AsyncIterator[str]:
    """A brand-new database with nothing in it (for migration tests)."""
    name = f"lounges_empty_{run_id}_{uuid.uuid4().hex[:8]}"
    yield await clone_database(os.environ[PG_ENV], name, "template0")
    await drop_database(os.environ[PG_ENV], name)


@pytest.fixture(scope="session")
def redis_url(worker_id: str) -> str:
    """A Redis logical database of this worker's own (the base URL's db + 1 + worker index)."""
    return redis_url_for(os.environ[REDIS_ENV], 1 + _worker_index(worker_id))


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) that every mail of the test app is sent to."""
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, worker_id: str, run_id: str, smtp_server: SmtpSink) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=f"test-{run_id}-{worker_id}",
        jwt_keys=[f"current:{'c' * 40}", f"previous:{'p' * 40}"],
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_starttls=False,
        mail_outbox_dir=tempfile.mkdtemp(prefix="lounges-outbox-"),
        log_format="console",
        log_level="WARNING",
        db_pool_min_size=1,
        db_pool_max_size=5,
        publish_rate_limit="1000/10",  # tests post in bursts; the limit itself is tested with its own app
        ai_offline_words_per_second=0,  # the offline coach's pace is tested on its own (test_ai_providers.py)
        **s3_settings(run_id, worker_id),
    )


@pytest.fixture(scope="session")
async def _running_app(settings: Settings) -> AsyncIterator[Litestar]:
    async with running_lifespan(create_app(settings)) as application:
        yield application


@pytest.fixture(scope="session")
async def _table_names(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'migration'"
        )
    finally:
        await connection.close()
    return [row["tablename"] for row in rows]


@pytest.fixture
async def app(_running_app: Litestar, _table_names: list[str]) -> Litestar:
    """The real app (its lifespan running in the tests' event loop), with every
    table and this worker's Redis database emptied before the test."""
    state = _running_app.state.app_state
    async with state.engine.pool.acquire() as connection:
        await connection.execute("TRUNCATE " + ", ".join(f'"{table}"' for table in _table_names) + " CASCADE")
    await state.redis.flushdb()
    state.extensions.pop("accounts.session_cache", None)  # the sessions it knew are gone
    return _running_app


@pytest.fixture
def mailbox(smtp_server: SmtpSink, app: Litestar) -> SmtpSink:
    """The SMTP server's inbox, emptied before the test; see ``run_jobs`` to deliver."""
    smtp_server.messages.clear()
    return smtp_server


@pytest.fixture
def run_jobs(settings: Settings) -> Callable[[], Awaitable[None]]:
    """Run the real arq worker until the queue is empty (mail, erasure, ...)."""
    return lambda: run_worker_until_idle(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://lounges.test") as http:
        yield http


@pytest.fixture
def community(client: httpx.AsyncClient, mailbox: SmtpSink, run_jobs: Callable[[], Awaitable[None]]) -> Community:
    """Builds verified users, approved mentors and lounges through the API."""
    return Community(client, mailbox, run_jobs)


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    """A Redis of the test's own, for tests that kill, restart or flush it."""
    server = await RedisServer().astart()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


@pytest.fixture(scope="session")
async def valkey_cluster() -> AsyncIterator[ValkeyCluster]:
    """A real Valkey cluster of this worker's own (3 primaries + 1 replica each, on free
    loopback ports), started by the first test that asks for it and stopped at the end of
    the session. Tests that kill or restart nodes start a ``ValkeyCluster`` of their own."""
    running = await asyncio.to_thread(ValkeyCluster().start)
    try:
        yield running
    finally:
        await asyncio.to_thread(running.close)


@pytest.fixture
async def cluster(app: Litestar, settings: Settings, private_redis: RedisServer) -> AsyncIterator[Cluster]:
    """Start nodes with ``await cluster.start_nodes(**env)``; everything is stopped after the test."""
    running = Cluster(settings, private_redis)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def sharded_cluster(
    app: Litestar, settings: Settings, private_redis: RedisServer, valkey_cluster: ValkeyCluster
) -> AsyncIterator[Cluster]:
    """As ``cluster``, with the nodes' realtime Redis on the Valkey cluster (arq stays on the private Redis)."""
    running = Cluster(settings, private_redis, realtime_url=valkey_cluster.url)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture(params=sdk.ENCODINGS)
def encoding(request: pytest.FixtureRequest) -> Iterator[sdk.Encoding]:
    """Run the test once per encoding of the socket protocol (a module opts in with
    ``pytestmark = pytest.mark.usefixtures("encoding")``): SDK clients it makes speak it."""
    sdk.current_encoding = request.param
    yield request.param
    sdk.current_encoding = "json"


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """tests/js with its locked dependencies installed (``npm ci``, once per session)."""
    return install_js_sdk()
