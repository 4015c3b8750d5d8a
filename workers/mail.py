"""Job: deliver one queued mail, retrying transient SMTP failures with backoff."""

from __future__ import annotations

from typing import Any

import aiosmtplib
import msgspec
from arq import Retry

from server.foundation.mail import Mail, deliver
from server.foundation.state import AppState


async def send_email(ctx: dict[str, Any], mail: dict[str, Any]) -> str:
    """Deliver ``mail`` (a :class:`~server.foundation.mail.Mail` as builtins)."""
    state: AppState = ctx["state"]
    try:
        return await deliver(state.settings, msgspec.convert(mail, Mail))
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        tries = ctx.get("job_try", 1)
        raise Retry(defer=min(300, 5 * 2 ** (tries - 1))) from exc
