"""Outgoing mail: composed by services, queued to the worker, delivered by SMTP.

Without ``SMTP_HOST`` a message is written to ``MAIL_OUTBOX_DIR`` as an
``.eml`` file and logged, so development and demos need no mail server.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import aiosmtplib
import msgspec
from arq.connections import ArqRedis

from server.foundation.settings import Settings

log = logging.getLogger("lounges.mail")


class Mail(msgspec.Struct, frozen=True):
    """One message to one recipient."""

    to: str
    subject: str
    text: str
    html: str | None = None


def compose(settings: Settings, mail: Mail) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="lounges.local")
    message.set_content(mail.text)
    if mail.html:
        message.add_alternative(mail.html, subtype="html")
    return message


async def deliver(settings: Settings, mail: Mail) -> str:
    """Send ``mail`` now; returns where it went (``smtp`` or the outbox file)."""
    message = compose(settings, mail)
    if settings.smtp_host:
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout,
        )
        log.info("mail sent", extra={"to": mail.to, "subject": mail.subject})
        return "smtp"
    path = Path(settings.mail_outbox_dir) / f"{uuid.uuid4().hex}.eml"
    await asyncio.to_thread(_write_outbox, path, message.as_bytes())
    log.info("mail written to outbox", extra={"to": mail.to, "subject": mail.subject, "path": str(path)})
    return str(path)


def _write_outbox(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # readers never see a half-written file


async def queue_mail(redis: ArqRedis, mail: Mail) -> None:
    """Hand ``mail`` to the worker's ``send_email`` job."""
    await redis.enqueue_job("send_email", msgspec.to_builtins(mail))
