"""Billing tables: plans, Stripe customers, subscriptions, payments and webhook events."""

from __future__ import annotations

import enum

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.constraints import Check
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.foundation.db_columns import in_choices


class PlanInterval(enum.StrEnum):
    """Billing period of a plan."""

    month = "month"
    year = "year"


class SubscriptionStatus(enum.StrEnum):
    """Stripe's subscription statuses."""

    incomplete = "incomplete"
    incomplete_expired = "incomplete_expired"
    trialing = "trialing"
    active = "active"
    past_due = "past_due"
    canceled = "canceled"
    unpaid = "unpaid"
    paused = "paused"


class PaymentProvider(enum.StrEnum):
    """Payment processors."""

    stripe = "stripe"


class PaymentStatus(enum.StrEnum):
    """State of a payment (a Stripe invoice)."""

    pending = "pending"
    paid = "paid"
    failed = "failed"
    refunded = "refunded"


class Plan(Table, tablename="plans"):
    """A purchasable plan and the entitlements it grants."""

    id = UUID(primary_key=True)
    code = Varchar(length=50, unique=True)
    name = Varchar(length=100)
    stripe_price_id = Varchar(length=255, null=True, default=None, unique=True)
    interval = Varchar(length=8, default=PlanInterval.month, choices=PlanInterval)
    amount_cents = Integer(default=0)
    currency = Varchar(length=3, default="usd")
    ai_tokens_per_month = BigInt(default=0)
    paid_lounge_access = Boolean(default=False)
    max_lounges = Integer(default=0)
    active = Boolean(default=True)
    created_at = Timestamptz()

    plans_interval_check = Check(in_choices("interval", PlanInterval))
    plans_amount_cents_check = Check('"amount_cents" >= 0')


class BillingCustomer(Table, tablename="billing_customers"):
    """Maps a user to their Stripe customer."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=True, unique=True, on_delete=OnDelete.set_null)
    stripe_customer_id = Varchar(length=255, unique=True)
    created_at = Timestamptz()


class Subscription(Table, tablename="subscriptions"):
    """A user's Stripe subscription to a plan, as last reported by Stripe."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=True, on_delete=OnDelete.set_null)
    plan = ForeignKey(Plan, null=False, on_delete=OnDelete.restrict, index=True)
    stripe_subscription_id = Varchar(length=255, unique=True)
    stripe_customer_id = Varchar(length=255, index=True)
    status = Varchar(length=32, default=SubscriptionStatus.incomplete, choices=SubscriptionStatus)
    current_period_start = Timestamptz(null=True, default=None)
    current_period_end = Timestamptz(null=True, default=None)
    cancel_at_period_end = Boolean(default=False)
    canceled_at = Timestamptz(null=True, default=None)
    stripe_updated_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)

    subscriptions_status_check = Check(in_choices("status", SubscriptionStatus))


class Payment(Table, tablename="payments"):
    """A payment for a subscription period (a Stripe invoice)."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=True, on_delete=OnDelete.set_null)
    subscription = ForeignKey(Subscription, null=True, on_delete=OnDelete.set_null, index=True)
    provider = Varchar(length=16, default=PaymentProvider.stripe, choices=PaymentProvider)
    stripe_invoice_id = Varchar(length=255, null=True, default=None, unique=True)
    amount_cents = Integer(default=0)
    currency = Varchar(length=3, default="usd")
    status = Varchar(length=16, default=PaymentStatus.pending, choices=PaymentStatus)
    hosted_invoice_url = Text(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)

    payments_provider_check = Check(in_choices("provider", PaymentProvider))
    payments_status_check = Check(in_choices("status", PaymentStatus))


class StripeEvent(Table, tablename="stripe_events"):
    """A received Stripe webhook event; ``event_id`` makes processing idempotent."""

    id = UUID(primary_key=True)
    event_id = Varchar(length=255, unique=True)
    type = Varchar(length=100)
    stripe_created = Timestamptz(default=None)
    payload = JSONB(default={})
    received_at = Timestamptz()
    processed_at = Timestamptz(null=True, default=None)
    attempts = Integer(default=0)
    last_error = Text(null=True, default=None)
