"""A new user's first hour on a clean machine, from the README's commands.

Real parts: ``python -m server dev`` with nothing configured (embedded PostgreSQL,
Valkey and SeaweedFS in a fresh ``DATA_DIR``), the CLI run beside it with no
``DATABASE_URL`` of its own, and the REST API it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx

from tests.support.nodes import ROOT, free_port

# The settings a developer's shell does not have on a fresh machine.
_CONFIGURED = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "JWT_KEYS", "SMTP_HOST")


def fresh_shell(**overrides: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _CONFIGURED}
    env.update(overrides)
    return env


async def python(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``python <args>`` from the repository root: exit status and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return await process.wait(), output.decode()


async def serving(base: str, launcher: subprocess.Popen[bytes], timeout: float) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
        while True:
            assert launcher.poll() is None, "the dev stack exited"
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{base}/ready", timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.25)


async def test_the_cli_finds_the_running_dev_stack_and_creates_the_first_admin() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="lounges-first-hour-"))
    port = free_port()
    shell = fresh_shell(
        DATA_DIR=str(data_dir),
        PORT=str(port),
        REDIS_PREFIX=f"first-hour-{uuid.uuid4().hex[:6]}",
        WORKER_SHUTDOWN_GRACE_SECONDS="1",
    )
    log_path = data_dir / "launcher.log"
    with log_path.open("wb") as log_file:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "server", "dev"], cwd=ROOT, env=shell, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        await serving(base, launcher, timeout=120)
        stack_file = data_dir / "dev-stack.env"
        assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600  # it holds keys
        printed = log_path.read_text()
        for line in (f"{base}/api/v1", f"ws://127.0.0.1:{port}/connection/websocket", "PostgreSQL", str(stack_file)):
            assert line in printed
        assert re.search(r"lounges: applied \d+ migration\(s\)", printed) and "already complete" not in printed
        status, output = await python("-m", "server", "migrate", env=shell)  # beside the stack: its database
        assert status == 0 and "the database is up to date" in output, output

        email = f"first-admin-{uuid.uuid4().hex[:6]}@example.com"
        password = "correct horse battery staple 42"
        status, output = await python(
            "-m", "server", "create-admin", "--email", email, env={**shell, "LOUNGES_ADMIN_PASSWORD": password}
        )
        assert status == 0, output
        async with httpx.AsyncClient(base_url=base) as http:
            login = await http.post("/api/v1/auth/login", json={"email": email, "password": password})
            assert login.status_code == 200, login.text
            me = await http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
            assert me.json()["role"] == "admin"

        launcher.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.to_thread(launcher.wait, 60) == 0
        assert not stack_file.exists()  # a stopped stack leaves no settings behind
        status, output = await python(
            "-m", "server", "create-admin", "--email", email, env={**shell, "LOUNGES_ADMIN_PASSWORD": password}
        )
        assert status != 0 and "DATABASE_URL must be set" in output
    finally:
        if launcher.poll() is None:  # failed midway: the embedded PostgreSQL (pg_ctl's daemon) outlives a kill
            launcher.kill()
            launcher.wait()
            stop_postgres = "import pgserver, sys; pgserver.get_server(sys.argv[1], cleanup_mode='stop').cleanup()"
            await python("-c", stop_postgres, str(data_dir / "postgres"), env=shell)
