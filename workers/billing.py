"""Job: apply one stored Stripe event (``process_stripe_event``).

Queued by the webhook with the job id ``stripe:<event id>`` (arq keeps one job per
id while it is queued, running, or its result is kept). Processing is idempotent
on its own: the event row is locked and skipped once ``processed_at`` is set.
Transient failures (database, Redis) are retried with backoff up to
``MAX_TRIES``; each failure is counted on the event (``attempts``, ``last_error``).
An event that cannot be applied as it stands (e.g. a price no plan has) is not
retried at once: it stays unprocessed with its error; the ``billing_sweep`` cron
(every five minutes) queues it again until it has had ``MAX_TRIES`` attempts, and a
redelivery (Stripe dashboard "Resend") always does — fix the cause, then resend.
"""

from __future__ import annotations

import logging
from typing import Any

from arq import Retry
from arq.worker import func

from server.domain.billing.webhooks import EventNotProcessable, process_event, record_failure, sweep
from server.foundation.state import AppState

log = logging.getLogger("lounges.billing")

MAX_TRIES = 8


async def _record(event_id: str, error: str) -> None:
    try:
        await record_failure(event_id, error)
    except Exception:
        log.exception("could not record a Stripe event failure", extra={"event_id": event_id})


async def process_stripe_event(ctx: dict[str, Any], event_id: str) -> str:
    state: AppState = ctx["state"]
    try:
        return await process_event(state, event_id)
    except EventNotProcessable as exc:
        await _record(event_id, str(exc))
        log.error("Stripe event not processable", extra={"event_id": event_id, "error": str(exc)})
        return f"not processable: {exc}"
    except Exception as exc:
        await _record(event_id, f"{type(exc).__name__}: {exc}")
        tries = ctx.get("job_try", 1)
        raise Retry(defer=min(600, 5 * 2 ** (tries - 1))) from exc


async def billing_sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: re-queue stranded events, end paid-lounge access of lapsed subscriptions."""
    return await sweep(ctx["state"], max_attempts=MAX_TRIES)


BILLING_FUNCTIONS = [func(process_stripe_event, max_tries=MAX_TRIES)]
