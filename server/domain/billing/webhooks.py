"""Stripe webhook events: verified, stored once, processed by the worker in order-proof steps.

Receiving (``POST /api/v1/billing/webhook``, :func:`do_receive_event`):

1. the ``Stripe-Signature`` header is checked by the official SDK against the raw
   body and ``STRIPE_WEBHOOK_SECRET`` (timestamped HMAC-SHA256, at most
   ``STRIPE_WEBHOOK_TOLERANCE`` seconds old): otherwise 400 ``invalid_signature``
   and nothing is stored;
2. the event is stored once by its id (``stripe_events.event_id`` is unique); a
   duplicate delivery is acknowledged (``duplicate: true``) and not processed again;
3. after the commit the arq job ``process_stripe_event`` is queued with the job id
   ``stripe:<event id>`` (:func:`job_id`): while that job is queued, running or its
   result is kept, arq refuses a second one with the same id, so redeliveries do not
   queue it twice; a redelivery of an event whose processing failed queues it again
   (``stripe:<event id>:<attempts>``), as does the periodic :func:`sweep`.

Processing (:func:`process_event`, in one transaction, the event row locked, its
``processed_at`` set at the end — so each event takes effect exactly once; events of
one Stripe customer are applied one at a time under a transaction advisory lock):

- ``checkout.session.completed``: links the Stripe customer to the user
  (``client_reference_id``) if that was not known yet;
- ``customer.subscription.created/updated/deleted``: upserts the subscription by
  its Stripe id **from the event's object**, never from the order of arrival. The
  version is the event's ``created`` (stored as ``stripe_updated_at``): an older
  version than the stored one is ignored; on the same second a ``created`` event
  never overrides; ``canceled``/``incomplete_expired`` are final (a late
  ``updated`` cannot revive a deleted subscription) — so ``updated`` before
  ``created`` ends with the ``updated`` state. Afterwards the user's paid-lounge
  access is re-checked (:func:`~server.domain.billing.entitlements.revoke_paid_lounge_access`);
- ``invoice.paid`` / ``invoice.payment_failed``: upserts the payment by invoice id;
  ``paid`` is final (a late failure report never undoes it); the user is notified
  (``payment.succeeded`` once per invoice, ``payment.failed`` per failed attempt);
- any other type is stored and marked processed with no effect.

After the commit: notifications are delivered (pushed to ``user#<id>``, mailed per
preferences) and lost paid-lounge channels are announced (``channel.access_lost``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec

from server.domain.billing import metrics
from server.domain.billing.entitlements import (
    ENTITLING_SQL,
    ENTITLING_STATUSES,
    announce_access_lost,
    revoke_paid_lounge_access,
)
from server.domain.billing.schemas import StripeEventIn, WebhookAck
from server.domain.billing.stripe_client import verify_webhook
from server.domain.notifications.services import notify_on_commit
from server.domain.tables.accounts import User
from server.domain.tables.billing import (
    BillingCustomer,
    Payment,
    PaymentStatus,
    Plan,
    StripeEvent,
    Subscription,
    SubscriptionStatus,
)
from server.domain.tables.lounges import LoungeMembership
from server.foundation.errors import AppError, BadRequest
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

log = logging.getLogger("lounges.billing")

PROCESS_JOB = "process_stripe_event"
FINAL_STATUSES: tuple[str, ...] = (SubscriptionStatus.canceled, SubscriptionStatus.incomplete_expired)
HANDLED_TYPES = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


class EventNotProcessable(Exception):
    """The event cannot be applied as it stands (e.g. a price no plan has): retrying will not help.

    The event stays stored, unprocessed, with ``last_error``; the sweep tries it again
    (up to the job's max tries) and a redelivery (Stripe's dashboard "Resend") after
    fixing the cause processes it.
    """


def job_id(event_id: str, attempts: int = 0) -> str:
    """``stripe:<event id>`` for the first run. arq keeps a finished job's result (``keep_result``)
    and refuses a new job with the same id meanwhile, so a redelivery or sweep after failed
    attempts uses ``stripe:<event id>:<attempts>``: duplicates of one attempt still collapse
    into one job, and a run racing another finds the event locked, then processed."""
    return f"stripe:{event_id}" if attempts == 0 else f"stripe:{event_id}:{attempts}"


def _ts(seconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _id(value: Any) -> str | None:
    """An expandable Stripe field: the id string, or the expanded object's id."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _json(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, (str, bytes)) else value


# -- receiving -----------------------------------------------------------------------------------


async def do_receive_event(state: AppState, payload: bytes, signature: str | None) -> WebhookAck:
    """Verify, store once, queue. Raises 400 ``invalid_signature`` / ``invalid_event``."""
    try:
        verify_webhook(state.settings, payload, signature)
    except AppError as exc:
        metrics.received(None, exc.code)
        raise
    try:
        event = msgspec.json.decode(payload, type=StripeEventIn)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        metrics.received(None, "invalid_event")
        raise BadRequest(f"not a Stripe event: {exc}", code="invalid_event") from None
    if event.object != "event":
        metrics.received(None, "invalid_event")
        raise BadRequest("not a Stripe event (snapshot events only)", code="invalid_event")
    async with unit_of_work(state.engine):
        inserted = await StripeEvent.raw(
            """
            INSERT INTO stripe_events (id, event_id, type, stripe_created, payload, received_at, attempts)
            VALUES ({}, {}, {}, {}, {}::jsonb, now(), 0)
            ON CONFLICT (event_id) DO NOTHING
            RETURNING id
            """,
            uuid.uuid4(),
            event.id,
            event.type,
            _ts(event.created),
            payload.decode(),
        )
        pending, attempts = bool(inserted), 0
        if not inserted:
            existing = (
                await StripeEvent.select(StripeEvent.processed_at, StripeEvent.attempts)
                .where(StripeEvent.event_id == event.id)
                .first()
            )
            pending = existing is not None and existing["processed_at"] is None
            attempts = existing["attempts"] if existing else 0
        if pending:
            await on_commit(partial(state.redis.enqueue_job, PROCESS_JOB, event.id, _job_id=job_id(event.id, attempts)))
    metrics.received(event.type, "stored" if inserted else "duplicate")
    return WebhookAck(received=True, duplicate=not inserted)


# -- processing ----------------------------------------------------------------------------------


async def process_event(state: AppState, event_id: str) -> str:
    """Apply one stored event exactly once; returns what happened (for the job's result).
    What the handler registers with ``on_commit`` runs once the event's transaction committed."""
    async with unit_of_work(state.engine):
        rows = await StripeEvent.raw(
            "SELECT id, type, payload, processed_at FROM stripe_events WHERE event_id = {} FOR UPDATE", event_id
        )
        if not rows:
            metrics.processed(None, "unknown_event")
            return "unknown event"
        if rows[0]["processed_at"] is not None:
            metrics.processed(rows[0]["type"], "already_processed")
            return "already processed"
        event = msgspec.convert(_json(rows[0]["payload"]), StripeEventIn)
        handler = _HANDLERS.get(event.type)
        customer_id = _id(event.data.object.get("customer"))
        if handler is not None and customer_id is not None:
            # One customer's events are applied one at a time (workers run jobs concurrently):
            # each sees what the others committed, e.g. an invoice finds its subscription.
            await StripeEvent.raw("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))", f"stripe:{customer_id}")
        try:
            outcome = await handler(state, event) if handler else "ignored"
        except Exception as exc:
            metrics.processed(event.type, "not_processable" if isinstance(exc, EventNotProcessable) else "failed")
            raise
        await StripeEvent.raw(
            "UPDATE stripe_events SET processed_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = {}",
            rows[0]["id"],
        )
    metrics.processed(event.type, "applied" if handler else "ignored", lag=time.time() - event.created)
    return f"{event.type}: {outcome}"


async def record_failure(event_id: str, error: str) -> None:
    """Count a failed attempt and keep its error on the event row (outside the failed transaction)."""
    await StripeEvent.raw(
        "UPDATE stripe_events SET attempts = attempts + 1, last_error = {} WHERE event_id = {}", error[:2000], event_id
    )


# -- lookups -------------------------------------------------------------------------------------


async def _user_for_customer(customer_id: str | None) -> uuid.UUID | None:
    if customer_id is None:
        return None
    rows = await BillingCustomer.raw(
        'SELECT "user" FROM billing_customers WHERE stripe_customer_id = {} AND "user" IS NOT NULL', customer_id
    )
    return rows[0]["user"] if rows else None


async def _existing_user(candidate: uuid.UUID | None) -> uuid.UUID | None:
    if candidate is None:
        return None
    rows = await User.raw("SELECT id FROM users WHERE id = {}", candidate)
    return candidate if rows else None


async def _plan_for(obj: dict[str, Any]) -> uuid.UUID:
    """The plan of a subscription object: by its first item's price, else its metadata's plan code."""
    price = _first_item(obj).get("price")
    price_id = _id(price)
    if price_id:
        rows = await Plan.raw("SELECT id FROM plans WHERE stripe_price_id = {}", price_id)
        if rows:
            return rows[0]["id"]
    code = (obj.get("metadata") or {}).get("plan_code")
    if code:
        rows = await Plan.raw("SELECT id FROM plans WHERE code = {}", code)
        if rows:
            return rows[0]["id"]
    raise EventNotProcessable(f"no plan has Stripe price {price_id!r} (metadata plan_code {code!r})")


def _first_item(obj: dict[str, Any]) -> dict[str, Any]:
    items = (obj.get("items") or {}).get("data") or []
    return items[0] if items and isinstance(items[0], dict) else {}


def subscription_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """A Stripe subscription object's state as our columns. Periods sit on the items since
    API version 2025-03-31; older versions (an endpoint pinned to one) carry them on the object."""
    item = _first_item(obj)
    status = obj.get("status")
    if status not in SubscriptionStatus.__members__.values():
        raise EventNotProcessable(f"unknown subscription status {status!r}")
    return {
        "status": status,
        "current_period_start": _ts(item.get("current_period_start", obj.get("current_period_start"))),
        "current_period_end": _ts(item.get("current_period_end", obj.get("current_period_end"))),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "canceled_at": _ts(obj.get("canceled_at")),
    }


def _invoice_subscription(obj: dict[str, Any]) -> str | None:
    """The invoice's subscription: ``parent.subscription_details.subscription`` (API 2025-03-31
    and later), or the top-level ``subscription`` of older versions."""
    details = ((obj.get("parent") or {}).get("subscription_details")) or {}
    return _id(details.get("subscription")) or _id(obj.get("subscription"))


# -- handlers ------------------------------------------------------------------------------------


async def _checkout_completed(state: AppState, event: StripeEventIn) -> str:
    session = event.data.object
    if session.get("mode") != "subscription":
        return "ignored (not a subscription checkout)"
    customer_id = _id(session.get("customer"))
    user_id = await _existing_user(
        _uuid(session.get("client_reference_id")) or _uuid((session.get("metadata") or {}).get("user_id"))
    )
    if customer_id is None or user_id is None:
        return "ignored (no customer or user)"
    await BillingCustomer.raw(
        """INSERT INTO billing_customers (id, "user", stripe_customer_id, created_at)
           VALUES ({}, {}, {}, now()) ON CONFLICT DO NOTHING""",
        uuid.uuid4(),
        user_id,
        customer_id,
    )
    owner = await _user_for_customer(customer_id)
    if owner is not None:
        await Subscription.raw(
            'UPDATE subscriptions SET "user" = {} WHERE stripe_customer_id = {} AND "user" IS NULL', owner, customer_id
        )
    return "customer linked"


async def _subscription_changed(state: AppState, event: StripeEventIn) -> str:
    obj = event.data.object
    stripe_id = _id(obj.get("id"))
    if stripe_id is None:
        raise EventNotProcessable("subscription without id")
    customer_id = _id(obj.get("customer")) or ""
    fields = subscription_fields(obj)
    user_id = await _user_for_customer(customer_id) or await _existing_user(
        _uuid((obj.get("metadata") or {}).get("user_id"))
    )
    plan_id = await _plan_for(obj)
    previous = await Subscription.raw(
        'SELECT id, status, "user" FROM subscriptions WHERE stripe_subscription_id = {} FOR UPDATE', stripe_id
    )
    applied = await Subscription.raw(
        """
        INSERT INTO subscriptions AS s (id, "user", plan, stripe_subscription_id, stripe_customer_id, status,
            current_period_start, current_period_end, cancel_at_period_end, canceled_at, stripe_updated_at,
            created_at, updated_at)
        VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, now(), now())
        ON CONFLICT (stripe_subscription_id) DO UPDATE SET
            "user" = coalesce(s."user", EXCLUDED."user"),
            plan = EXCLUDED.plan,
            stripe_customer_id = EXCLUDED.stripe_customer_id,
            status = EXCLUDED.status,
            current_period_start = EXCLUDED.current_period_start,
            current_period_end = EXCLUDED.current_period_end,
            cancel_at_period_end = EXCLUDED.cancel_at_period_end,
            canceled_at = EXCLUDED.canceled_at,
            stripe_updated_at = EXCLUDED.stripe_updated_at,
            updated_at = now()
        WHERE s.stripe_updated_at IS NULL OR CASE
            WHEN s.status IN ('canceled', 'incomplete_expired') THEN
                EXCLUDED.status IN ('canceled', 'incomplete_expired')
                AND EXCLUDED.stripe_updated_at >= s.stripe_updated_at
            ELSE
                EXCLUDED.status IN ('canceled', 'incomplete_expired')
                OR EXCLUDED.stripe_updated_at > s.stripe_updated_at
                OR (EXCLUDED.stripe_updated_at = s.stripe_updated_at AND NOT {})
            END
        RETURNING s.id, s."user"
        """,
        uuid.uuid4(),
        user_id,
        plan_id,
        stripe_id,
        customer_id,
        fields["status"],
        fields["current_period_start"],
        fields["current_period_end"],
        fields["cancel_at_period_end"],
        fields["canceled_at"],
        _ts(event.created),
        event.type == "customer.subscription.created",
    )
    owner = applied[0]["user"] if applied else (previous[0]["user"] if previous else user_id)
    if applied and not previous:
        # Invoices of this subscription that arrived before it: link them now.
        await Payment.raw(
            """
            UPDATE payments p SET subscription = {}, "user" = coalesce(p."user", {})
            WHERE p.subscription IS NULL AND p.stripe_invoice_id IN (
                SELECT e.payload -> 'data' -> 'object' ->> 'id' FROM stripe_events e
                WHERE e.type LIKE 'invoice.%' AND coalesce(
                    e.payload -> 'data' -> 'object' -> 'parent' -> 'subscription_details' ->> 'subscription',
                    e.payload -> 'data' -> 'object' ->> 'subscription') = {})
            """,
            applied[0]["id"],
            owner,
            stripe_id,
        )
    if owner is not None:
        channels = await revoke_paid_lounge_access(owner)
        was_entitled = bool(previous) and previous[0]["status"] in ENTITLING_STATUSES
        if applied and was_entitled and fields["status"] not in ENTITLING_STATUSES:
            await notify_on_commit(
                state,
                owner,
                kind="subscription.ended",
                title="Your subscription has ended",
                body="Paid lounges are closed to you until you subscribe again; your place in them is kept.",
                data={"subscription_id": str(applied[0]["id"]), "status": fields["status"]},
            )
        if channels:
            await on_commit(partial(announce_access_lost, state, owner, channels, "subscription_ended"))
    if not applied:
        return "stale version ignored"
    return f"{'created' if not previous else 'updated'} ({fields['status']})"


async def _invoice_changed(state: AppState, event: StripeEventIn) -> str:
    invoice = event.data.object
    invoice_id = _id(invoice.get("id"))
    if invoice_id is None:
        raise EventNotProcessable("invoice without id")
    paid = event.type == "invoice.paid"
    status = PaymentStatus.paid if paid else PaymentStatus.failed
    subscription_stripe_id = _invoice_subscription(invoice)
    subscription = (
        await Subscription.raw(
            'SELECT id, "user" FROM subscriptions WHERE stripe_subscription_id = {}', subscription_stripe_id
        )
        if subscription_stripe_id
        else []
    )
    user_id = await _user_for_customer(_id(invoice.get("customer"))) or (
        subscription[0]["user"] if subscription else None
    )
    previous = await Payment.raw("SELECT id, status FROM payments WHERE stripe_invoice_id = {} FOR UPDATE", invoice_id)
    if previous and previous[0]["status"] == PaymentStatus.paid and not paid:
        return "stale failure ignored (already paid)"
    amount = int((invoice.get("amount_paid") if paid else invoice.get("amount_due")) or 0)
    currency = str(invoice.get("currency") or "usd")[:3]
    hosted_url = invoice.get("hosted_invoice_url")
    await Payment.raw(
        """
        INSERT INTO payments AS p (id, "user", subscription, provider, stripe_invoice_id, amount_cents, currency,
            status, hosted_invoice_url, created_at, updated_at)
        VALUES ({}, {}, {}, 'stripe', {}, {}, {}, {}, {}, coalesce({}, now()), now())
        ON CONFLICT (stripe_invoice_id) DO UPDATE SET
            "user" = coalesce(p."user", EXCLUDED."user"),
            subscription = coalesce(p.subscription, EXCLUDED.subscription),
            amount_cents = EXCLUDED.amount_cents,
            currency = EXCLUDED.currency,
            status = EXCLUDED.status,
            hosted_invoice_url = coalesce(EXCLUDED.hosted_invoice_url, p.hosted_invoice_url),
            updated_at = now()
        """,
        uuid.uuid4(),
        user_id,
        subscription[0]["id"] if subscription else None,
        invoice_id,
        amount,
        currency,
        status,
        hosted_url,
        _ts(invoice.get("created")),
    )
    newly_paid = paid and not (previous and previous[0]["status"] == PaymentStatus.paid)
    if user_id is not None and (newly_paid or not paid):
        money = f"{amount / 100:.2f} {currency.upper()}"
        await notify_on_commit(
            state,
            user_id,
            kind="payment.succeeded" if paid else "payment.failed",
            title="Payment received" if paid else "Payment failed",
            body=(
                f"We received {money}. Thank you!"
                if paid
                else f"Your payment of {money} did not go through. Update your payment method "
                "to keep your plan; we will try again."
            ),
            data={
                "invoice_id": invoice_id,
                "amount_cents": amount,
                "currency": currency,
                "hosted_invoice_url": hosted_url,
            },
        )
    return f"payment {status}"


_HANDLERS: dict[str, Callable[[AppState, StripeEventIn], Awaitable[str]]] = {
    "checkout.session.completed": _checkout_completed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.paid": _invoice_changed,
    "invoice.payment_failed": _invoice_changed,
}


# -- the periodic sweep --------------------------------------------------------------------------


async def sweep(state: AppState, *, requeue_after: int = 120, max_attempts: int = 8) -> dict[str, int]:
    """Every few minutes (cron ``billing_sweep``), what no webhook may have triggered in time:

    - events stored over ``requeue_after`` seconds ago, never processed, with attempts
      left, are queued again (a crash between commit and enqueue loses nothing);
    - users whose subscription lapsed without a further event (cancelled at period end,
      ``customer.subscription.deleted`` late or lost) lose their paid-lounge memberships.
      Only users who had a subscription: members of a lounge its mentor later made paid
      are not affected here.
    """
    pending = await StripeEvent.raw(
        """SELECT event_id, attempts FROM stripe_events WHERE processed_at IS NULL AND attempts < {}
           AND received_at < now() - make_interval(secs => {}) ORDER BY received_at LIMIT 500""",
        max_attempts,
        requeue_after,
    )
    for row in pending:
        await state.redis.enqueue_job(PROCESS_JOB, row["event_id"], _job_id=job_id(row["event_id"], row["attempts"]))
    lapsed = await LoungeMembership.raw(
        f"""
        SELECT DISTINCT m."user" FROM lounge_memberships m
        JOIN lounges l ON l.id = m.lounge AND l.access = 'paid'
        JOIN users u ON u.id = m."user" AND u.role <> 'admin'
        WHERE m.status = 'active' AND m.role <> 'mentor'
          AND EXISTS (SELECT 1 FROM subscriptions s WHERE s."user" = m."user")
          AND NOT EXISTS (
              SELECT 1 FROM subscriptions s JOIN plans p ON p.id = s.plan
              WHERE s."user" = m."user" AND p.paid_lounge_access AND {ENTITLING_SQL})
        """
    )
    revoked = 0
    for row in lapsed:
        async with unit_of_work(state.engine):
            channels = await revoke_paid_lounge_access(row["user"])
            if channels:
                await on_commit(partial(announce_access_lost, state, row["user"], channels, "subscription_ended"))
        revoked += len(channels)
    return {"requeued": len(pending), "memberships_revoked": revoked}
