"""Entitlements: the one place that answers "may this user do X now?" from plan and usage.

:func:`decide` takes an action — :class:`JoinPaidLounge`, :class:`SpendAITokens`
or :class:`CreateLounge` — and answers a :class:`Decision`; :func:`require`
raises the matching 402 problem. Everything else here is a thin wrapper
(``may_join_paid_lounge``, ``check_paid_lounge_access``, :func:`ai_budget`)
or a building block of those answers.

Where the limits come from:

- **Entitling subscriptions** are those in ``active``, ``trialing`` or
  ``past_due``, except one set to cancel at its period end once that end has
  passed (even if Stripe's ``customer.subscription.deleted`` is late).
  ``past_due`` keeps access on purpose: Stripe is still retrying the payment
  (smart retries / dunning) and moves the subscription to ``unpaid`` or
  ``canceled`` when it gives up — that move is what ends access, not the first
  failed charge. ``incomplete``, ``incomplete_expired``, ``unpaid``, ``paused``
  and ``canceled`` grant nothing.
- **The free tier** (everyone, subscription or not): the active plan with code
  ``free`` once ``python -m server seed-plans`` created it, else the settings
  ``AI_FREE_MONTHLY_TOKENS`` and ``BILLING_FREE_MAX_LOUNGES``. It never grants
  paid lounges.
- A user's limits are the most generous of the free tier and every entitling
  plan. AI usage is counted per calendar month (UTC) from the usage ledger.
- Lounge limits are only enforced while billing is configured
  (``STRIPE_SECRET_KEY``): without it nobody could buy more.

Losing paid-lounge access (subscription deleted, unpaid, paused, downgraded, or
cancelled at period end once the end came) is applied by
:func:`revoke_paid_lounge_access`, which billing calls after each subscription
change: the user's active memberships of paid lounges (not as the lounge's mentor,
not for admins) go back to ``invited`` — their read position and any mute stay on
the row, the lounge shows ``my_status: "invited"``, and ``POST /lounges/{id}/join``
lets them straight back in once they pay again (until then it answers 402
``subscription_required``). Their sockets are unsubscribed through the
``channel.access_lost`` control event after the commit (:func:`announce_access_lost`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from server.domain.tables.ai import AIUsage
from server.domain.tables.billing import Plan, Subscription, SubscriptionStatus
from server.domain.tables.lounges import Lounge, LoungeMembership
from server.foundation.control import ControlEvent, publish_control
from server.foundation.errors import AppError
from server.foundation.state import AppState

ENTITLING_STATUSES: tuple[str, ...] = (
    SubscriptionStatus.active,
    SubscriptionStatus.trialing,
    SubscriptionStatus.past_due,
)
FREE_PLAN_CODE = "free"

# SQL condition on a subscriptions row ``s``: it grants its plan right now.
ENTITLING_SQL = (
    f"s.status IN ({', '.join(repr(str(status)) for status in ENTITLING_STATUSES)}) "
    "AND NOT (s.cancel_at_period_end AND s.current_period_end IS NOT NULL AND s.current_period_end <= now())"
)


class SubscriptionRequired(AppError):
    """The action needs a plan the user does not have."""

    status, code, title = 402, "subscription_required", "Subscription required"


class LoungeLimitReached(AppError):
    """The mentor runs as many lounges as their plan allows."""

    status, code, title = 402, "lounge_limit_reached", "Lounge limit reached"


class AIAllowanceSpent(AppError):
    """This month's AI tokens are spent."""

    status, code, title = 402, "ai_budget_exceeded", "AI allowance spent"


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinPaidLounge:
    """Join (or stay in) a lounge whose access is ``paid``."""


@dataclass(frozen=True, slots=True)
class SpendAITokens:
    """Spend ``tokens`` more AI tokens (prompt + reply) this month."""

    tokens: int


@dataclass(frozen=True, slots=True)
class CreateLounge:
    """Open one more lounge as a mentor."""


Action = JoinPaidLounge | SpendAITokens | CreateLounge


@dataclass(frozen=True, slots=True)
class Limits:
    """What a user's plans allow (the free tier merged with every entitling plan)."""

    plans: tuple[str, ...]  # codes of the entitling plans; empty: free tier only
    paid_lounge_access: bool
    ai_tokens_per_month: int
    max_lounges: int


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    code: str = ""
    detail: str = ""
    # For AI tokens: what is left this month; for lounges: how many more may be opened.
    remaining: int | None = None


# -- the answer ----------------------------------------------------------------------------------


async def decide(state: AppState, user_id: uuid.UUID, action: Action) -> Decision:
    """May ``user_id`` do ``action`` now? The one answer every caller uses."""
    if isinstance(action, JoinPaidLounge):
        if await _has_paid_lounge_access(user_id):
            return Decision(True)
        return Decision(False, "subscription_required", "this lounge needs a plan with paid-lounge access")
    limits = await limits_for(state, user_id)
    if isinstance(action, SpendAITokens):
        used = await ai_tokens_used_this_month(user_id)
        return AIBudget(allowance=limits.ai_tokens_per_month, used=used).decide(action.tokens)
    if isinstance(action, CreateLounge):
        if not billing_configured(state):
            return Decision(True)
        running = await lounges_run_by(user_id)
        if running < limits.max_lounges:
            return Decision(True, remaining=limits.max_lounges - running)
        return Decision(
            False,
            "lounge_limit_reached",
            f"your plan allows {limits.max_lounges} open lounge(s); archive one or upgrade",
            remaining=0,
        )
    raise TypeError(f"unknown action {action!r}")


async def require(state: AppState, user_id: uuid.UUID, action: Action) -> None:
    """Raise the 402 problem matching :func:`decide`'s refusal."""
    enforce(await decide(state, user_id, action))


def enforce(decision: Decision) -> None:
    """Raise the 402 problem of a refusal (nothing for an allowed decision)."""
    if decision.allowed:
        return
    error = {
        "subscription_required": SubscriptionRequired,
        "lounge_limit_reached": LoungeLimitReached,
        "ai_budget_exceeded": AIAllowanceSpent,
    }[decision.code]
    raise error(decision.detail)


# -- building blocks -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AIBudget:
    """A user's AI tokens this month: the allowance and what the ledger says is used."""

    allowance: int
    used: int

    def decide(self, tokens: int) -> Decision:
        """May ``tokens`` more be spent? (:class:`SpendAITokens`)"""
        left = max(0, self.allowance - self.used)
        if tokens <= left:
            return Decision(True, remaining=left)
        return Decision(
            False,
            "ai_budget_exceeded",
            f"this month's AI allowance is spent ({self.allowance - left} of {self.allowance} tokens used)",
            remaining=left,
        )


async def ai_budget(state: AppState, user_id: uuid.UUID) -> AIBudget:
    """The allowance and this month's usage, in one statement (:func:`ai_budget_sql`); call it
    outside a transaction."""
    allowance, used = ai_budget_sql("$1", "$2", "$3")
    pool = state.engine.pool
    assert pool is not None  # started by acquire_engine before any job runs
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            f"SELECT {allowance} AS allowance, {used} AS used",
            user_id,
            state.settings.ai_free_monthly_tokens,
            month_start(),
        )
    return AIBudget(allowance=int(row["allowance"]), used=int(row["used"]))


def ai_budget_sql(user: str, free_tokens: str, since: str) -> tuple[str, str]:
    """Two SQL scalars: ``user``'s monthly AI allowance (as :func:`limits_for` merges it: the
    free plan's, or ``free_tokens`` without one, and every entitling plan's, the largest) and
    the tokens the ledger holds for them since ``since``. The arguments are SQL expressions
    (placeholders), so that a caller may read the budget inside a bigger statement."""
    allowance = f"""greatest(
        coalesce(
            (SELECT p.ai_tokens_per_month FROM plans p WHERE p.code = '{FREE_PLAN_CODE}' AND p.active LIMIT 1),
            {free_tokens}
        ),
        (SELECT max(p.ai_tokens_per_month) FROM subscriptions s JOIN plans p ON p.id = s.plan
         WHERE s."user" = {user} AND {ENTITLING_SQL})
    )"""
    used = f"""(SELECT coalesce(sum(u.input_tokens + u.output_tokens), 0) FROM ai_usage u
        WHERE u."user" = {user} AND u.created_at >= {since})"""
    return allowance, used


def billing_configured(state: AppState) -> bool:
    return bool(state.settings.stripe_secret_key)


async def _has_paid_lounge_access(user_id: uuid.UUID) -> bool:
    rows = await Subscription.raw(
        f"""SELECT 1 FROM subscriptions s JOIN plans p ON p.id = s.plan
            WHERE s."user" = {{}} AND p.paid_lounge_access AND {ENTITLING_SQL} LIMIT 1""",
        user_id,
    )
    return bool(rows)


async def limits_for(state: AppState, user_id: uuid.UUID) -> Limits:
    """The free tier merged with every plan the user's entitling subscriptions grant."""
    free = (
        await Plan.select(Plan.ai_tokens_per_month, Plan.max_lounges)
        .where(Plan.code == FREE_PLAN_CODE, Plan.active.eq(True))
        .first()
    )
    tokens = int(free["ai_tokens_per_month"]) if free else state.settings.ai_free_monthly_tokens
    lounges = int(free["max_lounges"]) if free else state.settings.billing_free_max_lounges
    rows = await Subscription.raw(
        f"""SELECT p.code, p.ai_tokens_per_month, p.max_lounges, p.paid_lounge_access
            FROM subscriptions s JOIN plans p ON p.id = s.plan
            WHERE s."user" = {{}} AND {ENTITLING_SQL} ORDER BY p.amount_cents DESC, p.code""",
        user_id,
    )
    return Limits(
        plans=tuple(row["code"] for row in rows),
        paid_lounge_access=any(row["paid_lounge_access"] for row in rows),
        ai_tokens_per_month=max([tokens, *(int(row["ai_tokens_per_month"]) for row in rows)]),
        max_lounges=max([lounges, *(int(row["max_lounges"]) for row in rows)]),
    )


def month_start(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def ai_tokens_used_this_month(user_id: uuid.UUID) -> int:
    rows = await AIUsage.raw(
        'SELECT coalesce(sum(input_tokens + output_tokens), 0) AS n FROM ai_usage WHERE "user" = {} AND created_at >= {}',
        user_id,
        month_start(),
    )
    return int(rows[0]["n"])


async def lounges_run_by(user_id: uuid.UUID) -> int:
    """Lounges (not archived) of the mentor profile of ``user_id``; locks the profile so
    that concurrent creations by one mentor are counted one at a time (inside a transaction)."""
    rows = await Lounge.raw(
        """
        WITH me AS (SELECT id FROM mentors WHERE "user" = {} FOR UPDATE)
        SELECT count(l.id) AS n FROM me LEFT JOIN lounges l ON l.mentor = me.id AND l.archived_at IS NULL
        """,
        user_id,
    )
    return int(rows[0]["n"]) if rows else 0


# -- compatibility wrappers (lounges, the AI coach) -------------------------------------------


async def may_join_paid_lounge(user_id: uuid.UUID) -> bool:
    """True when the user's current plan includes paid lounges."""
    return await _has_paid_lounge_access(user_id)


async def check_paid_lounge_access(user_id: uuid.UUID) -> None:
    if not await _has_paid_lounge_access(user_id):
        raise SubscriptionRequired("this lounge needs a plan with paid-lounge access")


# -- losing access -----------------------------------------------------------------------------


async def revoke_paid_lounge_access(user_id: uuid.UUID) -> list[str]:
    """Inside the caller's transaction: if the user may no longer join paid lounges, turn
    their active memberships of paid lounges back into invitations. Returns the channels
    whose sockets must be unsubscribed after the commit (see :func:`announce_access_lost`)."""
    if await _has_paid_lounge_access(user_id):
        return []
    rows = await LoungeMembership.raw(
        """
        UPDATE lounge_memberships m SET status = 'invited', updated_at = now()
        FROM lounges l
        WHERE l.id = m.lounge AND l.access = 'paid' AND m."user" = {} AND m.status = 'active'
          AND m.role <> 'mentor'
          AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m."user" AND u.role = 'admin')
        RETURNING l.channel
        """,
        user_id,
    )
    return sorted(row["channel"] for row in rows)


async def announce_access_lost(state: AppState, user_id: uuid.UUID, channels: list[str], reason: str) -> None:
    """After the commit: every node unsubscribes the user's sockets from ``channels``."""
    for channel in channels:
        await publish_control(
            state.realtime_redis,
            state.settings.redis_prefix,
            ControlEvent(kind="channel.access_lost", user_id=user_id, channel=channel, reason=reason),
        )
