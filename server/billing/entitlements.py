"""Entitlements: one place that answers "may this user do X now?" from plan and usage.

Billing (plans, subscriptions) fills these in; until a user has a plan that
grants access, the answer is no and callers explain it with a clear problem.
"""

from __future__ import annotations

import uuid

from server.core.errors import AppError
from server.core.state import AppState


class SubscriptionRequired(AppError):
    """The action needs a plan the user does not have."""

    status, code, title = 402, "subscription_required", "Subscription required"


async def may_join_paid_lounge(user_id: uuid.UUID) -> bool:
    """True when the user's current plan includes paid lounges."""
    from server.billing.tables import Subscription, SubscriptionStatus

    subscription = (
        await Subscription.select(Subscription.id)
        .where(
            Subscription.user == user_id,
            Subscription.status.is_in([SubscriptionStatus.active, SubscriptionStatus.trialing]),
            Subscription.plan.paid_lounge_access.eq(True),
        )
        .first()
    )
    return subscription is not None


async def check_paid_lounge_access(user_id: uuid.UUID) -> None:
    if not await may_join_paid_lounge(user_id):
        raise SubscriptionRequired("this lounge needs a plan with paid-lounge access")


async def ai_token_allowance(state: AppState, user_id: uuid.UUID) -> int:
    """Tokens the user may spend on the coach this month: their plan's, else the free allowance."""
    from server.billing.tables import Subscription, SubscriptionStatus

    subscription = (
        await Subscription.select(Subscription.plan.ai_tokens_per_month.as_alias("tokens"))
        .where(
            Subscription.user == user_id,
            Subscription.status.is_in([SubscriptionStatus.active, SubscriptionStatus.trialing]),
        )
        .first()
    )
    return int(subscription["tokens"]) if subscription else state.settings.ai_free_monthly_tokens
