"""The official centrifuge-js SDK (npm ``centrifuge`` 5.x, pinned in tests/js) under Node,
run as ``tests/js/smoke.mjs`` against a real web process.

Needs Node >= 20 and npm on PATH (the tests fail, never skip, without them) and the npm
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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.sdk import Encoding

JS_DIR = Path(__file__).parents[1] / "js"
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


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: the centrifuge-js smoke test needs Node >= {NODE_MIN_MAJOR} and npm")
    return path


def install_js_sdk() -> Path:
    """tests/js with its locked dependencies installed (``npm ci``)."""
    node = tool("node")
    npm = tool("npm")
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


async def run_smoke(
    ws_url: str,
    token: str,
    channel: str,
    when_published: Callable[[], Awaitable[None]],
    *,
    encoding: Encoding = "json",
    when_awaiting_recovery: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """``node smoke.mjs``: exit status, its JSON lines (the last is the summary), stderr.
    ``when_published`` runs once the JS client has seen its own message come back
    (smoke.mjs then waits for one message from someone else). ``encoding``: the SDK's
    JSON or Protobuf build. With ``when_awaiting_recovery``, smoke.mjs then waits to be
    recovered: that callback must cut its connection, publish two messages meanwhile
    and let it reconnect."""
    options = ["--protobuf"] if encoding == "protobuf" else []
    if when_awaiting_recovery is not None:
        options.append("--recovery")
    lines: list[dict[str, Any]] = []
    with js_dir_lock():
        process = await asyncio.create_subprocess_exec(
            tool("node"),
            "smoke.mjs",
            ws_url,
            token,
            channel,
            "20000",
            *options,
            cwd=JS_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert process.stdout is not None and process.stderr is not None
        stderr_task = asyncio.create_task(process.stderr.read())
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                while line := await process.stdout.readline():
                    lines.append(json.loads(line))
                    event = lines[-1].get("event")
                    if event == "published":
                        await when_published()
                    elif event == "awaiting_recovery" and when_awaiting_recovery is not None:
                        await when_awaiting_recovery()
                returncode = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"node smoke.mjs did not finish within {RUN_TIMEOUT:.0f}s; output so far: {lines}")
        finally:
            stderr = (await stderr_task).decode()
    assert lines, f"no output from node smoke.mjs (exit {process.returncode}); stderr:\n{stderr}"
    return returncode, lines, stderr


class JsListener:
    """``node listen.mjs``: a centrifuge-js subscriber of ``channel`` kept running for a
    test (``async with JsListener(...) as listener``), recording what it sees. Its
    stored and ephemeral publications, joins and leaves read like a
    :class:`tests.support.sdk.Recorder`'s; ``summary`` (the wire, errors) is set once
    it has stopped."""

    def __init__(
        self, ws_url: str, token: str, channel: str, *, encoding: Encoding = "protobuf", join_leave: bool = False
    ) -> None:
        self.arguments = [ws_url, token, channel]
        if encoding == "protobuf":
            self.arguments.append("--protobuf")
        if join_leave:
            self.arguments.append("--join-leave")
        self.publications: list[tuple[int, Any]] = []
        self.data_kinds: list[str] = []
        self.joins: list[dict[str, Any]] = []
        self.leaves: list[dict[str, Any]] = []
        self.subscribed: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[bytes] | None = None
        self._lock: ExitStack | None = None

    @property
    def stored(self) -> list[int]:
        return [offset for offset, _ in self.publications if offset]

    async def __aenter__(self) -> JsListener:
        self._lock = ExitStack()
        self._lock.enter_context(js_dir_lock())
        self._process = await asyncio.create_subprocess_exec(
            tool("node"),
            "listen.mjs",
            *self.arguments,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._stderr = asyncio.create_task(self._process.stderr.read())
        self._reader = asyncio.create_task(self._read(self._process.stdout))
        try:
            await self.wait_for(lambda listener: bool(listener.subscribed), timeout=15)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "publication":
                self.publications.append((event["offset"], event["data"]))
                self.data_kinds.append(event["kind"])
            elif kind in ("join", "leave"):
                (self.joins if kind == "join" else self.leaves).append(event["info"])
            elif kind == "subscribed":
                self.subscribed.append(event)
            elif kind == "error":
                self.errors.append(event)
            elif kind == "summary":
                self.summary = event

    async def wait_for(self, predicate: Callable[[JsListener], bool], timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    if self._reader is not None and self._reader.done():
                        raise AssertionError("node listen.mjs ended early")
                    await asyncio.sleep(0.02)
        except (TimeoutError, AssertionError) as exc:
            stderr = await self._stop()
            raise AssertionError(
                f"centrifuge-js listener: {exc or 'timed out'}; errors {self.errors}, stored {self.stored[-10:]}\n"
                f"stderr:\n{stderr}"
            ) from None

    async def _stop(self) -> str:
        """Close its stdin (it disconnects and reports), or kill it after a few seconds; its stderr."""
        process, self._process = self._process, None
        if process is None:
            return ""
        try:
            assert process.stdin is not None
            process.stdin.close()
            async with asyncio.timeout(5):
                await process.wait()
        except (TimeoutError, OSError):
            process.kill()
            await process.wait()
        finally:
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)
            if self._lock is not None:
                self._lock.close()
        return (await self._stderr).decode() if self._stderr is not None else ""

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()
