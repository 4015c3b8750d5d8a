"""Stripe through the official SDK, asynchronously: nothing here blocks the event loop.

Each use opens a :class:`stripe.StripeClient` whose HTTP client is the SDK's
``HTTPXClient`` with synchronous methods disabled (a blocking call would raise
instead of stalling the loop), pointed at ``STRIPE_API_BASE`` through
``base_addresses={"api": ...}``; it is closed when the block ends. Only
``*_async`` methods are called. The SDK retries network failures
(``STRIPE_MAX_NETWORK_RETRIES``) with the same ``Idempotency-Key``, so a retried
POST never acts twice.

Webhook signatures are checked with the SDK's own ``WebhookSignature.verify_header``
against the raw request body (:func:`verify_webhook`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import stripe

from server.foundation.errors import BadRequest, Unavailable
from server.foundation.settings import Settings


class BillingNotConfigured(Unavailable):
    """No Stripe key: billing is switched off; the calls that need Stripe answer 503."""

    code, title = "billing_not_configured", "Billing is not configured"


class PaymentProviderError(Unavailable):
    """Stripe could not be reached or refused the request."""

    code, title = "payment_provider_error", "Payment provider error"


class InvalidSignature(BadRequest):
    """A webhook whose Stripe-Signature does not verify (or is too old)."""

    code, title = "invalid_signature", "Invalid webhook signature"


def check_configured(settings: Settings) -> str:
    if not settings.stripe_secret_key:
        raise BillingNotConfigured("billing is not configured (STRIPE_SECRET_KEY is not set)")
    return settings.stripe_secret_key


@asynccontextmanager
async def stripe_client(settings: Settings) -> AsyncIterator[stripe.StripeClient]:
    """An SDK client for one action; Stripe's errors become a 503 ``payment_provider_error``."""
    api_key = check_configured(settings)
    http = stripe.HTTPXClient(timeout=settings.stripe_timeout, allow_sync_methods=False)
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": settings.stripe_api_base.rstrip("/")},
        http_client=http,
        max_network_retries=settings.stripe_max_network_retries,
    )
    try:
        yield client
    except stripe.StripeError as exc:
        raise PaymentProviderError(
            f"the payment provider did not complete the request ({type(exc).__name__}: {exc.user_message or exc})"
        ) from exc
    finally:
        await http.close_async()


def verify_webhook(settings: Settings, payload: bytes, signature: str | None) -> None:
    """Raise :class:`InvalidSignature` unless ``payload`` carries a valid, recent signature."""
    check_configured(settings)
    if not settings.stripe_webhook_secret:
        raise BillingNotConfigured("the billing webhook is not configured (STRIPE_WEBHOOK_SECRET is not set)")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, settings.stripe_webhook_secret, settings.stripe_webhook_tolerance
        )
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(str(exc).split(". ")[0]) from None
    except UnicodeDecodeError:
        raise InvalidSignature("the body is not UTF-8") from None
