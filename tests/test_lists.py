"""Every list of the REST API is one envelope, ``{"items": [...], "next_cursor": str | null}``,
and every list that can grow pages by cursor: walked with ``limit=1`` and ``limit=2`` it
returns each row exactly once, in the order of the one-page answer, even when every row
has the same timestamp (the key ends in the row's id, so it is a total order).

The OpenAPI document is checked too: no answer is a bare array, every list schema is the
envelope, and the lists it names are exactly those walked here (a new list endpoint fails
this file until it is added to ``WALKS``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from server.app import create_app
from server.domain.tables.accounts import Role, User
from server.domain.tables.admin import AdminAuditLog
from server.domain.tables.billing import Payment, Plan
from server.domain.tables.compliance import ComplianceRequest
from server.domain.tables.notifications import Notification
from server.domain.tables.push import PushLog
from server.foundation.settings import Settings
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.lifespan import running_lifespan
from tests.support.pages import pages
from tests.support.smtp import SmtpSink

API = "/api/v1"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
# One moment for every row: only the id can then tell two rows apart at a page boundary.
SAME_MOMENT = datetime(2026, 1, 1, 12, tzinfo=UTC)
TIED_COLUMNS = {
    "users": ["created_at"],
    "admin_audit_log": ["created_at"],
    "mentors": ["created_at", "reviewed_at"],
    "static_pages": ["created_at"],
    "faqs": ["created_at"],
    "payments": ["created_at"],
    "chat_threads": ["updated_at"],
    "files": ["created_at"],
    "lounges": ["created_at"],
    "lounge_memberships": ["created_at"],
    "notes": ["updated_at"],
    "notifications": ["created_at"],
    "compliance_requests": ["requested_at"],
    "push_devices": ["updated_at"],
    "push_log": ["created_at"],
}
ENVELOPE_KEYS = {"items", "next_cursor"}
OLD_KEYS = {"total", "offset", "limit", "has_more"}


@dataclass(frozen=True)
class Walk:
    """One list: ``operation`` as the OpenAPI document names it, ``url`` with ids filled in,
    who reads it, how many rows it must hold, whether it is one bounded page."""

    operation: str
    url: str
    who: str | None
    rows: int
    bounded: bool = False
    params: tuple[tuple[str, str], ...] = ()


@dataclass
class World:
    accounts: dict[str, Account]
    walks: list[Walk]


@pytest.fixture
async def billed(app: Litestar, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with billing configured (a key is enough to list plans and invoices: neither calls
    Stripe), on the same database and Redis as ``app`` (whose fixture emptied them). The lists
    are read through it."""
    configured = msgspec.structs.replace(settings, stripe_secret_key="sk_test_lists")
    async with running_lifespan(create_app(configured)) as application:
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 40003))
        async with httpx.AsyncClient(transport=transport, base_url="http://lists.test") as http:
            yield http


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), (response.request.url, response.text)
    return response.json()


async def _world(
    api: httpx.AsyncClient, app: Litestar, mailbox: SmtpSink, run_jobs: Callable[[], Awaitable[None]]
) -> World:
    """Three or more rows in every list that can grow, made through the API where it is cheap;
    then every row of a list gets the same timestamp."""
    people = Community(api, mailbox, run_jobs)
    admin = await people.user("admin@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(admin.id))
    mentor = await people.mentor("mentor@example.com")
    for other in ("mentor2@example.com", "mentor3@example.com"):
        await people.mentor(other)
    member = await people.user("member@example.com")
    joiners = [await people.user(f"joiner{i}@example.com") for i in range(2)]
    as_admin, as_member = admin.headers, member.headers

    categories = [
        await _ok(await api.post(f"{API}/admin/categories", json={"slug": s, "name": s.title()}, headers=as_admin))
        for s in ("career", "focus", "sleep")
    ]
    for i in range(3):
        applicant = await people.user(f"applicant{i}@example.com")
        body = {"headline": "Helping you grow", "bio": "Years of it", "category_ids": [categories[i]["id"]]}
        await _ok(await api.post(f"{API}/mentors/apply", json=body, headers=applicant.headers))
    for slug in ("about", "privacy", "terms"):
        await _ok(await api.post(f"{API}/admin/cms/pages", json={"slug": slug, "title": slug}, headers=as_admin))
    # The same position everywhere: within a category only created_at and then the id order them.
    for category in (None, None, "billing", "billing"):
        body = {"question": "Q?", "answer_markdown": "A.", "category": category, "position": 5, "published": True}
        await _ok(await api.post(f"{API}/admin/faqs", json=body, headers=as_admin))

    lounges = [await people.lounge(mentor, title=f"Room {i}") for i in range(3)]
    hidden = await people.lounge(mentor, title="Inner circle", access="private")
    for account in (member, *joiners):
        await _ok(await people.join(account, lounges[0]))
    for i in range(3):
        assert (await people.post(member, f"{API}/lounges/{lounges[0]['id']}", f"lounge {i}")).status_code == 201

    threads = [await _ok(await api.post(f"{API}/chat/threads", json={}, headers=as_member)) for _ in range(3)]
    for i in range(3):
        assert (await people.post(member, f"{API}/chat/threads/{threads[0]['id']}", f"thread {i}")).status_code == 201
    notes = [
        await _ok(await api.post(f"{API}/notes", json={"title": f"Note {i}"}, headers=as_member)) for i in range(4)
    ]
    for note in notes[1:3]:
        await _ok(await api.patch(f"{API}/notes/{note['id']}/pin", json={"pinned": True}, headers=as_member))
    for i in range(3):
        await _ok(
            await api.post(
                f"{API}/chat/upload",
                params={"filename": f"f{i}.png"},
                content=PNG,
                headers={**as_member, "Content-Type": "application/octet-stream"},
            )
        )
    unlock_at = (datetime.now(UTC) + timedelta(days=30)).isoformat()  # the same for all three
    for i in range(3):
        body = {"title": f"Capsule {i}", "content": "later", "unlock_at": unlock_at}
        await _ok(await api.post(f"{API}/capsules", json=body, headers=as_member))

    for i in range(3):
        body = {"platform": "fcm", "token": f"device-{i}-{uuid.uuid4().hex}:APA91b{uuid.uuid4().hex}"}
        await _ok(await api.post(f"{API}/devices", json=body, headers=as_member))

    member_id = uuid.UUID(member.id)
    now = datetime.now(UTC)
    await PushLog.insert(
        *(
            PushLog(
                user=member_id,
                platform="fcm",
                token_hint="abcdefgh",
                kind="lounge.message",
                collapse_id="lounge:x",
                status="sent",
                reason="",
                provider_id="",
                created_at=now,
            )
            for _ in range(3)
        )
    )
    await Plan.insert(
        Plan(code="free", name="Free", amount_cents=0, created_at=now),
        Plan(code="pro", name="Pro", amount_cents=1200, created_at=now),
    )
    await Payment.insert(*(Payment(user=member_id, amount_cents=1200, status="paid", created_at=now) for _ in range(3)))
    await Notification.insert(
        *(Notification(user=member_id, kind="test", title=f"n{i}", body="b", created_at=now) for i in range(3))
    )
    await ComplianceRequest.insert(
        *(
            ComplianceRequest(user=member_id, kind="export", status="failed", error="x", requested_at=now)
            for _ in range(3)
        )
    )
    async with app.state.app_state.engine.pool.acquire() as connection:
        for table, columns in TIED_COLUMNS.items():
            assignments = ", ".join(f"{column} = $1" for column in columns)
            await connection.execute(f"UPDATE {table} SET {assignments}", SAME_MOMENT)

    mentor_profile = hidden["mentor_id"]
    lounge, thread = lounges[0]["id"], threads[0]["id"]
    walks = [
        Walk("GET /api/v1/admin/users", f"{API}/admin/users", "admin", await User.count()),
        Walk("GET /api/v1/admin/audit-log", f"{API}/admin/audit-log", "admin", await AdminAuditLog.count()),
        Walk("GET /api/v1/admin/mentors/pending", f"{API}/admin/mentors/pending", "admin", 3),
        Walk("GET /api/v1/admin/cms/pages", f"{API}/admin/cms/pages", "admin", 3),
        Walk("GET /api/v1/admin/faqs", f"{API}/admin/faqs", "admin", 4),
        Walk("GET /api/v1/billing/plans", f"{API}/billing/plans", None, 2, bounded=True),
        Walk("GET /api/v1/billing/invoices", f"{API}/billing/invoices", "member", 3),
        Walk("GET /api/v1/capsules", f"{API}/capsules", "member", 3),
        Walk("GET /api/v1/categories", f"{API}/categories", None, 3, bounded=True),
        Walk("GET /api/v1/admin/users/{user_id}/pushes", f"{API}/admin/users/{member_id}/pushes", "admin", 3),
        Walk("GET /api/v1/chat/threads", f"{API}/chat/threads", "member", 3),
        Walk("GET /api/v1/chat/threads/{id}/messages", f"{API}/chat/threads/{thread}/messages", "member", 3),
        Walk("GET /api/v1/cms/faqs", f"{API}/cms/faqs", None, 4, bounded=True),
        Walk("GET /api/v1/devices", f"{API}/devices", "member", 3),
        Walk("GET /api/v1/devices/pushes", f"{API}/devices/pushes", "member", 3),
        Walk("GET /api/v1/files", f"{API}/files", "member", 3),
        Walk("GET /api/v1/lounges", f"{API}/lounges", None, 3),  # the private one is not listed to strangers
        Walk("GET /api/v1/lounges", f"{API}/lounges", "mentor", 4),
        Walk("GET /api/v1/lounges", f"{API}/lounges", None, 3, params=(("q", "room"),)),
        Walk("GET /api/v1/lounges/{id}/members", f"{API}/lounges/{lounge}/members", "member", 4),
        Walk("GET /api/v1/lounges/{id}/messages", f"{API}/lounges/{lounge}/messages", "member", 3),
        Walk("GET /api/v1/mentors", f"{API}/mentors", None, 3),
        Walk("GET /api/v1/mentors/{mentor_id}/lounges", f"{API}/mentors/{mentor_profile}/lounges", None, 3),
        Walk("GET /api/v1/mentors/{mentor_id}/lounges", f"{API}/mentors/{mentor_profile}/lounges", "mentor", 4),
        Walk("GET /api/v1/notes", f"{API}/notes", "member", 4),
        Walk("GET /api/v1/notifications", f"{API}/notifications", "member", 3),
        Walk("GET /api/v1/users/me/exports", f"{API}/users/me/exports", "member", 3),
    ]
    accounts = {"admin": admin, "mentor": mentor, "member": member}
    return World(accounts, walks)


async def test_every_list_pages_through_each_row_exactly_once(
    client: httpx.AsyncClient,
    billed: httpx.AsyncClient,
    app: Litestar,
    mailbox: SmtpSink,
    run_jobs: Callable[[], Awaitable[None]],
) -> None:
    world = await _world(client, app, mailbox, run_jobs)  # made without billing: no plan limits lounges
    for walk in world.walks:
        headers = world.accounts[walk.who].headers if walk.who else {}
        params = dict(walk.params)
        [whole] = await pages(billed, walk.url, headers=headers, params=params)  # one page holds them all
        ids = [_identity(item) for item in whole]
        assert len(ids) == len(set(ids)) == walk.rows, (walk, ids)
        if walk.bounded:
            continue
        for limit in (1, 2):
            found = await pages(billed, walk.url, headers=headers, params=params, limit=limit)
            assert len(found) == -(-walk.rows // limit), (walk, limit, found)  # every page full but the last
            if walk.operation.endswith("/messages"):
                # A history page is in offset order; the next_cursor of the newest page goes to older ones.
                found = [page for page in reversed(found)]
            assert [_identity(item) for page in found for item in page] == ids, (walk, limit)
        if walk.operation.endswith("/messages"):  # from an offset forwards, then on by cursor
            found = await pages(billed, walk.url, headers=headers, params={"after": 0}, limit=2)
            assert [_identity(item) for page in found for item in page] == ids, walk

        refused = await billed.get(walk.url, params={**params, "cursor": "bm90IGEgY3Vyc29y"}, headers=headers)
        assert refused.status_code == 422, (walk, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "invalid_cursor", walk

    # Bounded and search answers are the same envelope.
    search = await billed.post(f"{API}/notes/search", json={"query": "note"}, headers=world.accounts["member"].headers)
    assert search.status_code == 200 and search.json()["next_cursor"] is None and search.json()["items"]
    assert not OLD_KEYS & search.json().keys()

    # Every list operation of the OpenAPI document was walked (or is the search above).
    walked = {walk.operation for walk in world.walks} | {"POST /api/v1/notes/search"}
    document = (await billed.get("/schema/openapi.json")).json()
    assert set(_list_operations(document)) == walked, "a list endpoint is missing from WALKS in tests/test_lists.py"


def _identity(item: dict[str, Any]) -> str:
    """What tells two rows of a list apart (a membership is its user's)."""
    return item["id"] if "id" in item else item["user_id"]


def _list_operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each operation whose success answer carries ``items``, with its resolved schema."""
    found: dict[str, dict[str, Any]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if not status.startswith("2"):
                    continue
                for media in response.get("content", {}).values():
                    schema = _resolve(document, media.get("schema", {}))
                    if "items" in schema.get("properties", {}):
                        found[f"{method.upper()} {path}"] = schema
    return found


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


async def test_the_openapi_document_describes_one_envelope(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                for media in response.get("content", {}).values():
                    schema = _resolve(document, media.get("schema", {}))
                    assert schema.get("type") != "array", f"{method.upper()} {path} {status} answers a bare array"

    lists = _list_operations(document)
    assert len(lists) >= 20, sorted(lists)
    for name, schema in lists.items():
        properties = schema["properties"]
        assert set(schema.get("required", [])) >= ENVELOPE_KEYS, name
        assert not OLD_KEYS & properties.keys(), (name, sorted(properties))
        assert _resolve(document, properties["items"]).get("type") == "array", name
        cursor = properties["next_cursor"]
        kinds: set[str] = set()
        for option in cursor.get("oneOf", [cursor]):
            kind = option.get("type")
            kinds |= set(kind) if isinstance(kind, list) else {kind}
        assert kinds == {"string", "null"}, (name, cursor)

        method, path = name.split(" ", 1)
        operation = document["paths"][path][method.lower()]
        query = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "query"}
        assert not {"offset", "page"} & query, name
        bounded = name in {"GET /api/v1/categories", "GET /api/v1/billing/plans", "GET /api/v1/cms/faqs"}
        if method == "GET" and not bounded:
            assert {"cursor", "limit"} <= query, f"{name} can grow but takes no cursor"
