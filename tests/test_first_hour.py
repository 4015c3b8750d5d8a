"""A new user's and a client developer's first hour on a clean machine, from the docs.

Real parts: ``python -m server dev`` with nothing configured (embedded PostgreSQL,
Valkey and SeaweedFS in a fresh ``DATA_DIR``, its own worker delivering mail to the
outbox), the CLI run beside it with no ``DATABASE_URL`` of its own (the command is
read from the README), the mailed links opened and completed in headless Chromium
(Debian's ``chromium``, driven by Playwright), the REST API, and the official
centrifuge-python and centrifuge-js SDKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright

from tests.support.js_sdk import run_smoke
from tests.support.nodes import ROOT, free_port
from tests.support.sdk import sdk_client, subscription

# A real browser opens the mailed links: Debian's chromium (or the one CHROMIUM names).
CHROMIUM_HINT = "apt-get install chromium (Debian), or set CHROMIUM to a Chromium or Chrome binary"
# The settings a developer's shell does not have on a fresh machine.
_CONFIGURED = (
    "DATABASE_URL",
    "REDIS_URL",
    "S3_ENDPOINT",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "JWT_KEYS",
    "SMTP_HOST",
    "PUBLIC_BASE_URL",
    "APP_LINK_BASE",
    "MAIL_OUTBOX_DIR",
)


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


async def readme_command(name: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the README's shell line that contains ``name``, as a reader would paste it."""
    readme = (ROOT / "README.md").read_text()
    [line] = [line for line in re.findall(r"```sh\n(.*?)```", readme, re.S)[0].splitlines() if name in line] or [
        line for block in re.findall(r"```sh\n(.*?)```", readme, re.S) for line in block.splitlines() if name in line
    ]
    # The README's interpreter is the checkout's .venv; the test runs in whichever Python runs it.
    line = line.replace(".venv/bin/python", shlex.quote(sys.executable))
    process = await asyncio.create_subprocess_shell(
        line, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return await process.wait(), output.decode()


def stop_postgres(pgdata: Path) -> None:
    """Fast shutdown (SIGINT to the postmaster named in ``postmaster.pid``) of the embedded
    PostgreSQL a killed launcher left running: pgserver stops it only for its last live handle."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((pgdata / "postmaster.pid").read_text().split()[0]), signal.SIGINT)


async def serving(base: str, launcher: subprocess.Popen[bytes], timeout: float) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
        while True:
            assert launcher.poll() is None, "the dev stack exited"
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{base}/ready", timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.25)


async def mailed_link(outbox: Path, to: str, page: str, timeout: float = 30.0) -> str:
    """The ``page`` link in the newest mail to ``to`` that the dev stack's worker wrote."""
    async with asyncio.timeout(timeout):
        while True:
            for path in sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime, reverse=True):
                message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                if message["To"] != to.lower():  # addresses are stored normalised
                    continue
                body = message.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
                text = body.get_content() if body is not None else ""
                found = re.search(rf"(\S+/{page}\?token=\S+)", text)
                if found:
                    return found.group(1)
            await asyncio.sleep(0.2)


async def sign_in(http: httpx.AsyncClient, address: str, password: str) -> dict[str, str]:
    login = await http.post("/api/v1/auth/login", json={"email": address, "password": password})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def register(http: httpx.AsyncClient, name: str, password: str) -> str:
    address = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    created = await http.post("/api/v1/auth/register", json={"email": address, "password": password, "full_name": name})
    assert created.status_code == 201, created.text
    return address


async def test_a_clean_clone_from_the_docs_alone(js_sdk: Path) -> None:
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

        # The launcher says where everything is, and leaves its settings for the CLI.
        stack_file = data_dir / "dev-stack.env"
        assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600  # it holds keys
        printed = log_path.read_text()
        for line in (f"{base}/api/v1", f"ws://127.0.0.1:{port}/connection/websocket", "PostgreSQL", str(stack_file)):
            assert line in printed
        assert re.search(r"lounges: applied \d+ migration\(s\)", printed) and "already complete" not in printed
        status, output = await python("-m", "server", "migrate", env=shell)  # beside the stack: its database
        assert status == 0 and "the database is up to date" in output, output

        # The first admin, with the README's own command.
        status, output = await readme_command("create-admin", shell)
        assert status == 0, output
        admin_email, admin_password = re.findall(
            r"LOUNGES_ADMIN_PASSWORD='([^']+)' .* create-admin --email (\S+)", (ROOT / "README.md").read_text()
        )[0][::-1]
        outbox = data_dir / "outbox"

        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as http,
            async_playwright() as playwright,
        ):
            admin = await sign_in(http, admin_email, admin_password)
            assert (await http.get("/api/v1/users/me", headers=admin)).json()["role"] == "admin"
            chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            if chromium is None:
                pytest.fail(f"no Chromium to open the mailed links in: {CHROMIUM_HINT}")
            browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = await browser.new_page()

            # Verify an email by clicking the mailed link: it names this server's port.
            password = "a first hour passphrase 1"
            member = await register(http, "Mina", password)
            link = await mailed_link(outbox, member, "verify-email")
            assert link.startswith(f"{base}/verify-email?token="), link
            await page.goto(link)
            await page.click("text=Confirm my email")
            await page.wait_for_selector("text=Your email address is confirmed")
            member_auth = await sign_in(http, member, password)
            assert (await http.get("/api/v1/users/me", headers=member_auth)).json()["email_verified"] is True
            await page.goto(link)  # the link is single-use
            await page.click("text=Confirm my email")
            await page.wait_for_selector("text=This link is invalid, has expired or was already used")

            # Reset the password the same way.
            assert (await http.post("/api/v1/auth/forgot-password", json={"email": member})).status_code == 202
            link = await mailed_link(outbox, member, "reset-password")
            await page.goto(link)
            new_password = "a second hour passphrase 2"
            await page.fill("#password", new_password)
            await page.fill("#confirm", "not the same")
            await page.click("text=Set the new password")
            await page.wait_for_selector("text=The two passwords differ")
            await page.fill("#password", new_password)
            await page.fill("#confirm", new_password)
            await page.click("text=Set the new password")
            await page.wait_for_selector("text=Your password is changed")
            await browser.close()
            assert (
                await http.post("/api/v1/auth/login", json={"email": member, "password": password})
            ).status_code == 401
            member_auth = await sign_in(http, member, new_password)

            # Become a mentor and open a lounge (README: "The mentor journey").
            mentor = await register(http, "Theo", password)
            token = (await mailed_link(outbox, mentor, "verify-email")).split("token=")[1]
            assert (await http.post("/api/v1/auth/verify-email", json={"token": token})).status_code == 200
            mentor_auth = await sign_in(http, mentor, password)
            [category, *_] = (await http.get("/api/v1/categories")).json()["items"]
            applied = await http.post(
                "/api/v1/mentors/apply",
                headers=mentor_auth,
                json={"headline": "Habits coach", "bio": "Ten years of coaching.", "category_ids": [category["id"]]},
            )
            assert applied.status_code == 201 and applied.json()["status"] == "pending", applied.text
            pending = (await http.get("/api/v1/admin/mentors/pending", headers=admin)).json()
            [application] = [a for a in pending["items"] if a["user_id"] == applied.json()["user_id"]]
            approved = await http.post(f"/api/v1/admin/mentors/{application['id']}/approve", headers=admin)
            assert approved.status_code == 200, approved.text
            mentor_auth = await sign_in(http, mentor, password)  # a token with the new role
            lounge = await http.post(
                "/api/v1/lounges",
                headers=mentor_auth,
                json={"title": "Morning habits", "category_id": category["id"], "access": "public"},
            )
            assert lounge.status_code == 201, lounge.text
            joined = await http.post(f"/api/v1/lounges/{lounge.json()['id']}/join", headers=member_auth)
            assert joined.status_code == 200 and joined.json()["status"] == "active", joined.text
            channel = lounge.json()["channel"]

        # Connect with both SDKs and chat in the lounge: the mentor on centrifuge-python,
        # the member on centrifuge-js.
        ws_url = f"ws://127.0.0.1:{port}/connection/websocket"
        client, _ = sdk_client(ws_url, mentor_auth["Authorization"].removeprefix("Bearer "))
        await client.connect()
        sub, seen = subscription(client, channel)
        await sub.subscribe()
        await sub.ready(timeout=10)

        async def mentor_answers() -> None:
            await sub.publish({"text": "Welcome!", "client_id": uuid.uuid4().hex})

        try:
            member_token = member_auth["Authorization"].removeprefix("Bearer ")
            returncode, lines, stderr = await run_smoke(ws_url, member_token, channel, mentor_answers)
            summary: dict[str, Any] = lines[-1]
            assert returncode == 0 and summary["errors"] == [], f"{json.dumps(summary)[:2000]}\n{stderr}"
            texts = [p["data"]["message"]["text"] for p in summary["publications"] if p["offset"]]
            assert texts == ["hello from centrifuge-js", "Welcome!"]
            await seen.wait_for(lambda r: r.stored == [1, 2])  # the same messages, in the same order
            assert [d["message"]["text"] for _, d in seen.publications if d["type"] == "message"] == texts
        finally:
            await client.disconnect()

        launcher.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.to_thread(launcher.wait, 60) == 0
        assert not stack_file.exists()  # a stopped stack leaves no settings behind
        status, output = await python("-m", "server", "create-admin", "--email", member, env=shell)
        assert status != 0 and "DATABASE_URL must be set" in output
    finally:
        if launcher.poll() is None:  # failed midway: the embedded PostgreSQL (pg_ctl's daemon) outlives a kill
            launcher.kill()
            launcher.wait()
            stop_postgres(data_dir / "postgres")
