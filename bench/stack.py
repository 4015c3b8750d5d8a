"""Services and servers for a benchmark run, all stopped when the ``with`` block ends.

    with BenchStack() as stack:
        env = stack.start_services()               # PostgreSQL+pgvector, Valkey, migrations
        ours = stack.start_ours(cpu=0)             # python -m server serve, pinned
        peer = stack.start_server("peer", [sys.executable, "-m", "bench.peer", "--port", "{port}"], cpu=0)
        token = create_user_token(ours.base_url)
        result = run_pinned_json([...loadgen argv...], cpu=1)

Services start exactly as the dev launcher starts them (``server.devstack``),
but in a temporary data dir that is removed at the end. Every child runs in
its own session; on exit (normal, exception or Ctrl-C) children get SIGTERM,
then SIGKILL after a grace period, then the embedded services stop.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import accepting, children, pin_preexec, rss_kib

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

log = logging.getLogger("bench")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, name: str, timeout: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # children run in their own session: pgid == pid
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, timeout)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    cpu: int | None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def nodes(self) -> list[int]:
        """The forked web processes of ``serve --workers N`` (none for one process)."""
        return children(self.pid)


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    """One request with the standard library (setup only, never in a measured loop)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, {"body": payload.decode(errors="replace")}


def create_user_token(base_url: str) -> tuple[str, str]:
    """Register a fresh user and sign in through the API; returns (email, access token).

    One register and one login: well inside the per-IP auth rate limit.
    """
    email = f"bench-{secrets.token_hex(6)}@example.com"
    password = f"Bench-{secrets.token_urlsafe(18)}"
    status, body = http_json(
        "POST", f"{base_url}/api/v1/auth/register", {"email": email, "password": password, "full_name": "Bench User"}
    )
    if status != 201:
        raise RuntimeError(f"register answered {status}: {body}")
    status, body = http_json("POST", f"{base_url}/api/v1/auth/login", {"email": email, "password": password})
    if status != 200 or "access_token" not in body:
        raise RuntimeError(f"login answered {status}: {body}")
    return email, body["access_token"]


def run_pinned_json(argv: list[str], cpu: int | None, timeout: float) -> dict:
    """Run a child (e.g. the load generator) pinned to ``cpu``; parse the JSON it prints."""
    process = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=pin_preexec(cpu),
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C: do not leave it running
        stop_process(process, argv[2] if len(argv) > 2 else argv[0], timeout=2)
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited with {process.returncode}:\n{stderr.decode(errors='replace')}")
    return json.loads(stdout)


class BenchStack:
    """A temporary data dir, embedded services, pinned servers; all undone by ``close()``."""

    def __init__(self, keep_logs: bool = False) -> None:
        self._exit = ExitStack()
        self.keep_logs = keep_logs
        self.data_dir = Path(tempfile.mkdtemp(prefix="lounges-bench-"))
        self._exit.callback(self._remove_data_dir)
        self.env: dict[str, str] | None = None
        self.servers: list[Server] = []

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._exit.close()

    def _remove_data_dir(self) -> None:
        if self.keep_logs:
            log.warning("kept %s", self.data_dir)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- services ----------------------------------------------------------------------------

    def start_services(self) -> dict[str, str]:
        """Embedded PostgreSQL + pgvector and Valkey (as the dev launcher), then migrations.

        Returns the environment for our server processes.
        """
        from server.devstack import start_embedded_postgres, start_embedded_redis

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        started = time.monotonic()
        database_url = start_embedded_postgres(self.data_dir, self._exit)
        redis_url = start_embedded_redis(self.data_dir, self._exit)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "JWT_KEYS": f"bench:{secrets.token_urlsafe(36)}",  # 48 characters
            "LOG_LEVEL": "WARNING",
            "MAIL_OUTBOX_DIR": str(self.data_dir / "outbox"),
            "DATA_DIR": str(self.data_dir),
        }
        migrated = subprocess.run(
            [sys.executable, "-m", "server", "migrate"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migrations failed:\n{migrated.stdout}\n{migrated.stderr}")
        log.info("services ready in %.1f s (PostgreSQL + pgvector, Valkey, migrations)", time.monotonic() - started)
        self.env = env
        return env

    def service_pids(self) -> dict[str, int]:
        """The embedded services' processes, for CPU accounting: PostgreSQL's postmaster (its
        ``postmaster.pid``; the backends are its children) and Valkey (a child of this process)."""
        pids: dict[str, int] = {}
        with suppress(OSError, ValueError, IndexError):
            pids["postgresql"] = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        for pid in children(os.getpid()):
            with suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith("valkey"):
                    pids["valkey"] = pid
        return pids

    # -- servers -----------------------------------------------------------------------------

    def start_server(
        self,
        name: str,
        argv: list[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        ready_path: str = "/health",
        timeout: float = 30.0,
        nofile: int | None = None,
    ) -> Server:
        """Start ``argv`` (``{port}`` is replaced by a free port) pinned to ``cpu``; wait for ``ready_path``.

        ``nofile`` raises the child's open-file limit (up to the hard limit), for many sockets.
        """
        port = free_port()
        argv = [arg.replace("{port}", str(port)) for arg in argv]
        log_path = self.data_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env or dict(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=pin_preexec(cpu, nofile),
                start_new_session=True,
            )
        self._exit.callback(stop_process, process, name)
        server = Server(name=name, process=process, port=port, cpu=cpu)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                status, _ = http_json("GET", server.base_url + ready_path)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {ready_path} within {timeout:.0f} s")
            time.sleep(0.1)
        self.servers.append(server)
        log.info("%s ready on %s (pid %s, cpu %s)", name, server.base_url, process.pid, cpu)
        return server

    def start_ours(
        self,
        *,
        cpu: int | None,
        name: str = "ours",
        extra_env: dict[str, str] | None = None,
        nofile: int | None = None,
        workers: int = 1,
        timeout: float = 30.0,
    ) -> Server:
        """``python -m server serve``: the real app, PostgreSQL and Redis; one web process, or
        with ``workers`` > 1 a supervisor and that many forked nodes sharing the port (ready
        once every node accepts on it).

        ``extra_env`` overrides settings for this server only (e.g. raised rate limits).
        """
        if self.env is None:
            self.start_services()
        assert self.env is not None
        started = time.monotonic()
        server = self.start_server(
            name,
            [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", "{port}", "--workers", str(workers)],
            cpu=cpu,
            env={**self.env, **(extra_env or {})},
            ready_path="/ready",
            timeout=timeout,
            nofile=nofile,
        )
        if workers > 1:
            while True:
                nodes = server.nodes()
                if len(nodes) == workers and all(accepting(pid, server.port) for pid in nodes):
                    break
                if server.process.poll() is not None or time.monotonic() - started > timeout:
                    raise RuntimeError(
                        f"{name}: {len(nodes)} of {workers} web processes accepting after {timeout:.0f} s"
                    )
                time.sleep(0.1)
            log.info("%s: %d web processes accepting (pids %s)", name, workers, nodes)
        return server

    def start_peer(self, *, cpu: int | None, name: str = "peer", database: bool = False) -> Server:
        """The raw ASGI peer (``bench.peer``) under uvicorn with the same options; with
        ``database`` it gets our ``DATABASE_URL`` and answers ``/db`` after one statement."""
        argv = [sys.executable, "-m", "bench.peer", "--host", HOST, "--port", "{port}"]
        env = {**os.environ, "DATABASE_URL": self.env["DATABASE_URL"]} if database and self.env else None
        return self.start_server(name, argv, cpu=cpu, env=env)
