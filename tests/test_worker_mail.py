"""The worker path end to end: the app queues mail, the arq worker delivers it."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

import msgspec
from litestar import Litestar

from server.foundation.mail import Mail, queue_mail
from server.foundation.settings import Settings
from tests.support.smtp import SmtpSink
from tests.support.worker import run_worker_until_idle
from workers.main import create_worker


async def test_queued_mail_reaches_a_real_smtp_server(app: Litestar, mailbox: SmtpSink, run_jobs) -> None:
    redis = app.state.app_state.redis
    await queue_mail(redis, Mail(to="ada@example.com", subject="Welcome", text="Hello Ada", html="<p>Hello Ada</p>"))
    await run_jobs()
    [message] = await mailbox.wait_for(1)
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome"
    assert message.get_body(("plain",)).get_content().strip() == "Hello Ada"


async def test_without_smtp_mail_goes_to_the_outbox(app: Litestar, settings: Settings) -> None:
    redis = app.state.app_state.redis
    outbox = Path(settings.mail_outbox_dir)
    before = set(outbox.glob("*.eml"))
    await queue_mail(redis, Mail(to="bob@example.com", subject="Outbox", text="Kept locally"))
    await run_worker_until_idle(msgspec.structs.replace(settings, smtp_host=None))
    [written] = set(outbox.glob("*.eml")) - before
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert message["To"] == "bob@example.com"
    assert "Kept locally" in message.get_body(("plain",)).get_content()


async def test_worker_publishes_a_health_key_a_supervisor_can_watch(app: Litestar, settings: Settings) -> None:
    from workers.main import health_check_key

    redis = app.state.app_state.redis
    key = health_check_key(settings)
    worker = create_worker(settings, poll_delay=0.05, handle_signals=False)
    running = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(5):
            while not await redis.exists(key):
                await asyncio.sleep(0.02)
        assert b"j_complete=" in await redis.get(key)
        assert 0 < await redis.pttl(key) <= (settings.worker_health_check_interval + 1) * 1000
    finally:
        running.cancel()
        await worker.close()
    assert not await redis.exists(key), "a stopped worker must not look alive"
