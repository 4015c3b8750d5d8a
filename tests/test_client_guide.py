"""docs/clients.md's JavaScript and Python programs run as written, against a real server.

The guide marks its runnable blocks ``<!-- snippet: js-… -->`` and ``<!-- snippet: py-… -->``;
each language's blocks, joined in order, make one program that signs in over REST,
connects with token refresh, subscribes to a thread with recovery, sends a message,
follows the coach's streamed reply, goes to the background and comes back while it
streams, and marks the thread read. Real parts: a web process (``python -m server serve``)
whose access tokens last 2 s (so the program's token callback must refresh the
connection), an arq worker streaming the offline coach, the npm ``centrifuge`` of
tests/js under Node and centrifuge-python, in JSON and in Protobuf. The background gap is
filled by recovery on one node, and on another (``RECOVERY_MAX_PUBLICATIONS=1``, the test
posting two messages meanwhile) by the program's REST reload. The user is invited to a
lounge while connected: the personal channel must deliver the notification. The worker is
paused (SIGSTOP) from the start of a run until that notification is printed, so the program
cannot reach the coach's reply, and go to the background, before the notification could come.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.foundation.settings import Settings
from tests.support.accounts import PASSWORD, Account
from tests.support.community import Community
from tests.support.js_sdk import JS_DIR, js_dir_lock, tool
from tests.support.nodes import ROOT, WebNode, WorkerProcess

GUIDE = ROOT / "docs" / "clients.md"
SNIPPET = re.compile(r"<!-- snippet: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```\n", re.S | re.M)
EXPECTED = {
    "js": ["js-setup", "js-connect", "js-personal", "js-subscribe", "js-coach", "js-publish", "js-walkthrough"],
    "py": ["py-setup", "py-connect", "py-room", "py-walkthrough"],
}
# The guide's placeholders, replaced by the test's server, user and thread.
API_PLACEHOLDER = "http://127.0.0.1:8000"
EMAIL_PLACEHOLDER = "ada@example.com"
PASSWORD_PLACEHOLDER = "correct horse battery staple"
CHANNEL_PLACEHOLDER = re.compile(r"thread:2b7d1c44-0e9a-4f3b-8c61-5d2e9a7f1b30")
RUN_TIMEOUT = 90.0
ENV = {
    "ACCESS_TOKEN_TTL": "2",
    "AI_PROVIDERS": "offline",
    "AI_OFFLINE_WORDS_PER_SECOND": "15",  # ~7 s of streaming: still going after the 2 s away
    "EMBEDDINGS_PROVIDER": "hashing",
    "DRAIN_SECONDS": "0",
}


def snippets() -> dict[str, list[tuple[str, str]]]:
    """The guide's marked blocks per language prefix: (name, code) in document order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for match in SNIPPET.finditer(GUIDE.read_text()):
        prefix = match["name"].split("-", 1)[0]
        found.setdefault(prefix, []).append((match["name"], match["code"]))
    return found


def program(language: str, *, api: str, email: str, channel: str, protobuf: bool) -> str:
    """One language's blocks joined, with the placeholders and the encoding switch replaced."""
    blocks = snippets()[language]
    assert [name for name, _ in blocks] == EXPECTED[language], "the guide's snippet markers changed"
    source = "\n".join(code for _, code in blocks)
    for placeholder in (API_PLACEHOLDER, EMAIL_PLACEHOLDER, PASSWORD_PLACEHOLDER):
        assert placeholder in source, f"placeholder {placeholder!r} missing from the {language} program"
    assert CHANNEL_PLACEHOLDER.search(source), f"the thread placeholder is missing from the {language} program"
    source = source.replace(API_PLACEHOLDER, api).replace(EMAIL_PLACEHOLDER, email)
    source = source.replace(PASSWORD_PLACEHOLDER, PASSWORD)
    source = CHANNEL_PLACEHOLDER.sub(channel, source)
    if protobuf:
        switches = {
            "js": [
                (
                    'import { Centrifuge, UnauthorizedError } from "centrifuge";',
                    'import { Centrifuge, UnauthorizedError } from "centrifuge/build/protobuf";',
                ),
                ("const PROTOBUF = false;", "const PROTOBUF = true;"),
            ],
            "py": [("PROTOBUF = False", "PROTOBUF = True")],
        }[language]
        for old, new in switches:
            assert source.count(old) == 1, f"{old!r} should appear once in the {language} program"
            source = source.replace(old, new)
    return source


@dataclass
class Stack:
    recovering: WebNode  # the default recovery window
    reloading: WebNode  # RECOVERY_MAX_PUBLICATIONS=1: two missed publications force the REST reload
    worker: WorkerProcess


@pytest.fixture(scope="module")
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    recovering, reloading, worker = await asyncio.gather(
        WebNode(settings, **ENV).start(),
        WebNode(settings, RECOVERY_MAX_PUBLICATIONS="1", **ENV).start(),
        WorkerProcess(settings, **ENV).start(),
    )
    yield Stack(recovering, reloading, worker)
    await asyncio.gather(worker.stop(), recovering.stop(), reloading.stop())


@dataclass
class Run:
    returncode: int
    lines: list[str]
    stderr: str

    def has(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines)

    def __str__(self) -> str:
        return "\n".join(self.lines) + f"\n-- exit {self.returncode}; stderr:\n{self.stderr}"


async def run(command: list[str], cwd: Path, on_line) -> Run:
    """Run a program, calling ``on_line`` for each line it prints (to act on its progress)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_task = asyncio.create_task(process.stderr.read())
    lines: list[str] = []
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            while line := await process.stdout.readline():
                lines.append(line.decode().rstrip("\n"))
                await on_line(lines[-1])
            returncode = await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{command[0]} did not finish within {RUN_TIMEOUT:.0f}s; output so far:\n" + "\n".join(lines))
    finally:
        stderr = (await stderr_task).decode()
    return Run(returncode, lines, stderr)


async def run_program(language: str, source: str, on_line) -> Run:
    with tempfile.TemporaryDirectory(prefix="lounges-guide-") as tmp:
        directory = Path(tmp)
        if language == "js":
            # Resolve "centrifuge" (and "ws") from tests/js; Node 20 has no global WebSocket.
            (directory / "node_modules").symlink_to(JS_DIR / "node_modules")
            path = directory / "guide.mjs"
            path.write_text('import WebSocket from "ws";\nglobalThis.WebSocket ??= WebSocket;\n' + source)
            with js_dir_lock():
                return await run([tool("node"), str(path)], directory, on_line)
        path = directory / "guide.py"
        path.write_text(source)
        return await run([sys.executable, str(path)], directory, on_line)


@pytest.mark.parametrize(
    ("language", "protobuf", "reload"),
    [
        pytest.param("js", False, False, id="js-json-recovery"),
        pytest.param("js", True, True, id="js-protobuf-rest-reload"),
        pytest.param("py", False, True, id="py-json-rest-reload"),
        pytest.param("py", True, False, id="py-protobuf-recovery"),
    ],
)
async def test_the_guide_program_runs_a_session(
    request: pytest.FixtureRequest,
    stack: Stack,
    community: Community,
    language: str,
    protobuf: bool,
    reload: bool,
) -> None:
    if language == "js":
        request.getfixturevalue("js_sdk")  # npm ci in tests/js, once per session
    node = stack.reloading if reload else stack.recovering
    user = await community.user("ada.guide@example.com")
    response = await community.client.post("/api/v1/chat/threads", json={"title": "Pacing"}, headers=user.headers)
    assert response.status_code == 201, response.text
    thread = response.json()
    mentor = await community.mentor("grace.guide@example.com")
    lounge = await community.lounge(mentor, title="Morning runs")

    async def invite(account: Account) -> None:
        invited = await community.client.post(
            f"/api/v1/lounges/{lounge['id']}/members", json={"user_id": account.id}, headers=mentor.headers
        )
        assert invited.status_code in (200, 201), invited.text

    acted: set[str] = set()
    assert stack.worker.process is not None
    worker_pid = stack.worker.process.pid

    def resume_worker() -> None:
        if "resumed" not in acted:
            acted.add("resumed")
            os.kill(worker_pid, signal.SIGCONT)

    async def on_line(line: str) -> None:
        if line.startswith("subscribed to thread:") and "invited" not in acted:
            acted.add("invited")
            await invite(user)
        if line.startswith("notification lounge.invite"):
            resume_worker()
        if line == "going to the background" and reload and "posted" not in acted:
            acted.add("posted")
            for text in ("Also: what about hills?", "And the last kilometre?"):
                posted = await community.post(user, f"/api/v1/chat/threads/{thread['id']}", text)
                assert posted.status_code == 201, posted.text

    source = program(language, api=node.url, email=user.email, channel=thread["channel"], protobuf=protobuf)
    os.kill(
        worker_pid, signal.SIGSTOP
    )  # until the notification is printed (or 15 s, then the assert says what is missing)
    watchdog = asyncio.get_running_loop().call_later(15, resume_worker)
    try:
        result = await run_program(language, source, on_line)
    finally:
        watchdog.cancel()
        resume_worker()
    print(f"\n{language} guide program ({'protobuf' if protobuf else 'json'}):\n{result}")
    assert result.returncode == 0, str(result)

    def subscribed(recovering: str, recovered: str) -> str:  # JavaScript prints false, Python False
        return rf"^subscribed to {thread['channel']} \(recovering: (?i:{recovering}), recovered: (?i:{recovered})\)$"

    expected = [
        r"^connected \(client \w+\)$",
        rf"^server-side subscription: user#{user.id}$",
        subscribed("false", "false"),
        r"^#1 Test User: How do I keep a steady pace on long runs\?$",
        r"^notification lounge\.invite: You are invited to Morning runs \(1 unread\)$",
        r"^access token refreshed$",
        r"^the coach is answering #1$",
        r"^going to the background$",
        r"^back in the foreground$",
        # The recovery window decides; the test posted two messages on the reloading node.
        subscribed("true", "false") if reload else subscribed("true", "true"),
        # Back before the reply ended: the subscribe is followed by its ai.snapshot.
        r"^resuming the coach's reply to #1 after delta \d+$",
        r"^coach: \(Offline coach — ",
        r"^read up to \d+, \d+ unread$",
    ]
    if reload:
        expected.append(r"^reloaded over REST up to offset \d+$")
    missing = [pattern for pattern in expected if not result.has(pattern)]
    assert not missing, f"missing {missing} in the output:\n{result}"
    assert reload or not result.has(r"^reloaded over REST"), str(result)


def test_the_guide_marks_every_runnable_block() -> None:
    """Every js/py fence of the JavaScript and Python sections is marked (an unmarked block
    would be shown to readers but never run), and the markers name known blocks."""
    text = GUIDE.read_text()
    found = snippets()
    assert {prefix: [name for name, _ in blocks] for prefix, blocks in found.items()} == EXPECTED
    sections = re.split(r"^## ", text, flags=re.M)
    for section in sections:
        if section.startswith(("5. JavaScript", "6. Python")):
            fences = re.findall(r"(<!-- snippet: [\w-]+ -->\n)?```(js|python)\n", section)
            assert fences and all(marker for marker, _ in fences), f"unmarked code block in §{section[:14]}"
