"""Billing against a local Stripe: the official SDK talks HTTP to tests/support/stripe_standin.py,
webhooks are signed exactly as Stripe signs them and posted over HTTP to the app served by
uvicorn, and the real arq worker processes them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.app import create_app
from server.domain.billing.entitlements import CreateLounge, JoinPaidLounge, SpendAITokens, decide
from server.domain.billing.services import seed_plans
from server.domain.billing.webhooks import sweep
from server.domain.tables.ai import AIUsage
from server.domain.tables.billing import BillingCustomer, Payment, Plan, StripeEvent, Subscription
from server.domain.tables.lounges import LoungeMembership
from server.domain.tables.notifications import Notification
from server.foundation.redis import queue_name
from server.foundation.settings import Settings
from server.foundation.state import AppState
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.pages import envelope, walk
from tests.support.sdk import sdk_client, subscription
from tests.support.smtp import SmtpSink
from tests.support.stripe_standin import StripeStandin, event_payload, running_standin, serving, signature_header

ROOT = Path(__file__).resolve().parents[1]
BILLING = "/api/v1/billing"
LOUNGES = "/api/v1/lounges"
RunJobs = Callable[[], Awaitable[None]]


def billing_app(settings: Settings) -> Litestar:
    return create_app(settings)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
async def standin() -> AsyncIterator[StripeStandin]:
    async with running_standin() as running:
        yield running


@pytest.fixture
def billing_settings(settings: Settings, standin: StripeStandin) -> Settings:
    return msgspec.structs.replace(
        settings,
        stripe_secret_key=standin.api_key,
        stripe_webhook_secret=standin.webhook_secret,
        stripe_api_base=standin.url,
    )


@pytest.fixture
async def api(app: Litestar, billing_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with billing pointed at the stand-in, served by uvicorn on a real port
    (``app`` empties the tables and Redis first)."""
    async with (
        serving(billing_app(billing_settings), lifespan="on") as (url, _),
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield http


@pytest.fixture
def people(api: httpx.AsyncClient, mailbox: SmtpSink, run_jobs: RunJobs) -> Community:
    return Community(api, mailbox, run_jobs)


@pytest.fixture
async def prices(billing_settings: Settings, standin: StripeStandin) -> dict[str, str]:
    """The default plans, seeded with prices the stand-in knows."""
    pro = standin.add_price(1200, name="Pro")
    team = standin.add_price(4900, name="Team")
    await seed_plans(billing_settings, pro_price=pro, team_price=team)
    return {"pro": pro, "team": team}


# -- helpers ---------------------------------------------------------------------------------------


async def deliver(
    api: httpx.AsyncClient,
    standin: StripeStandin,
    event: dict[str, Any],
    *,
    timestamp: int | None = None,
    secret: str | None = None,
    body: str | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """Post ``event`` to the webhook as Stripe does (signed now unless told otherwise)."""
    payload = event_payload(event) if body is None else body
    header = (
        signature if signature is not None else signature_header(payload, secret or standin.webhook_secret, timestamp)
    )
    return await api.post(
        f"{BILLING}/webhook",
        content=payload.encode(),
        headers={
            "Stripe-Signature": header,
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        },
    )


async def deliver_all(api: httpx.AsyncClient, standin: StripeStandin, run_jobs: RunJobs) -> list[dict[str, Any]]:
    """Deliver what Stripe has queued, then let the worker process it."""
    events = standin.take_events()
    for event in events:
        response = await deliver(api, standin, event)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "duplicate": False}
    await run_jobs()
    return events


async def subscribe(api: httpx.AsyncClient, standin: StripeStandin, run_jobs: RunJobs, account: Account) -> str:
    """Checkout for pro, the payer pays, Stripe's events arrive: returns the Stripe subscription id."""
    response = await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=account.headers)
    assert response.status_code == 200, response.text
    stripe_subscription = standin.complete_checkout(response.json()["session_id"])
    await deliver_all(api, standin, run_jobs)
    return stripe_subscription["id"]


async def state_of(api: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    response = await api.get(f"{BILLING}/subscription", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def notifications_of(account: Account) -> list[str]:
    rows = (
        await Notification.select(Notification.kind)
        .where(Notification.user == uuid.UUID(account.id))
        .order_by(Notification.created_at)
    )
    return [row["kind"] for row in rows]


async def counts() -> dict[str, int]:
    return {
        "events": await StripeEvent.count(),
        "subscriptions": await Subscription.count(),
        "payments": await Payment.count(),
        "notifications": await Notification.count(),
    }


def app_state(app: Litestar, settings: Settings) -> AppState:
    """The running app's state with ``settings`` (e.g. billing configured)."""
    state = app.state.app_state
    return AppState(settings=settings, engine=state.engine, redis=state.redis)


# -- plans ---------------------------------------------------------------------------------------


async def test_seed_plans_command_is_idempotent_and_plans_are_listed_publicly(
    api: httpx.AsyncClient, billing_settings: Settings
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": billing_settings.database_url or "",
        "STRIPE_PRICE_PRO": "price_from_settings",
        "BILLING_FREE_MAX_LOUNGES": "2",
    }
    command = [sys.executable, "-m", "server", "seed-plans", "--team-price", "price_team_arg"]
    first = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "lounges: plan free: created",
        "lounges: plan pro: created",
        "lounges: plan team: created",
    ]
    await Plan.update({Plan.max_lounges: 7}).where(Plan.code == "pro")  # an operator's edit survives
    again = await asyncio.to_thread(subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged") == 3
    assert await Plan.count() == 3

    listed = envelope(await api.get(f"{BILLING}/plans"))
    assert [p["code"] for p in listed["items"]] == ["free", "pro", "team"] and listed["next_cursor"] is None
    free, pro, team = listed["items"]
    assert (free["purchasable"], free["max_lounges"], free["paid_lounge_access"]) == (False, 2, False)
    assert free["ai_tokens_per_month"] == billing_settings.ai_free_monthly_tokens
    assert (pro["purchasable"], pro["max_lounges"], pro["paid_lounge_access"]) == (True, 7, True)
    assert team["purchasable"] and team["amount_cents"] == 4900 and team["interval"] == "month"
    stored = {row["code"]: row["stripe_price_id"] for row in await Plan.select(Plan.code, Plan.stripe_price_id)}
    assert stored == {"free": None, "pro": "price_from_settings", "team": "price_team_arg"}


# -- the journey ---------------------------------------------------------------------------------


async def test_subscribe_pay_join_payment_fails_cancel_and_access_is_removed(
    api: httpx.AsyncClient,
    standin: StripeStandin,
    people: Community,
    prices: dict[str, str],
    run_jobs: RunJobs,
    settings: Settings,
) -> None:
    mentor = await people.mentor("coach@example.com")
    lounge = await people.lounge(mentor, title="Inner circle", access="paid")
    member = await people.user("payer@example.com")
    refused = await people.join(member, lounge)
    assert refused.status_code == 402 and refused.json()["code"] == "subscription_required"

    # Checkout: a customer is created once, a session per attempt, both with idempotency keys.
    response = await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=member.headers)
    assert response.status_code == 200, response.text
    checkout = response.json()
    assert checkout["url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    session = standin.sessions[checkout["session_id"]]
    assert session["client_reference_id"] == member.id and session["mode"] == "subscription"
    assert session["_price"] == prices["pro"]
    assert session["_subscription_metadata"] == {"user_id": member.id, "plan_code": "pro"}
    [customer_call] = standin.posts("/v1/customers")
    [session_call] = standin.posts("/v1/checkout/sessions")
    assert customer_call.idempotency_key == f"customer-{member.id}"
    assert session_call.idempotency_key and session_call.idempotency_key.startswith(f"checkout-{member.id}-")
    assert session_call.params["line_items"] == [{"price": prices["pro"], "quantity": "1"}]
    assert {r.stripe_version for r in standin.requests} == {session_call.stripe_version} != {None}
    mapping = await BillingCustomer.select().where(BillingCustomer.user == uuid.UUID(member.id)).first()
    assert mapping["stripe_customer_id"] == session["customer"]

    # Nothing changes until Stripe says it is paid.
    assert (await state_of(api, member))["subscription"] is None
    stripe_id = standin.complete_checkout(checkout["session_id"])["id"]
    delivered = await deliver_all(api, standin, run_jobs)
    assert [e["type"] for e in delivered] == [
        "customer.subscription.created",
        "invoice.paid",
        "checkout.session.completed",
    ]
    current = await state_of(api, member)
    assert current["subscription"]["status"] == "active" and current["subscription"]["entitled"]
    assert current["subscription"]["plan"]["code"] == "pro"
    assert current["entitlements"]["paid_lounge_access"] is True
    assert current["entitlements"]["plans"] == ["pro"]
    invoices = envelope(await api.get(f"{BILLING}/invoices", headers=member.headers))
    assert invoices["next_cursor"] is None
    [paid] = invoices["items"]
    assert (paid["status"], paid["amount_cents"], paid["currency"], paid["plan_code"]) == ("paid", 1200, "usd", "pro")
    assert paid["hosted_invoice_url"].startswith("https://invoice.stripe.com/i/")
    assert await notifications_of(member) == ["payment.succeeded"]

    joined = await people.join(member, lounge)
    assert joined.status_code == 200 and joined.json()["status"] == "active", joined.text

    node = await WebNode(settings).start()
    client, personal = sdk_client(node.ws_url, member.access_token)
    try:
        await client.connect()
        room, seen = subscription(client, lounge["channel"])
        await room.subscribe()
        await room.ready()

        # A renewal charge fails: past_due keeps access while Stripe retries; the user is told.
        standin.fail_renewal(stripe_id)
        await deliver_all(api, standin, run_jobs)
        current = await state_of(api, member)
        assert current["subscription"]["status"] == "past_due" and current["subscription"]["entitled"]
        invoices = envelope(await api.get(f"{BILLING}/invoices", headers=member.headers))
        assert [i["status"] for i in invoices["items"]] == ["failed", "paid"]
        assert invoices["items"][0]["hosted_invoice_url"]
        assert await walk(api, f"{BILLING}/invoices", headers=member.headers, limit=1) == invoices["items"]
        assert await notifications_of(member) == ["payment.succeeded", "payment.failed"]
        await personal.wait_for(
            lambda c: any(p.get("notification", {}).get("kind") == "payment.failed" for p in c.personal)
        )

        # Cancel at period end: Stripe is asked once, access stays until the end.
        cancelled = await api.post(f"{BILLING}/subscription/cancel", headers=member.headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["subscription"]["cancel_at_period_end"] is True
        assert cancelled.json()["subscription"]["entitled"] is True
        again = await api.post(f"{BILLING}/subscription/cancel", headers=member.headers)
        assert again.status_code == 200 and again.json()["subscription"]["cancel_at_period_end"] is True
        [cancel_call] = standin.posts(f"/v1/subscriptions/{stripe_id}")
        assert cancel_call.params == {"cancel_at_period_end": "true"} and cancel_call.idempotency_key
        await deliver_all(api, standin, run_jobs)  # Stripe's customer.subscription.updated for it
        assert (await state_of(api, member))["subscription"]["cancel_at_period_end"] is True
        assert (await api.get(f"{LOUNGES}/{lounge['id']}", headers=member.headers)).json()["my_status"] == "active"
        assert not seen.unsubscribed

        # The period ends: Stripe deletes the subscription; access to the paid lounge ends at once.
        standin.end_period(stripe_id)
        await deliver_all(api, standin, run_jobs)
        await seen.wait_for(lambda r: r.unsubscribed, timeout=10)
        assert seen.unsubscribed[0].code == 2000
    finally:
        await client.disconnect()
        await node.stop()

    current = await state_of(api, member)
    assert current["subscription"]["status"] == "canceled" and not current["subscription"]["entitled"]
    assert current["entitlements"]["paid_lounge_access"] is False
    assert (await api.get(f"{LOUNGES}/{lounge['id']}", headers=member.headers)).json()["my_status"] == "invited"
    refused = await people.join(member, lounge)
    assert refused.status_code == 402 and refused.json()["code"] == "subscription_required"
    assert await notifications_of(member) == ["payment.succeeded", "payment.failed", "subscription.ended"]
    mentor_row = await LoungeMembership.select(LoungeMembership.status).where(
        LoungeMembership.user == uuid.UUID(mentor.id)
    )
    assert mentor_row == [{"status": "active"}]  # the mentor's own place is not a purchase

    # Paying again lets them straight back in.
    await subscribe(api, standin, run_jobs, member)
    rejoined = await people.join(member, lounge)
    assert rejoined.status_code == 200 and rejoined.json()["status"] == "active", rejoined.text
    assert len(standin.posts("/v1/customers")) == 1  # the customer is reused
    assert (await counts())["payments"] == 3


# -- checkout rules ------------------------------------------------------------------------------


async def test_checkout_rules(
    api: httpx.AsyncClient, standin: StripeStandin, people: Community, prices: dict[str, str], run_jobs: RunJobs
) -> None:
    unverified = await people.user("later@example.com", verified=False)
    response = await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=unverified.headers)
    assert response.status_code == 403 and response.json()["code"] == "email_unverified"
    buyer = await people.user("buyer@example.com")
    for body, status, code in (
        ({"plan": "gold"}, 404, "plan_not_found"),
        ({"plan": "free"}, 422, "plan_not_purchasable"),
        ({"plan": "pro", "coupon": "x"}, 422, "validation_failed"),
    ):
        response = await api.post(f"{BILLING}/checkout", json=body, headers=buyer.headers)
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert (await api.post(f"{BILLING}/checkout", json={"plan": "pro"})).status_code == 401

    first = (await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=buyer.headers)).json()
    second = (await api.post(f"{BILLING}/checkout", json={"plan": "team"}, headers=buyer.headers)).json()
    assert first["session_id"] != second["session_id"]
    assert len(standin.posts("/v1/customers")) == 1
    keys = [r.idempotency_key for r in standin.posts("/v1/checkout/sessions")]
    assert len(set(keys)) == 2 and not any(r.replayed for r in standin.requests)
    assert standin.sessions[first["session_id"]]["customer"] == standin.sessions[second["session_id"]]["customer"]

    standin.complete_checkout(first["session_id"])
    await deliver_all(api, standin, run_jobs)
    response = await api.post(f"{BILLING}/checkout", json={"plan": "team"}, headers=buyer.headers)
    assert response.status_code == 409 and response.json()["code"] == "already_subscribed"
    nobody = await people.user("nobody@example.com")
    response = await api.post(f"{BILLING}/subscription/cancel", headers=nobody.headers)
    assert response.status_code == 404 and response.json()["code"] == "no_subscription"


# -- webhook robustness --------------------------------------------------------------------------


async def test_bad_signatures_and_stale_timestamps_are_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, standin: StripeStandin, people: Community, prices: dict[str, str], app: Litestar
) -> None:
    buyer = await people.user("forger@example.com")
    session = (await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=buyer.headers)).json()
    standin.complete_checkout(session["session_id"])
    event = next(e for e in standin.take_events() if e["type"] == "customer.subscription.created")
    payload = event_payload(event)
    now = int(time.time())
    tampered = payload.replace('"status": "active"', '"status": "trialing"')
    assert tampered != payload
    attempts = {
        "wrong secret": {"secret": "whsec_not_the_endpoint_secret"},
        "stale timestamp": {"timestamp": now - 10 * 60},
        "tampered body": {"body": tampered, "signature": signature_header(payload, standin.webhook_secret)},
        "no v1 signature": {"signature": f"t={now},v0=deadbeef"},
        "garbage header": {"signature": "not a signature"},
        "empty header": {"signature": ""},
    }
    for name, options in attempts.items():
        response = await deliver(api, standin, event, **options)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["code"] == "invalid_signature", name
    missing = await api.post(f"{BILLING}/webhook", content=payload.encode())
    assert missing.status_code == 400 and missing.json()["code"] == "invalid_signature"
    signed_garbage = await deliver(api, standin, event, body='{"hello": "world"}')
    assert signed_garbage.status_code == 400 and signed_garbage.json()["code"] == "invalid_event"

    assert await StripeEvent.count() == 0
    queued = await app.state.app_state.redis.zrange(queue_name(app.state.app_state.settings), 0, -1)
    assert not [job for job in queued if job.startswith(b"stripe:")]
    # The same event, signed right and recent (within the tolerance), is accepted.
    accepted = await deliver(api, standin, event, timestamp=now - 60)
    assert accepted.status_code == 200 and accepted.json() == {"received": True, "duplicate": False}
    assert await StripeEvent.count() == 1


async def test_replayed_events_are_acknowledged_and_counted_once(
    api: httpx.AsyncClient, standin: StripeStandin, people: Community, prices: dict[str, str], run_jobs: RunJobs
) -> None:
    buyer = await people.user("twice@example.com")
    session = (await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=buyer.headers)).json()
    standin.complete_checkout(session["session_id"])
    events = standin.take_events()
    for event in events:  # Stripe retries (re-signed, new timestamp) before the first is processed
        assert (await deliver(api, standin, event)).json()["duplicate"] is False
        assert (await deliver(api, standin, event, timestamp=int(time.time()) - 5)).json()["duplicate"] is True
    await run_jobs()
    for event in events:  # ... and after
        response = await deliver(api, standin, event)
        assert response.status_code == 200 and response.json() == {"received": True, "duplicate": True}
    await run_jobs()
    assert await counts() == {"events": 3, "subscriptions": 1, "payments": 1, "notifications": 1}
    rows = await StripeEvent.select(StripeEvent.attempts, StripeEvent.processed_at, StripeEvent.last_error)
    assert all(r["attempts"] == 1 and r["processed_at"] and r["last_error"] is None for r in rows)
    assert await notifications_of(buyer) == ["payment.succeeded"]
    invoices = envelope(await api.get(f"{BILLING}/invoices", headers=buyer.headers))
    assert len(invoices["items"]) == 1 and invoices["next_cursor"] is None


async def test_out_of_order_delivery_ends_in_the_latest_state(
    api: httpx.AsyncClient, standin: StripeStandin, people: Community, prices: dict[str, str], run_jobs: RunJobs
) -> None:
    buyer = await people.user("shuffled@example.com")
    session = (await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=buyer.headers)).json()
    stripe_id = standin.complete_checkout(session["session_id"])["id"]
    by_type = {e["type"]: e for e in standin.take_events()}
    # Set to cancel (in the dashboard) in the same second it was created: `updated` and
    # `created` carry the same time.
    standin.update_subscription(stripe_id, cancel_at_period_end="true")
    [updated] = standin.take_events()
    assert updated["created"] == by_type["customer.subscription.created"]["created"]

    # `updated` arrives (and is processed) before `created`; the invoice before either.
    for event in (by_type["invoice.paid"], updated):
        assert (await deliver(api, standin, event)).status_code == 200
    await run_jobs()
    for event in (by_type["customer.subscription.created"], by_type["checkout.session.completed"]):
        assert (await deliver(api, standin, event)).status_code == 200
    await run_jobs()
    [row] = await Subscription.select()
    assert row["status"] == "active" and row["cancel_at_period_end"] is True
    assert row["user"] == uuid.UUID(buyer.id)
    [payment] = await Payment.select()
    assert payment["subscription"] == row["id"] and payment["status"] == "paid"  # linked once the subscription came

    # A renewal fails, then Stripe deletes the subscription at period end; the `deleted` is
    # delivered before the older `updated` (past_due) and the older `invoice.payment_failed`.
    failed_invoice = standin.fail_renewal(stripe_id)
    renewal_failed, past_due = standin.take_events()
    standin.clock += 3600
    standin.subscriptions[stripe_id]["status"] = "active"  # Stripe's retry succeeded ...
    failed_invoice.update(status="paid", amount_paid=failed_invoice["amount_due"], amount_remaining=0)
    retried = standin.event("invoice.paid", failed_invoice)
    standin.end_period(stripe_id)
    [_, deleted] = standin.take_events()
    for event in (retried, deleted, past_due, renewal_failed):
        assert (await deliver(api, standin, event)).status_code == 200
        await run_jobs()
    [row] = await Subscription.select()
    assert row["status"] == "canceled"
    statuses = {p["stripe_invoice_id"]: p["status"] for p in await Payment.select()}
    assert statuses[failed_invoice["id"]] == "paid"  # the late failure report does not undo the payment
    assert await notifications_of(buyer) == ["payment.succeeded", "payment.succeeded", "subscription.ended"]
    assert await StripeEvent.count().where(StripeEvent.processed_at.is_null()) == 0


async def test_unknown_event_types_are_stored_once_and_change_nothing(
    api: httpx.AsyncClient, standin: StripeStandin, people: Community, prices: dict[str, str], run_jobs: RunJobs
) -> None:
    buyer = await people.user("curious@example.com")
    await subscribe(api, standin, run_jobs, buyer)
    before = await counts()
    snapshot = await Subscription.select(Subscription.status, Subscription.stripe_updated_at)
    customer = next(iter(standin.customers.values()))
    events = [
        standin.event("customer.updated", customer, {"name": None}),
        standin.event("invoice.finalized", next(iter(standin.invoices.values()))),
        standin.event("charge.dispute.created", {"id": "dp_1", "object": "dispute", "amount": 1200}),
        standin.event(
            "checkout.session.completed", {"id": "cs_test_x", "object": "checkout.session", "mode": "payment"}
        ),
    ]
    standin.take_events()
    for event in events:
        response = await deliver(api, standin, event)
        assert response.status_code == 200 and response.json()["duplicate"] is False
        assert (await deliver(api, standin, event)).json()["duplicate"] is True
    await run_jobs()
    after = await counts()
    assert after == {**before, "events": before["events"] + 4}
    assert await Subscription.select(Subscription.status, Subscription.stripe_updated_at) == snapshot
    assert await StripeEvent.count().where(StripeEvent.processed_at.is_null()) == 0


async def test_an_event_for_an_unknown_price_waits_with_its_error_and_a_resend_applies_it(
    api: httpx.AsyncClient,
    standin: StripeStandin,
    people: Community,
    prices: dict[str, str],
    run_jobs: RunJobs,
) -> None:
    buyer = await people.user("odd@example.com")
    session = (await api.post(f"{BILLING}/checkout", json={"plan": "pro"}, headers=buyer.headers)).json()
    subscription_object = standin.complete_checkout(session["session_id"])
    standin.take_events()
    odd_price = standin.add_price(999, name="Legacy")
    subscription_object["items"]["data"][0]["price"] = standin.prices[odd_price]
    subscription_object["metadata"] = {}
    event = standin.event("customer.subscription.updated", subscription_object, {"items": {}})
    standin.take_events()
    assert (await deliver(api, standin, event)).status_code == 200
    await run_jobs()
    [row] = await StripeEvent.select(StripeEvent.processed_at, StripeEvent.attempts, StripeEvent.last_error)
    assert row["processed_at"] is None and row["attempts"] == 1 and odd_price in row["last_error"]
    assert await Subscription.count() == 0

    await Plan.insert(Plan(code="legacy", name="Legacy", stripe_price_id=odd_price, amount_cents=999))
    resent = await deliver(api, standin, event)  # the dashboard's "Resend"
    assert resent.json() == {"received": True, "duplicate": True}
    await run_jobs()
    [row] = await StripeEvent.select(StripeEvent.processed_at, StripeEvent.attempts, StripeEvent.last_error)
    assert row["processed_at"] is not None and row["attempts"] == 2 and row["last_error"] is None
    assert (await Subscription.select(Subscription.plan.code.as_alias("plan")))[0]["plan"] == "legacy"


# -- entitlements --------------------------------------------------------------------------------


async def test_entitlements_answer_from_plan_and_usage(
    api: httpx.AsyncClient,
    standin: StripeStandin,
    people: Community,
    prices: dict[str, str],
    run_jobs: RunJobs,
    app: Litestar,
    billing_settings: Settings,
) -> None:
    state = app_state(app, billing_settings)
    mentor = await people.mentor("busy@example.com")
    mentor_id = uuid.UUID(mentor.id)
    first = await people.lounge(mentor, title="One")
    response = await api.post(LOUNGES, json={"title": "Two"}, headers=mentor.headers)
    assert response.status_code == 402 and response.json()["code"] == "lounge_limit_reached"  # free: 1
    assert (await decide(state, mentor_id, CreateLounge())).allowed is False
    assert (await api.delete(f"{LOUNGES}/{first['id']}", headers=mentor.headers)).status_code == 200
    await people.lounge(mentor, title="Two")  # the first one was deleted: back under the limit

    free_tokens = billing_settings.ai_free_monthly_tokens
    assert (await decide(state, mentor_id, SpendAITokens(free_tokens))).allowed
    await AIUsage.insert(
        AIUsage(
            user=mentor_id,
            provider="offline",
            model="offline",
            input_tokens=free_tokens - 100,
            output_tokens=50,
            outcome="complete",
        )
    )
    refusal = await decide(state, mentor_id, SpendAITokens(100))
    assert (refusal.allowed, refusal.code, refusal.remaining) == (False, "ai_budget_exceeded", 50)
    assert (await decide(state, mentor_id, SpendAITokens(50))).allowed
    assert not (await decide(state, mentor_id, JoinPaidLounge())).allowed

    await subscribe(api, standin, run_jobs, mentor)  # pro: 2M tokens, 5 lounges, paid lounges
    assert (await decide(state, mentor_id, SpendAITokens(1_000_000))).allowed
    assert (await decide(state, mentor_id, JoinPaidLounge())).allowed
    for title in ("Three", "Four", "Five"):
        await people.lounge(mentor, title=title)
    assert (await decide(state, mentor_id, CreateLounge())).remaining == 1
    summary = (await state_of(api, mentor))["entitlements"]
    assert summary == {
        "plans": ["pro"],
        "paid_lounge_access": True,
        "ai_tokens_per_month": 2_000_000,
        "ai_tokens_used": free_tokens - 50,
        "max_lounges": 5,
        "lounges_running": 4,
    }

    # Without a Stripe key the lounge limit is not enforced (nobody could buy more).
    unconfigured = app_state(app, msgspec.structs.replace(billing_settings, stripe_secret_key=None))
    await Plan.update({Plan.max_lounges: 0}).where(Plan.code.is_in(["free", "pro"]))
    assert (await decide(unconfigured, mentor_id, CreateLounge())).allowed
    assert not (await decide(state, mentor_id, CreateLounge())).allowed


async def test_a_lapsed_subscription_without_its_deleted_event_loses_access_at_period_end(
    api: httpx.AsyncClient,
    standin: StripeStandin,
    people: Community,
    prices: dict[str, str],
    run_jobs: RunJobs,
    app: Litestar,
    billing_settings: Settings,
) -> None:
    mentor = await people.mentor("owner@example.com")
    lounge = await people.lounge(mentor, access="paid")
    member = await people.user("lapsing@example.com")
    await subscribe(api, standin, run_jobs, member)
    assert (await people.join(member, lounge)).status_code == 200
    assert (await api.post(f"{BILLING}/subscription/cancel", headers=member.headers)).status_code == 200
    await deliver_all(api, standin, run_jobs)

    state = app_state(app, billing_settings)
    assert await sweep(state) == {"requeued": 0, "memberships_revoked": 0}
    # The period ended an hour ago and Stripe's `deleted` never came.
    await Subscription.update({Subscription.current_period_end: datetime.now(UTC) - timedelta(hours=1)}).where(
        Subscription.user == uuid.UUID(member.id)
    )
    assert (await state_of(api, member))["subscription"]["entitled"] is False
    assert (await api.get(f"{LOUNGES}/{lounge['id']}", headers=member.headers)).json()["my_status"] == "active"
    assert await sweep(state) == {"requeued": 0, "memberships_revoked": 1}
    assert (await api.get(f"{LOUNGES}/{lounge['id']}", headers=member.headers)).json()["my_status"] == "invited"
    assert (await people.join(member, lounge)).status_code == 402


# -- no Stripe key -------------------------------------------------------------------------------


async def test_without_a_stripe_key_billing_answers_not_configured_and_the_rest_works(
    app: Litestar, settings: Settings, mailbox: SmtpSink, run_jobs: RunJobs
) -> None:
    assert settings.stripe_secret_key is None
    async with (
        serving(billing_app(settings), lifespan="on") as (url, _),
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        people = Community(http, mailbox, run_jobs)
        user = await people.user("plain@example.com")
        calls = [
            ("GET", "/plans", None),
            ("POST", "/checkout", {"plan": "pro"}),
            ("GET", "/subscription", None),
            ("POST", "/subscription/cancel", None),
            ("GET", "/invoices", None),
        ]
        for method, path, body in calls:
            response = await http.request(method, f"{BILLING}{path}", json=body, headers=user.headers)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "billing_not_configured", path
            assert "STRIPE_SECRET_KEY" in response.json()["detail"]
        hook = await http.post(f"{BILLING}/webhook", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
        assert hook.status_code == 503 and hook.json()["code"] == "billing_not_configured"
        assert await StripeEvent.count() == 0

        mentor = await people.mentor("free-mentor@example.com")
        for title in ("A", "B", "C"):  # no lounge limit without billing
            await people.lounge(mentor, title=title)
        paid = await people.lounge(mentor, title="Paid", access="paid")
        public = await people.lounge(mentor, title="Open")
        assert (await people.join(user, public)).status_code == 200
        refused = await people.join(user, paid)
        assert refused.status_code == 402 and refused.json()["code"] == "subscription_required"
