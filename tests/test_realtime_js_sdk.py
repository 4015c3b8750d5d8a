"""The official centrifuge-js SDK (npm ``centrifuge`` 5.x, pinned in tests/js) under
Node with the ``ws`` package talks to a real web process, next to a Python SDK client.

Needs Node >= 20 and npm on PATH (the test fails, never skips, without them) and the npm
registry for ``npm ci`` (once per test session; the lockfile pins every package).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from server.foundation.settings import Settings
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import sdk_client, subscription

JS_DIR = Path(__file__).parent / "js"
NODE_MIN_MAJOR = 20
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 60.0


@contextmanager
def js_dir_lock() -> Iterator[None]:
    """Serialise ``npm ci`` and runs of tests/js across concurrent test sessions
    (``npm ci`` deletes node_modules before installing)."""
    with open(JS_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: the centrifuge-js smoke test needs Node >= {NODE_MIN_MAJOR} and npm")
    return path


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """tests/js with its locked dependencies installed (``npm ci``, once per session)."""
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < NODE_MIN_MAJOR:
        pytest.fail(f"Node {version} found; the centrifuge-js smoke test needs Node >= {NODE_MIN_MAJOR}")
    with js_dir_lock():
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {JS_DIR} took longer than {INSTALL_TIMEOUT:.0f}s")
    if done.returncode != 0:
        pytest.fail(f"`npm ci` in {JS_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    installed = json.loads((JS_DIR / "node_modules" / "centrifuge" / "package.json").read_text())["version"]
    assert installed.startswith("5."), installed
    return JS_DIR


@pytest.fixture
async def node(app: Any, settings: Settings) -> AsyncIterator[WebNode]:
    web = await WebNode(settings, DRAIN_SECONDS="0").start()
    yield web
    await web.stop()


async def test_centrifuge_js_connects_subscribes_publishes_and_receives(
    js_sdk: Path, node: WebNode, community: Community
) -> None:
    mentor = await community.mentor("js-mentor@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("js-member@example.com")
    assert (await community.join(member, lounge)).status_code == 200
    channel = lounge["channel"]

    python, _ = sdk_client(node.ws_url, mentor.access_token)
    await python.connect()
    await python.ready(timeout=10)
    sub, seen = subscription(python, channel)
    await sub.subscribe()
    await sub.ready(timeout=10)

    lines: list[dict[str, Any]] = []
    stderr = b""
    with js_dir_lock():
        process = await asyncio.create_subprocess_exec(
            _tool("node"),
            "smoke.mjs",
            node.ws_url,
            member.access_token,
            channel,
            "20000",
            cwd=js_sdk,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert process.stdout is not None and process.stderr is not None
        stderr_task = asyncio.create_task(process.stderr.read())
        python_client_id = str(uuid.uuid4())
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                while line := await process.stdout.readline():
                    lines.append(json.loads(line))
                    if lines[-1].get("event") == "published":
                        # The JS client saw its own message: now one from the Python SDK.
                        await sub.publish({"text": "hello from centrifuge-python", "client_id": python_client_id})
                returncode = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"node smoke.mjs did not finish within {RUN_TIMEOUT:.0f}s; output so far: {lines}")
        finally:
            stderr = await stderr_task
            await python.disconnect()

    assert lines, f"no output from node smoke.mjs (exit {process.returncode}); stderr:\n{stderr.decode()}"
    summary = lines[-1]
    print("\ncentrifuge-js summary:", json.dumps(summary)[:2000])
    assert returncode == 0, f"node smoke.mjs exited {returncode}: {summary}\nstderr:\n{stderr.decode()}"
    assert summary["errors"] == [], summary["errors"]
    assert summary["connected"] is True and summary["client"] and summary["transport"] == "websocket"
    assert summary["server_subscriptions"] == [f"user#{member.id}"]
    assert summary["subscribed"] == channel

    stored = [p for p in summary["publications"] if p["offset"]]
    assert [p["offset"] for p in stored] == [1, 2], stored
    mine, theirs = stored[0]["data"], stored[1]["data"]
    assert mine["type"] == "message" and mine["message"]["text"] == "hello from centrifuge-js"
    assert mine["message"]["sender"]["id"] == member.id
    assert theirs["type"] == "message" and theirs["message"]["text"] == "hello from centrifuge-python"
    assert theirs["message"]["client_id"] == python_client_id and theirs["message"]["sender"]["id"] == mentor.id
    assert summary["presence_stats"] == {"num_clients": 2, "num_users": 2}
    assert summary["rpc"] == {"method": "typing", "data": None}

    # The Python SDK saw the JS client's message too, in the same order.
    await seen.wait_for(lambda r: r.stored == [1, 2])
    assert seen.publications[0][1]["message"]["text"] == "hello from centrifuge-js"
