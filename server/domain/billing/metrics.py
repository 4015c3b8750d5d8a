"""Billing's Prometheus series: Stripe webhook events received and processed, and how late.

The ``type`` label is one of the event types billing handles, else ``other`` (or
``unknown`` before the event could be read): never an event, customer or user id.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from server.foundation import metrics

HANDLED_TYPES = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)

WEBHOOK_EVENTS = Counter(
    "lounges_billing_webhook_events_total",
    "Stripe webhook deliveries, by event type and outcome (stored, duplicate, invalid_signature, invalid_event, "
    "billing_not_configured)",
    ["type", "outcome"],
)
EVENTS_PROCESSED = Counter(
    "lounges_billing_events_processed_total",
    "Stored Stripe events the worker took up, by type and outcome (applied, ignored, already_processed, "
    "unknown_event, not_processable, failed)",
    ["type", "outcome"],
)
PROCESSING_LAG_SECONDS = Histogram(
    "lounges_billing_event_lag_seconds",
    "From a Stripe event's creation (its `created`) to its processing here, by type",
    ["type"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
)

RECEIVED = ("stored", "duplicate", "invalid_signature", "invalid_event", "billing_not_configured")
PROCESSED = ("applied", "ignored", "already_processed", "unknown_event", "not_processable", "failed")


def event_type(kind: str | None) -> str:
    return "unknown" if kind is None else metrics.bounded(kind, HANDLED_TYPES)


def received(kind: str | None, outcome: str) -> None:
    if metrics.collecting:
        WEBHOOK_EVENTS.labels(event_type(kind), metrics.bounded(outcome, RECEIVED)).inc()


def processed(kind: str | None, outcome: str, lag: float | None = None) -> None:
    if metrics.collecting:
        label = event_type(kind)
        EVENTS_PROCESSED.labels(label, metrics.bounded(outcome, PROCESSED)).inc()
        if lag is not None:
            PROCESSING_LAG_SECONDS.labels(label).observe(max(lag, 0.0))
