"""A local Stripe: the API calls billing makes, over real HTTP, and Stripe's webhook signing.

:class:`StripeStandin` is a raw ASGI app served by uvicorn on 127.0.0.1 (a free
port) inside the test's event loop (:func:`running_standin`). The official
``stripe`` SDK is pointed at it through ``STRIPE_API_BASE`` and sends what it
sends to Stripe: form-encoded bodies with bracketed keys
(``line_items[0][price]=...``), ``Authorization: Bearer sk_...``,
``Stripe-Version`` and ``Idempotency-Key`` headers. It answers with objects
shaped like the current API version's (periods on subscription items, an
invoice's subscription under ``parent.subscription_details``):

* ``POST /v1/customers``, ``GET /v1/customers/{id}``
* ``POST /v1/checkout/sessions``, ``GET /v1/checkout/sessions/{id}``
* ``GET /v1/subscriptions/{id}``, ``POST /v1/subscriptions/{id}`` (``cancel_at_period_end``,
  ``metadata``), ``DELETE /v1/subscriptions/{id}``
* ``GET /v1/invoices/{id}``

Every POST must carry an ``Idempotency-Key``; a key seen before replays the first
answer (``Idempotent-Replayed: true``) and a key reused with other parameters is
refused with an ``idempotency_error``, as Stripe does. Unknown keys or routes get
Stripe's error bodies.

What Stripe does on its own — the payer completes Checkout, a renewal charge fails,
a period ends — are methods (:meth:`StripeStandin.complete_checkout`,
:meth:`fail_renewal`, :meth:`end_period`) that change the objects and put the
events Stripe would send in :attr:`StripeStandin.outbox`. :func:`sign` and
:func:`signature_header` sign a payload exactly like Stripe
(``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from stripe._api_version import _ApiVersion

API_VERSION = _ApiVersion.CURRENT
MONTH = 30 * 24 * 3600


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(18).replace('-', 'x').replace('_', 'y')}"


# -- webhook signing -------------------------------------------------------------------------------


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Stripe's v1 scheme: hex HMAC-SHA256 of ``"<timestamp>.<payload>"`` keyed by the endpoint secret."""
    return hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()


def signature_header(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe sends with ``payload``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={sign(payload, secret, timestamp)}"


def event_payload(event: dict[str, Any]) -> str:
    """An event's body as Stripe posts it (pretty-printed JSON, two spaces)."""
    return json.dumps(event, indent=2)


# -- form decoding ---------------------------------------------------------------------------------


def decode_form(body: str) -> dict[str, Any]:
    """``a[b][0][c]=v`` pairs (what the SDK sends) into nested dicts and lists."""

    def slot(node: Any, part: str, default: Any) -> Any:
        if isinstance(node, list):
            index = int(part)
            node.extend([None] * (index + 1 - len(node)))
            if node[index] is None:
                node[index] = default
            return node[index]
        return node.setdefault(part, default)

    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in itertools.pairwise(parts):
            node = slot(node, part, [] if following.isdigit() else {})
        if isinstance(node, list):
            slot(node, parts[-1], value)
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return root


class StripeError(Exception):
    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {"type": kind, "message": message, **extra}}


@dataclass
class Recorded:
    """One API request as the stand-in received it."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    stripe_version: str | None
    replayed: bool = False


@dataclass
class StripeStandin:
    """Stripe's state for one test; served by :func:`running_standin`."""

    port: int
    api_key: str = field(default_factory=lambda: f"sk_test_{secrets.token_hex(12)}")
    webhook_secret: str = field(default_factory=lambda: f"whsec_{secrets.token_hex(16)}")
    # Stripe's clock (unix seconds): objects and events are stamped with it; tests move it.
    clock: int = field(default_factory=lambda: int(time.time()))
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # Events Stripe would now deliver to the webhook endpoint, oldest first.
    outbox: list[dict[str, Any]] = field(default_factory=list)
    _idempotent: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- fixtures of the account -------------------------------------------------------------------

    def add_price(self, unit_amount: int, *, currency: str = "usd", interval: str = "month", name: str = "Plan") -> str:
        product = _id("prod")
        price_id = _id("price")
        self.prices[price_id] = {
            "id": price_id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": self.clock,
            "currency": currency,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": name,
            "product": product,
            "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed", "meter": None},
            "tax_behavior": "unspecified",
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }
        return price_id

    def take_events(self) -> list[dict[str, Any]]:
        events, self.outbox = self.outbox, []
        return events

    def posts(self, path_prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.startswith(path_prefix)]

    # -- events ----------------------------------------------------------------------------------

    def event(
        self, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None, *, created: int | None = None
    ) -> dict[str, Any]:
        """An event as Stripe builds it (a snapshot of ``obj``), also put in the outbox."""
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": _id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.clock if created is None else created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
        self.outbox.append(event)
        return event

    # -- what Stripe does by itself --------------------------------------------------------------

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """The payer pays on the Checkout page: the subscription starts, its first invoice is paid."""
        session = self.sessions[session_id]
        price = self.prices[session["_price"]]
        subscription = self._new_subscription(session["customer"], price, session["_subscription_metadata"])
        invoice = self._new_invoice(subscription, price, "subscription_create", paid=True)
        subscription["latest_invoice"] = invoice["id"]
        session.update(
            status="complete",
            payment_status="paid",
            subscription=subscription["id"],
            invoice=invoice["id"],
            customer_details={"email": self.customers[session["customer"]]["email"], "name": None},
        )
        self.event("customer.subscription.created", subscription)
        self.event("invoice.paid", invoice)
        self.event("checkout.session.completed", self._public(session))
        return subscription

    def fail_renewal(self, subscription_id: str) -> dict[str, Any]:
        """The period ends and the renewal charge is declined: the subscription goes past_due."""
        subscription = self.subscriptions[subscription_id]
        item = subscription["items"]["data"][0]
        self.clock = max(self.clock + 1, item["current_period_end"])
        before = {"status": subscription["status"], "latest_invoice": subscription["latest_invoice"]}
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] = item["current_period_start"] + MONTH
        invoice = self._new_invoice(subscription, item["price"], "subscription_cycle", paid=False)
        subscription.update(status="past_due", latest_invoice=invoice["id"])
        self.event("invoice.payment_failed", invoice)
        self.event("customer.subscription.updated", subscription, before)
        return invoice

    def update_subscription(self, subscription_id: str, **params: Any) -> dict[str, Any]:
        """A change made in Stripe's dashboard (same effect and event as the API's update)."""
        return self._update_subscription(self.subscriptions[subscription_id], params)

    def end_period(self, subscription_id: str) -> dict[str, Any]:
        """The clock reaches the period end of a subscription set to cancel then: it is deleted."""
        subscription = self.subscriptions[subscription_id]
        assert subscription["cancel_at_period_end"], "only a subscription set to cancel ends here"
        self.clock = max(self.clock + 1, subscription["items"]["data"][0]["current_period_end"])
        subscription.update(status="canceled", ended_at=self.clock)
        self.event("customer.subscription.deleted", subscription)
        return subscription

    # -- objects ---------------------------------------------------------------------------------

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _new_subscription(self, customer: str, price: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        subscription_id = _id("sub")
        now = self.clock
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "application": None,
            "automatic_tax": {"enabled": False, "liability": None},
            "billing_cycle_anchor": now,
            "billing_mode": {"type": "flexible"},
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": price["currency"],
            "customer": customer,
            "default_payment_method": _id("pm"),
            "description": None,
            "discounts": [],
            "ended_at": None,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": _id("si"),
                        "object": "subscription_item",
                        "created": now,
                        "current_period_end": now + MONTH,
                        "current_period_start": now,
                        "discounts": [],
                        "metadata": {},
                        "price": copy.deepcopy(price),
                        "quantity": 1,
                        "subscription": subscription_id,
                        "tax_rates": [],
                    }
                ],
                "has_more": False,
                "total_count": 1,
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": dict(metadata),
            "pause_collection": None,
            "start_date": now,
            "status": "active",
            "test_clock": None,
            "trial_end": None,
            "trial_start": None,
        }
        self.subscriptions[subscription_id] = subscription
        return subscription

    def _new_invoice(
        self, subscription: dict[str, Any], price: dict[str, Any], reason: str, *, paid: bool
    ) -> dict[str, Any]:
        invoice_id = _id("in")
        item = subscription["items"]["data"][0]
        amount = price["unit_amount"]
        number = f"{subscription['customer'][-8:].upper()}-{len(self.invoices) + 1:04d}"
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "US",
            "amount_due": amount,
            "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount,
            "attempt_count": 1,
            "attempted": True,
            "auto_advance": not paid,
            "billing_reason": reason,
            "collection_method": "charge_automatically",
            "created": self.clock,
            "currency": price["currency"],
            "customer": subscription["customer"],
            "customer_email": self.customers[subscription["customer"]]["email"],
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_standin/test_{invoice_id}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_standin/test_{invoice_id}/pdf",
            "lines": {
                "object": "list",
                "data": [
                    {
                        "id": _id("il"),
                        "object": "line_item",
                        "amount": amount,
                        "currency": price["currency"],
                        "description": f"1 × {price['nickname']} (at ${amount / 100:.2f} / {price['recurring']['interval']})",
                        "period": {"start": item["current_period_start"], "end": item["current_period_end"]},
                        "pricing": {"price_details": {"price": price["id"], "product": price["product"]}},
                        "quantity": 1,
                        "parent": {
                            "type": "subscription_item_details",
                            "subscription_item_details": {
                                "subscription": subscription["id"],
                                "subscription_item": item["id"],
                            },
                        },
                    }
                ],
                "has_more": False,
                "total_count": 1,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None if paid else self.clock + 3 * 24 * 3600,
            "number": number,
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(subscription["metadata"]),
                    "subscription": subscription["id"],
                },
            },
            "period_end": item["current_period_start"],
            "period_start": item["current_period_start"],
            "status": "paid" if paid else "open",
            "status_transitions": {
                "finalized_at": self.clock,
                "marked_uncollectible_at": None,
                "paid_at": self.clock if paid else None,
                "voided_at": None,
            },
            "subtotal": amount,
            "total": amount,
        }
        self.invoices[invoice_id] = invoice
        return invoice

    # -- the API ---------------------------------------------------------------------------------

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")
        resource = parts[1:]
        if resource == ["customers"] and method == "POST":
            return 200, self._create_customer(params)
        if resource[:1] == ["customers"] and len(resource) == 2 and method == "GET":
            return 200, self._get(self.customers, resource[1], "customer")
        if resource == ["checkout", "sessions"] and method == "POST":
            return 200, self._create_session(params)
        if resource[:2] == ["checkout", "sessions"] and len(resource) == 3 and method == "GET":
            return 200, self._public(self._get(self.sessions, resource[2], "checkout.session"))
        if resource[:1] == ["subscriptions"] and len(resource) == 2:
            subscription = self._get(self.subscriptions, resource[1], "subscription")
            if method == "GET":
                return 200, subscription
            if method == "POST":
                return 200, self._update_subscription(subscription, params)
            if method == "DELETE":
                return 200, self._cancel_now(subscription)
        if resource[:1] == ["invoices"] and len(resource) == 2 and method == "GET":
            return 200, self._get(self.invoices, resource[1], "invoice")
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    @staticmethod
    def _get(table: dict[str, dict[str, Any]], object_id: str, kind: str) -> dict[str, Any]:
        if object_id not in table:
            raise StripeError(
                404, "invalid_request_error", f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
            )
        return table[object_id]

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer_id = _id("cus")
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self.clock,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": params.get("description"),
            "email": params.get("email"),
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "name": params.get("name"),
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.customers[customer_id] = customer
        return customer

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        missing = [name for name in ("mode", "success_url", "line_items") if not params.get(name)]
        if missing:
            raise StripeError(400, "invalid_request_error", f"Missing required param: {missing[0]}.", param=missing[0])
        if params["mode"] != "subscription":
            raise StripeError(400, "invalid_request_error", "This stand-in only does subscription mode.", param="mode")
        customer = params.get("customer")
        if customer not in self.customers:
            raise StripeError(400, "invalid_request_error", f"No such customer: '{customer}'", param="customer")
        items = params["line_items"]
        price_id = items[0].get("price") if isinstance(items, list) and items else None
        if price_id not in self.prices:
            raise StripeError(
                400, "invalid_request_error", f"No such price: '{price_id}'", param="line_items[0][price]"
            )
        if str(items[0].get("quantity", "1")) != "1":
            raise StripeError(400, "invalid_request_error", "Quantity must be 1.", param="line_items[0][quantity]")
        price = self.prices[price_id]
        session_id = f"cs_test_{secrets.token_hex(24)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": price["unit_amount"],
            "amount_total": price["unit_amount"],
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": self.clock,
            "currency": price["currency"],
            "customer": customer,
            "customer_details": None,
            "expires_at": self.clock + 24 * 3600,
            "invoice": None,
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "mode": "subscription",
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": params["success_url"],
            "ui_mode": "hosted",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}#standin",
            "_price": price_id,
            "_subscription_metadata": (params.get("subscription_data") or {}).get("metadata") or {},
        }
        self.sessions[session_id] = session
        return self._public(session)

    def _update_subscription(self, subscription: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        if subscription["status"] == "canceled":
            raise StripeError(
                400,
                "invalid_request_error",
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        previous: dict[str, Any] = {}
        if "cancel_at_period_end" in params:
            wanted = params["cancel_at_period_end"] == "true"
            if wanted != subscription["cancel_at_period_end"]:
                previous["cancel_at_period_end"] = subscription["cancel_at_period_end"]
                period_end = subscription["items"]["data"][0]["current_period_end"]
                subscription.update(
                    cancel_at_period_end=wanted,
                    cancel_at=period_end if wanted else None,
                    canceled_at=self.clock if wanted else None,
                )
                subscription["cancellation_details"]["reason"] = "cancellation_requested" if wanted else None
        if "metadata" in params:
            previous["metadata"] = dict(subscription["metadata"])
            subscription["metadata"].update(params["metadata"] or {})
        if previous:
            self.event("customer.subscription.updated", subscription, previous)
        return subscription

    def _cancel_now(self, subscription: dict[str, Any]) -> dict[str, Any]:
        subscription.update(status="canceled", canceled_at=self.clock, ended_at=self.clock)
        self.event("customer.subscription.deleted", subscription)
        return subscription

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode()
        params = decode_form(body.decode() if method == "POST" else query)
        key = headers.get("idempotency-key")
        recorded = Recorded(method, path, params, key, headers.get("stripe-version"))
        self.requests.append(recorded)
        reply_headers = {"request-id": _id("req"), "stripe-version": headers.get("stripe-version") or API_VERSION}
        try:
            if headers.get("authorization") != f"Bearer {self.api_key}":
                raise StripeError(401, "invalid_request_error", "Invalid API Key provided.")
            if method == "POST":
                if not key:
                    raise StripeError(400, "invalid_request_error", "This stand-in wants an Idempotency-Key.")
                fingerprint = json.dumps([path, params], sort_keys=True)
                if key in self._idempotent:
                    seen, status, payload = self._idempotent[key]
                    if seen != fingerprint:
                        raise StripeError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters they were "
                            "first used with.",
                        )
                    recorded.replayed = True
                    reply_headers["idempotent-replayed"] = "true"
                    await self._send(send, status, payload, reply_headers)
                    return
            status, payload = self._route(method, path, params)
            payload = copy.deepcopy(payload)
            if method == "POST" and key:
                self._idempotent[key] = (fingerprint, status, payload)
        except StripeError as exc:
            status, payload = exc.status, exc.body
        await self._send(send, status, payload, reply_headers)

    @staticmethod
    async def _send(send: Any, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        body = json.dumps(payload).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: Ctrl-C must still stop pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any, *, lifespan: str = "off") -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve an ASGI app on 127.0.0.1 (a free port) in this event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietServer(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the server stopped before it started")
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def running_standin(**options: Any) -> AsyncIterator[StripeStandin]:
    """A new :class:`StripeStandin` served on 127.0.0.1 in this event loop."""
    standin = StripeStandin(port=0, **options)
    async with serving(standin) as (url, _):
        standin.port = int(url.rsplit(":", 1)[1])
        yield standin
