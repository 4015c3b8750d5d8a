"""Billing actions: plans, Stripe Checkout, the caller's subscription and invoices.

Stripe's webhook events (receiving, storing once, processing in the worker) live in
:mod:`server.domain.billing.webhooks`. Without ``STRIPE_SECRET_KEY`` every action here
answers 503 ``billing_not_configured``.

- **Checkout** (verified users): the user's Stripe customer is created once
  (idempotency key ``customer-<user id>``, mapping stored in ``billing_customers``)
  and reused; each attempt creates a subscription-mode Checkout Session with its
  own idempotency key (the SDK's network retries resend the same key), the user id
  as ``client_reference_id`` and in the subscription's metadata.
- **The subscription** shown is the newest one that grants its plan now, else the
  newest one at all; **cancel** asks Stripe to cancel at the period end (access
  stays until then; Stripe's ``customer.subscription.deleted`` ends it).
- **Invoices** are the stored payments (one per Stripe invoice) with Stripe's
  hosted invoice links.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.domain.accounts.services import Principal
from server.domain.billing.entitlements import (
    ENTITLING_SQL,
    FREE_PLAN_CODE,
    ai_tokens_used_this_month,
    limits_for,
    lounges_run_by,
)
from server.domain.billing.schemas import (
    CheckoutOut,
    CheckoutRequest,
    EntitlementsOut,
    InvoiceOut,
    InvoicePage,
    PlanList,
    PlanOut,
    SubscriptionOut,
    SubscriptionState,
)
from server.domain.billing.stripe_client import check_configured, stripe_client
from server.domain.billing.webhooks import subscription_fields
from server.domain.tables.accounts import User
from server.domain.tables.billing import BillingCustomer, Plan, PlanInterval, Subscription
from server.foundation.database import acquire_engine, release_engine
from server.foundation.errors import Conflict, NotFound, ValidationFailed
from server.foundation.pagination import keyset_page
from server.foundation.settings import Settings
from server.foundation.state import AppState
from server.foundation.unit_of_work import unit_of_work

_PLAN_COLUMNS = (
    "id",
    "code",
    "name",
    "interval",
    "amount_cents",
    "currency",
    "ai_tokens_per_month",
    "paid_lounge_access",
    "max_lounges",
    "stripe_price_id",
)


def plan_out(row: dict[str, Any], prefix: str = "") -> PlanOut:
    return PlanOut(
        id=row[f"{prefix}id"],
        code=row[f"{prefix}code"],
        name=row[f"{prefix}name"],
        interval=row[f"{prefix}interval"],
        amount_cents=row[f"{prefix}amount_cents"],
        currency=row[f"{prefix}currency"],
        ai_tokens_per_month=row[f"{prefix}ai_tokens_per_month"],
        paid_lounge_access=row[f"{prefix}paid_lounge_access"],
        max_lounges=row[f"{prefix}max_lounges"],
        purchasable=row[f"{prefix}stripe_price_id"] is not None and row[f"{prefix}code"] != FREE_PLAN_CODE,
    )


# -- plans ---------------------------------------------------------------------------------------


async def list_plans(state: AppState) -> PlanList:
    """Active plans, cheapest first (a handful: one page)."""
    check_configured(state.settings)
    rows = await Plan.select().where(Plan.active.eq(True)).order_by(Plan.amount_cents).order_by(Plan.code)
    return PlanList(items=[plan_out(row) for row in rows], next_cursor=None)


def default_plans(settings: Settings, *, pro_price: str | None, team_price: str | None) -> list[dict[str, Any]]:
    """What ``python -m server seed-plans`` creates. The free plan is the free tier."""
    return [
        {
            "code": FREE_PLAN_CODE,
            "name": "Free",
            "stripe_price_id": None,
            "amount_cents": 0,
            "ai_tokens_per_month": settings.ai_free_monthly_tokens,
            "paid_lounge_access": False,
            "max_lounges": settings.billing_free_max_lounges,
        },
        {
            "code": "pro",
            "name": "Pro",
            "stripe_price_id": pro_price or settings.stripe_price_pro,
            "amount_cents": 1200,
            "ai_tokens_per_month": 2_000_000,
            "paid_lounge_access": True,
            "max_lounges": 5,
        },
        {
            "code": "team",
            "name": "Team",
            "stripe_price_id": team_price or settings.stripe_price_team,
            "amount_cents": 4900,
            "ai_tokens_per_month": 10_000_000,
            "paid_lounge_access": True,
            "max_lounges": 25,
        },
    ]


async def seed_plans(settings: Settings, *, pro_price: str | None = None, team_price: str | None = None) -> list[str]:
    """Create the default plans that do not exist (by ``code``); on existing ones only set a
    Stripe price id that was given and differs — limits edited since are kept. Idempotent."""
    engine = await acquire_engine(settings, (Plan,))
    report: list[str] = []
    try:
        async with engine.transaction():
            for plan in default_plans(settings, pro_price=pro_price, team_price=team_price):
                existing = await Plan.select(Plan.id, Plan.stripe_price_id).where(Plan.code == plan["code"]).first()
                if existing is None:
                    await Plan.insert(Plan(interval=PlanInterval.month, currency="usd", active=True, **plan))
                    report.append(f"plan {plan['code']}: created")
                elif plan["stripe_price_id"] and existing["stripe_price_id"] != plan["stripe_price_id"]:
                    await Plan.update({Plan.stripe_price_id: plan["stripe_price_id"]}).where(Plan.id == existing["id"])
                    report.append(f"plan {plan['code']}: Stripe price set to {plan['stripe_price_id']}")
                else:
                    report.append(f"plan {plan['code']}: unchanged")
    finally:
        await release_engine(engine)
    return report


# -- checkout ------------------------------------------------------------------------------------


async def do_checkout(state: AppState, principal: Principal, data: CheckoutRequest) -> CheckoutOut:
    """Create a Stripe Checkout Session (subscription mode) for ``data.plan``; answer its URL."""
    check_configured(state.settings)
    plan = await Plan.select().where(Plan.code == data.plan, Plan.active.eq(True)).first()
    if plan is None:
        raise NotFound("no such plan", code="plan_not_found")
    if not plan["stripe_price_id"] or plan["code"] == FREE_PLAN_CODE:
        raise ValidationFailed("this plan is not for sale", code="plan_not_purchasable")
    current = await _current_subscription(principal.user_id)
    if current is not None and current["entitled"]:
        raise Conflict(
            "you already have a subscription; cancel it, or wait for its period to end", code="already_subscribed"
        )
    user = await User.select(User.email, User.full_name).where(User.id == principal.user_id).first()
    if user is None:
        raise NotFound("no such user", code="user_not_found")
    metadata = {"user_id": str(principal.user_id), "plan_code": plan["code"]}
    async with stripe_client(state.settings) as stripe:
        customer_id = await _customer_for(state, stripe, principal.user_id, user)
        session = await stripe.v1.checkout.sessions.create_async(
            params={
                "mode": "subscription",
                "customer": customer_id,
                "client_reference_id": str(principal.user_id),
                "line_items": [{"price": plan["stripe_price_id"], "quantity": 1}],
                "success_url": state.settings.billing_success_url,
                "cancel_url": state.settings.billing_cancel_url,
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
            },
            options={"idempotency_key": f"checkout-{principal.user_id}-{uuid.uuid4().hex}"},
        )
    if not session.url:
        raise Conflict("the payment provider gave no checkout page", code="checkout_unavailable")
    return CheckoutOut(session_id=session.id, url=session.url)


async def _customer_for(state: AppState, stripe: Any, user_id: uuid.UUID, user: dict[str, Any]) -> str:
    """The user's Stripe customer id, created once (concurrent first checkouts share it:
    the idempotency key is per user) and remembered in ``billing_customers``."""
    existing = (
        await BillingCustomer.select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user == user_id).first()
    )
    if existing is not None:
        return existing["stripe_customer_id"]
    customer = await stripe.v1.customers.create_async(
        params={"email": user["email"], "name": user["full_name"], "metadata": {"user_id": str(user_id)}},
        options={"idempotency_key": f"customer-{user_id}"},
    )
    async with unit_of_work(state.engine):
        await BillingCustomer.raw(
            """INSERT INTO billing_customers (id, "user", stripe_customer_id, created_at)
               VALUES ({}, {}, {}, now()) ON CONFLICT DO NOTHING""",
            uuid.uuid4(),
            user_id,
            customer.id,
        )
    stored = (
        await BillingCustomer.select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user == user_id).first()
    )
    return stored["stripe_customer_id"] if stored else customer.id


# -- the subscription ----------------------------------------------------------------------------


async def _current_subscription(user_id: uuid.UUID) -> dict[str, Any] | None:
    columns = ", ".join(f'p."{name}" AS plan_{name}' for name in _PLAN_COLUMNS)
    rows = await Subscription.raw(
        f"""
        SELECT s.id, s.stripe_subscription_id, s.status, s.current_period_start, s.current_period_end,
               s.cancel_at_period_end, s.canceled_at, ({ENTITLING_SQL}) AS entitled, {columns}
        FROM subscriptions s JOIN plans p ON p.id = s.plan
        WHERE s."user" = {{}}
        ORDER BY entitled DESC, s.created_at DESC, s.id
        LIMIT 1
        """,
        user_id,
    )
    return rows[0] if rows else None


def _subscription_out(row: dict[str, Any]) -> SubscriptionOut:
    return SubscriptionOut(
        id=row["id"],
        plan=plan_out(row, prefix="plan_"),
        status=row["status"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        cancel_at_period_end=row["cancel_at_period_end"],
        canceled_at=row["canceled_at"],
        entitled=row["entitled"],
    )


async def get_subscription_state(state: AppState, principal: Principal) -> SubscriptionState:
    check_configured(state.settings)
    current = await _current_subscription(principal.user_id)
    limits = await limits_for(state, principal.user_id)
    return SubscriptionState(
        subscription=_subscription_out(current) if current else None,
        entitlements=EntitlementsOut(
            plans=list(limits.plans),
            paid_lounge_access=limits.paid_lounge_access,
            ai_tokens_per_month=limits.ai_tokens_per_month,
            ai_tokens_used=await ai_tokens_used_this_month(principal.user_id),
            max_lounges=limits.max_lounges,
            lounges_running=await lounges_run_by(principal.user_id),
        ),
    )


async def do_cancel_subscription(state: AppState, principal: Principal) -> SubscriptionState:
    """Cancel at the end of the paid period (idempotent: a second call changes nothing).

    The local row takes Stripe's answer at once, without moving its version
    (``stripe_updated_at``): the ``customer.subscription.updated`` event Stripe sends for
    this change stays the ordering authority.
    """
    check_configured(state.settings)
    current = await _current_subscription(principal.user_id)
    if current is None or not current["entitled"]:
        raise NotFound("you have no subscription to cancel", code="no_subscription")
    if not current["cancel_at_period_end"]:
        async with stripe_client(state.settings) as stripe:
            updated = await stripe.v1.subscriptions.update_async(
                current["stripe_subscription_id"],
                params={"cancel_at_period_end": True},
                options={"idempotency_key": f"cancel-{current['stripe_subscription_id']}-{uuid.uuid4().hex}"},
            )
        fields = subscription_fields(updated.to_dict())
        async with unit_of_work(state.engine):
            await Subscription.update(
                {
                    Subscription.status: fields["status"],
                    Subscription.cancel_at_period_end: fields["cancel_at_period_end"],
                    Subscription.canceled_at: fields["canceled_at"],
                    Subscription.current_period_start: fields["current_period_start"],
                    Subscription.current_period_end: fields["current_period_end"],
                }
            ).where(Subscription.id == current["id"])
    return await get_subscription_state(state, principal)


# -- invoices ------------------------------------------------------------------------------------


async def list_invoices(state: AppState, principal: Principal, *, limit: int, cursor: str | None = None) -> InvoicePage:
    """The caller's payments (one per Stripe invoice), newest first."""
    check_configured(state.settings)
    rows, next_cursor = await keyset_page(
        """
        SELECT p.id, p.stripe_invoice_id, p.status, p.amount_cents, p.currency, p.hosted_invoice_url,
               p.created_at, pl.code AS plan_code
        FROM payments p
        LEFT JOIN subscriptions s ON s.id = p.subscription
        LEFT JOIN plans pl ON pl.id = s.plan
        WHERE p."user" = {}""",
        [principal.user_id],
        moment="p.created_at",
        row_id="p.id",
        cursor=cursor,
        limit=limit,
    )
    return InvoicePage(
        items=[
            InvoiceOut(
                id=row["id"],
                stripe_invoice_id=row["stripe_invoice_id"],
                status=row["status"],
                amount_cents=row["amount_cents"],
                currency=row["currency"],
                hosted_invoice_url=row["hosted_invoice_url"],
                plan_code=row["plan_code"],
                created_at=row["created_at"],
            )
            for row in rows
        ],
        next_cursor=next_cursor,
    )
