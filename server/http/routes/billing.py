"""HTTP transport for ``/api/v1/billing``: plans, checkout, subscription, invoices, Stripe's webhook.

Without ``STRIPE_SECRET_KEY`` every route answers 503 ``billing_not_configured``.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK

from server.domain.accounts.services import Principal
from server.domain.billing import services, webhooks
from server.domain.billing.schemas import (
    CheckoutOut,
    CheckoutRequest,
    InvoicePage,
    PlanList,
    SubscriptionState,
    WebhookAck,
)
from server.foundation.state import AppState
from server.http.params import Cursor
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]

Limit = Annotated[int, QueryParameter(ge=1, le=100)]


class BillingController(Controller):
    """Plans, Stripe Checkout, the caller's subscription and invoices, and Stripe's webhook."""

    path = "/billing"
    tags = ["billing"]

    @get("/plans", security=[], responses=problem_responses(503))
    async def list_plans(self, app_state: State) -> PlanList:
        """Active plans with their limits, cheapest first (public; one page: ``next_cursor`` is null)."""
        return await services.list_plans(app_state)

    @post(
        "/checkout",
        status_code=HTTP_200_OK,
        security=BEARER,
        responses=problem_responses(401, 403, 404, 409, 422, 503),
    )
    async def checkout(
        self, data: JSONBody[CheckoutRequest], app_state: State, verified_principal: Caller
    ) -> CheckoutOut:
        """Start a subscription to ``plan``: open ``url`` (Stripe Checkout). The subscription
        becomes active when Stripe reports the payment (webhook), not when this answers."""
        return await services.do_checkout(app_state, verified_principal, data)

    @get("/subscription", security=BEARER, responses=problem_responses(401, 503))
    async def subscription(self, app_state: State, principal: Caller) -> SubscriptionState:
        """Your current subscription (``null`` without one) and what it entitles you to now."""
        return await services.get_subscription_state(app_state, principal)

    @post(
        "/subscription/cancel",
        status_code=HTTP_200_OK,
        security=BEARER,
        responses=problem_responses(401, 404, 503),
    )
    async def cancel(self, app_state: State, principal: Caller) -> SubscriptionState:
        """Cancel at the end of the paid period (access stays until then); idempotent."""
        return await services.do_cancel_subscription(app_state, principal)

    @get("/invoices", security=BEARER, responses=problem_responses(401, 422, 503))
    async def invoices(
        self, app_state: State, principal: Caller, limit: Limit = 20, cursor: Cursor = None
    ) -> InvoicePage:
        """Your payments, newest first, with Stripe's hosted invoice links."""
        return await services.list_invoices(app_state, principal, limit=limit, cursor=cursor)

    @post("/webhook", status_code=HTTP_200_OK, security=[], responses=problem_responses(400, 503))
    async def webhook(self, request: Request[Any, Any, Any], app_state: State) -> WebhookAck:
        """Stripe's events. The ``Stripe-Signature`` is verified against the raw body; each
        event is stored once by id (a duplicate is acknowledged with ``duplicate: true``)
        and processed by the worker."""
        payload = await request.body()
        return await webhooks.do_receive_event(app_state, payload, request.headers.get("stripe-signature"))
