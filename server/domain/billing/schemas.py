"""Request and response bodies of the billing endpoints, and the Stripe event envelope."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

PlanCode = Annotated[str, msgspec.Meta(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]


class PlanOut(msgspec.Struct):
    id: uuid.UUID
    code: str
    name: str
    interval: str
    amount_cents: int
    currency: str
    ai_tokens_per_month: int
    paid_lounge_access: bool
    max_lounges: int
    # False for the free plan and for plans without a Stripe price yet.
    purchasable: bool


class PlanList(msgspec.Struct):
    """The active plans, cheapest first: one short list, so ``next_cursor`` is always null."""

    items: list[PlanOut]
    next_cursor: str | None


class CheckoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    plan: PlanCode


class CheckoutOut(msgspec.Struct):
    """Send the payer to ``url`` (Stripe Checkout); the subscription starts when Stripe says so."""

    session_id: str
    url: str


class SubscriptionOut(msgspec.Struct):
    id: uuid.UUID
    plan: PlanOut
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    # Whether it grants its plan now (active, trialing or past_due, and not past a cancelled period's end).
    entitled: bool


class EntitlementsOut(msgspec.Struct):
    """What the caller may do now: the free tier merged with their entitling plans."""

    plans: list[str]
    paid_lounge_access: bool
    ai_tokens_per_month: int
    ai_tokens_used: int
    # Open (not archived) lounges a mentor may run; enforced only while billing is configured.
    max_lounges: int
    lounges_running: int


class SubscriptionState(msgspec.Struct):
    """The caller's current subscription (``null`` without one) and entitlements."""

    subscription: SubscriptionOut | None
    entitlements: EntitlementsOut


class InvoiceOut(msgspec.Struct):
    id: uuid.UUID
    stripe_invoice_id: str | None
    status: str
    amount_cents: int
    currency: str
    # Stripe's hosted invoice page (pay a failed invoice, download a receipt).
    hosted_invoice_url: str | None
    plan_code: str | None
    created_at: datetime


class InvoicePage(msgspec.Struct):
    """Your payments, newest first; pass ``next_cursor`` as ``cursor`` for the next page (null at the end)."""

    items: list[InvoiceOut]
    next_cursor: str | None


class WebhookAck(msgspec.Struct):
    received: bool
    # True when this event id was already received (acknowledged, not processed again).
    duplicate: bool


class EventData(msgspec.Struct):
    object: dict[str, Any]


class StripeEventIn(msgspec.Struct):
    """The part of a Stripe event (API object ``event``) billing reads."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    created: int
    data: EventData
    object: str = "event"
    livemode: bool = False
