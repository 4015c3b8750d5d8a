"""The admin area over HTTP: every admin route refuses non-admins, platform stats from
real rows and a real web node's sockets, user search, role changes and the audit log."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from server.domain.mentors.services import seed_categories
from server.domain.tables.accounts import Role, User
from server.domain.tables.admin import AdminAuditLog
from server.domain.tables.ai import AIUsage
from server.domain.tables.billing import Payment
from server.domain.tables.chat import Message
from server.domain.tables.mentors import Category, Mentor
from server.domain.tables.notifications import Notification
from server.foundation.settings import Settings
from server.http.routes.admin import AdminAuditLogController, AdminStatsController, AdminUserController
from server.http.routes.cms import AdminCmsPageController, AdminFaqController, CmsController
from tests.support.accounts import Account, signed_in
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import sdk_client

API = "/api/v1"
CONTROLLERS = [
    AdminStatsController,
    AdminUserController,
    AdminAuditLogController,
    CmsController,
    AdminCmsPageController,
    AdminFaqController,
]


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def served(app: Litestar) -> AsyncIterator[Litestar]:
    """The real app (the CMS and admin controllers are registered in server/app.py)."""
    yield app


@pytest.fixture
async def api(served: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=served, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://lounges.test") as http:
        yield http


async def make_admin(community: Community, email: str = "root@example.com") -> Account:
    account = await community.user(email)
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(account.id))
    return account


@pytest.fixture
async def admin(community: Community) -> Account:
    return await make_admin(community)


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def audit(action: str | None = None) -> list[dict[str, Any]]:
    query = AdminAuditLog.select().order_by(AdminAuditLog.created_at)
    if action is not None:
        query = query.where(AdminAuditLog.action == action)
    return [{**row, "detail": json.loads(row["detail"])} for row in await query]


# -- every admin route refuses non-admins ------------------------------------------------------

_PATH_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_SAMPLE_BY_TYPE = {"uuid": lambda: str(uuid.uuid4()), "int": lambda: "1", "float": lambda: "1", "decimal": lambda: "1"}


def admin_endpoints(application: Litestar) -> list[tuple[str, str]]:
    """(method, concrete path) of every admin handler in the app's route table, whoever wrote it."""
    endpoints = []
    for route in application.routes:
        if not route.path.startswith(f"{API}/admin"):
            continue
        assert isinstance(route, HTTPRoute), f"{route.path}: only HTTP admin routes are covered here"
        path = _PATH_PARAM.sub(lambda m: _SAMPLE_BY_TYPE.get(m.group(2) or "str", lambda: "x")(), route.path)
        endpoints += [(method, path) for method in sorted(route.methods) if method not in ("OPTIONS", "HEAD")]
    return endpoints


async def test_every_admin_route_refuses_anonymous_and_non_admin_callers(
    api: httpx.AsyncClient, served: Litestar, community: Community
) -> None:
    endpoints = admin_endpoints(served)
    shapes = {(method, re.sub(r"[0-9a-f-]{36}", "{}", path)) for method, path in endpoints}
    for expected in (
        ("GET", f"{API}/admin/stats"),
        ("GET", f"{API}/admin/users"),
        ("PATCH", f"{API}/admin/users/{{}}/role"),
        ("GET", f"{API}/admin/audit-log"),
        ("GET", f"{API}/admin/mentors/pending"),
        ("POST", f"{API}/admin/mentors/{{}}/approve"),
        ("PATCH", f"{API}/admin/mentors/{{}}/reject"),
        ("POST", f"{API}/admin/categories"),
        ("GET", f"{API}/admin/cms/pages"),
        ("PUT", f"{API}/admin/cms/pages/{{}}"),
        ("DELETE", f"{API}/admin/faqs/{{}}"),
        ("PUT", f"{API}/admin/faqs/{{}}"),
    ):
        assert expected in shapes, expected
    assert len(endpoints) >= 20

    member = await community.user("member@example.com")
    unverified = await community.user("fresh@example.com", verified=False)
    mentor = await community.mentor("mentor@example.com")
    for method, path in endpoints:
        body = {} if method in ("POST", "PUT", "PATCH") else None
        where = f"{method} {path}"
        anonymous = await api.request(method, path, json=body)
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "missing_token"), where
        bad_token = await api.request(method, path, json=body, headers={"Authorization": "Bearer not.a.jwt"})
        assert bad_token.status_code == 401, where
        for account in (member, unverified, mentor):
            refused = await api.request(method, path, json=body, headers=account.headers)
            assert (refused.status_code, refused.json()["code"]) == (403, "role_required"), (where, account.email)
    assert await AdminAuditLog.count() == 0  # nothing was done


# -- stats -------------------------------------------------------------------------------------


def days_ago(days: int, *, hours: int = 0) -> datetime:
    return datetime.now(UTC) - timedelta(days=days, hours=hours)


async def insert_messages(when: datetime, count: int) -> None:
    channel = f"lounge:{uuid.uuid4()}"
    await Message.insert(
        *[
            Message(channel=channel, offset=i + 1, sender_type="user", text=f"m{i}", created_at=when)
            for i in range(count)
        ]
    )


async def insert_usage(when: datetime, input_tokens: int, output_tokens: int, outcome: str = "complete") -> None:
    await AIUsage.insert(
        AIUsage(
            provider="offline",
            model="offline-coach",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            outcome=outcome,
            created_at=when,
        )
    )


async def insert_payment(when: datetime, cents: int, currency: str, status: str) -> None:
    await Payment.insert(Payment(amount_cents=cents, currency=currency, status=status, created_at=when))


async def test_stats_count_users_messages_tokens_and_revenue(
    api: httpx.AsyncClient, admin: Account, community: Community
) -> None:
    await community.user("a@example.com")
    old = await community.user("b@example.com")
    await community.user("c@example.com", verified=False)
    await community.mentor("m@example.com")
    await User.update({User.created_at: days_ago(10)}).where(User.id == uuid.UUID(old.id))
    await User.update({User.is_active: False}).where(User.id == uuid.UUID(old.id))

    await insert_messages(datetime.now(UTC), 3)
    await insert_messages(days_ago(1), 2)
    await insert_messages(days_ago(5), 4)
    await insert_usage(datetime.now(UTC), 100, 50)
    await insert_usage(datetime.now(UTC), 10, 5)
    await insert_usage(days_ago(1), 7, 0, outcome="failed")
    await insert_usage(days_ago(6), 1000, 1000)
    await insert_payment(datetime.now(UTC), 1000, "usd", "paid")
    await insert_payment(days_ago(40), 2500, "usd", "paid")
    await insert_payment(days_ago(10), 900, "eur", "paid")
    await insert_payment(datetime.now(UTC), 5000, "usd", "refunded")
    await insert_payment(datetime.now(UTC), 700, "usd", "pending")
    await insert_payment(datetime.now(UTC), 300, "usd", "failed")

    response = await api.get(f"{API}/admin/stats?days=3", headers=admin.headers)
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["users"] == {
        "total": 5,
        "verified": 4,
        "active": 4,
        "new_last_7_days": 4,
        "by_role": {"user": 3, "mentor": 1, "admin": 1},
    }
    today = datetime.now(UTC).date()
    assert stats["days"] == 3
    assert stats["daily"] == [
        {
            "day": (today - timedelta(days=2)).isoformat(),
            "messages": 0,
            "ai_replies": 0,
            "ai_input_tokens": 0,
            "ai_output_tokens": 0,
            "ai_tokens": 0,
        },
        {
            "day": (today - timedelta(days=1)).isoformat(),
            "messages": 2,
            "ai_replies": 1,
            "ai_input_tokens": 7,
            "ai_output_tokens": 0,
            "ai_tokens": 7,
        },
        {
            "day": today.isoformat(),
            "messages": 3,
            "ai_replies": 2,
            "ai_input_tokens": 110,
            "ai_output_tokens": 55,
            "ai_tokens": 165,
        },
    ]
    assert stats["revenue"] == [
        {
            "currency": "eur",
            "last_30_days_cents": 900,
            "total_cents": 900,
            "payments_last_30_days": 1,
            "payments_total": 1,
        },
        {
            "currency": "usd",
            "last_30_days_cents": 1000,
            "total_cents": 3500,
            "payments_last_30_days": 1,
            "payments_total": 2,
        },
    ]

    week = (await api.get(f"{API}/admin/stats?days=7", headers=admin.headers)).json()
    assert [d["day"] for d in week["daily"]] == [(today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    assert sum(d["messages"] for d in week["daily"]) == 9
    assert sum(d["ai_tokens"] for d in week["daily"]) == 2172
    default = (await api.get(f"{API}/admin/stats", headers=admin.headers)).json()
    assert default["days"] == 14 and len(default["daily"]) == 14
    assert date.fromisoformat(default["daily"][-1]["day"]) == today
    for days in (0, 91, -1):
        problem(await api.get(f"{API}/admin/stats?days={days}", headers=admin.headers), 422, "validation_failed")


async def test_stats_sum_live_sockets_across_nodes(
    api: httpx.AsyncClient, admin: Account, community: Community, settings: Settings
) -> None:
    alice = await community.user("alice@example.com")
    bob = await community.user("bob@example.com")

    async def sockets() -> dict[str, int]:
        response = await api.get(f"{API}/admin/stats?days=1", headers=admin.headers)
        assert response.status_code == 200, response.text
        return response.json()["sockets"]

    async def wait_for_sockets(active: int, timeout: float = 20.0) -> dict[str, int]:
        async with asyncio.timeout(timeout):  # each node refreshes its key every few seconds
            while (seen := await sockets())["active"] != active:
                await asyncio.sleep(0.25)
        return seen

    node = await WebNode(settings).start()
    clients = []
    try:
        for account in (alice, bob):
            sdk, _ = sdk_client(node.ws_url, account.access_token)
            await sdk.connect()
            await sdk.ready()
            clients.append(sdk)
        seen = await wait_for_sockets(2)
        # The separate web process plus this test's in-process app nodes (0 sockets each).
        assert 1 <= seen["nodes"] <= 3
        await clients.pop().disconnect()
        await wait_for_sockets(1)
    finally:
        for sdk in clients:
            await sdk.disconnect()
        await node.stop()


# -- users -------------------------------------------------------------------------------------


async def test_user_search_by_email_name_and_role(api: httpx.AsyncClient, admin: Account, community: Community) -> None:
    ann = await signed_in(api, "ann.lee@example.com")
    await api.put(f"{API}/users/me", headers=ann.headers, json={"full_name": "Ann Lee"})
    bo = await community.user("bo@sample.org")
    await api.put(f"{API}/users/me", headers=bo.headers, json={"full_name": "Bo Leeds"})
    mentor = await community.mentor("coach@example.com")

    async def search(query: str = "") -> dict[str, Any]:
        response = await api.get(f"{API}/admin/users{query}", headers=admin.headers)
        assert response.status_code == 200, response.text
        return response.json()

    everyone = await search()
    assert [u["email"] for u in everyone["items"]] == [
        "coach@example.com",
        "bo@sample.org",
        "ann.lee@example.com",
        "root@example.com",
    ]
    assert everyone["next_cursor"] is None
    by_name = await search("?q=LEE")
    assert {u["email"] for u in by_name["items"]} == {"ann.lee@example.com", "bo@sample.org"}
    assert [u["email"] for u in (await search("?q=sample.ORG"))["items"]] == ["bo@sample.org"]
    assert (await search("?q=%25"))["items"] == []  # LIKE wildcards are taken literally
    assert (await search("?q=_"))["items"] == []
    mentors = (await search("?role=mentor"))["items"]
    assert [(u["id"], u["role"], u["mentor_status"]) for u in mentors] == [(mentor.id, "mentor", "approved")]
    ann_out = (await search("?q=ann&role=user"))["items"][0]
    assert ann_out == {
        "id": ann.id,
        "email": "ann.lee@example.com",
        "full_name": "Ann Lee",
        "role": "user",
        "email_verified": False,
        "is_active": True,
        "disabled_at": None,
        "last_login_at": ann_out["last_login_at"],
        "mentor_status": None,
        "created_at": ann_out["created_at"],
    }
    assert ann_out["last_login_at"] is not None

    first = await search("?limit=3")
    assert len(first["items"]) == 3 and first["next_cursor"]
    rest = await search(f"?limit=3&cursor={first['next_cursor']}")
    assert [u["email"] for u in rest["items"]] == ["root@example.com"] and rest["next_cursor"] is None

    problem(await api.get(f"{API}/admin/users?cursor=bogus", headers=admin.headers), 422, "invalid_cursor")
    problem(await api.get(f"{API}/admin/users?role=owner", headers=admin.headers), 422, "validation_failed")
    problem(await api.get(f"{API}/admin/users?limit=101", headers=admin.headers), 422, "validation_failed")

    one = await api.get(f"{API}/admin/users/{bo.id}", headers=admin.headers)
    assert one.status_code == 200 and one.json()["full_name"] == "Bo Leeds"
    problem(await api.get(f"{API}/admin/users/{uuid.uuid4()}", headers=admin.headers), 404, "user_not_found")


async def test_role_changes_take_effect_at_once_and_are_audited(
    api: httpx.AsyncClient, admin: Account, community: Community
) -> None:
    member = await community.user("member@example.com")
    role_url = f"{API}/admin/users/{member.id}/role"

    promoted = await api.patch(role_url, headers=admin.headers, json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin"
    assert (await api.get(f"{API}/admin/stats", headers=member.headers)).status_code == 200  # same token

    [row] = await audit("user.role_change")
    assert (row["actor"], row["target_type"], row["target_id"]) == (uuid.UUID(admin.id), "user", member.id)
    assert row["detail"] == {"from": "user", "to": "admin"} and row["ip"] == "127.0.0.1"
    [note] = await Notification.select().where(Notification.user == uuid.UUID(member.id))
    assert note["kind"] == "role.changed" and json.loads(note["data"]) == {"from": "user", "to": "admin"}

    # The same role again changes nothing and logs nothing.
    assert (await api.patch(role_url, headers=admin.headers, json={"role": "admin"})).json()["role"] == "admin"
    assert len(await audit("user.role_change")) == 1

    # No admin can change their own role (so there is always one left) ...
    problem(
        await api.patch(f"{API}/admin/users/{admin.id}/role", headers=admin.headers, json={"role": "user"}),
        403,
        "cannot_demote_self",
    )
    # ... but another admin can, and the demoted one is refused from the next request on.
    demoted = await api.patch(f"{API}/admin/users/{admin.id}/role", headers=member.headers, json={"role": "user"})
    assert demoted.status_code == 200 and demoted.json()["role"] == "user"
    problem(await api.get(f"{API}/admin/stats", headers=admin.headers), 403, "role_required")
    problem(await api.patch(role_url, headers=admin.headers, json={"role": "user"}), 403, "role_required")

    problem(
        await api.patch(f"{API}/admin/users/{uuid.uuid4()}/role", headers=member.headers, json={"role": "user"}),
        404,
        "user_not_found",
    )
    for body in ({"role": "owner"}, {}, {"role": "user", "extra": 1}):
        problem(await api.patch(role_url, headers=member.headers, json=body), 422, "validation_failed")


async def test_mentor_role_and_mentor_profile_stay_in_step(
    api: httpx.AsyncClient, admin: Account, community: Community
) -> None:
    mentor = await community.mentor("coach@example.com")
    profile = await Mentor.select(Mentor.id).where(Mentor.user == uuid.UUID(mentor.id)).first()
    assert (await api.get(f"{API}/mentors/{profile['id']}")).status_code == 200

    # Taking the mentor role away withdraws the approved profile: out of the directory, no new lounges.
    demoted = await api.patch(f"{API}/admin/users/{mentor.id}/role", headers=admin.headers, json={"role": "user"})
    assert demoted.status_code == 200, demoted.text
    assert (demoted.json()["role"], demoted.json()["mentor_status"]) == ("user", "rejected")
    assert (await api.get(f"{API}/mentors/{profile['id']}")).status_code == 404
    refused = await api.post(f"{API}/lounges", headers=mentor.headers, json={"title": "Mine", "description": "x"})
    assert refused.status_code == 403
    [row] = await audit("user.role_change")
    assert row["detail"] == {
        "from": "mentor",
        "to": "user",
        "mentor_status": {"from": "approved", "to": "rejected"},
    }

    # Giving it back approves the profile again.
    restored = await api.patch(f"{API}/admin/users/{mentor.id}/role", headers=admin.headers, json={"role": "mentor"})
    assert (restored.json()["role"], restored.json()["mentor_status"]) == ("mentor", "approved")
    assert (await api.get(f"{API}/mentors/{profile['id']}")).status_code == 200

    # A user who never applied cannot be made a mentor: there is no profile to show.
    plain = await community.user("plain@example.com")
    problem(
        await api.patch(f"{API}/admin/users/{plain.id}/role", headers=admin.headers, json={"role": "mentor"}),
        409,
        "mentor_profile_required",
    )
    # A pending applicant made a mentor is approved, and leaves the review queue.
    await seed_categories()
    career = await Category.select(Category.id).where(Category.slug == "career").first()
    applicant = await community.user("applicant@example.com")
    applied = await api.post(
        f"{API}/mentors/apply",
        headers=applicant.headers,
        json={"headline": "Career coach", "bio": "Ten years.", "category_ids": [str(career["id"])]},
    )
    assert applied.status_code == 201, applied.text
    approved = await api.patch(f"{API}/admin/users/{applicant.id}/role", headers=admin.headers, json={"role": "mentor"})
    assert (approved.json()["role"], approved.json()["mentor_status"]) == ("mentor", "approved")
    assert (await api.get(f"{API}/admin/mentors/pending", headers=admin.headers)).json()["items"] == []
    assert len(await audit("user.role_change")) == 3


# -- audit log ---------------------------------------------------------------------------------


async def test_audit_log_lists_every_admin_action_newest_first(
    api: httpx.AsyncClient, admin: Account, community: Community
) -> None:
    member = await community.user("member@example.com")
    await api.patch(f"{API}/admin/users/{member.id}/role", headers=admin.headers, json={"role": "admin"})
    page = await api.post(f"{API}/admin/cms/pages", headers=admin.headers, json={"slug": "terms", "title": "Terms"})
    faq = await api.post(
        f"{API}/admin/faqs", headers=member.headers, json={"question": "Why?", "answer_markdown": "Because."}
    )
    category = await api.post(f"{API}/admin/categories", headers=admin.headers, json={"slug": "art", "name": "Art"})
    assert {page.status_code, faq.status_code, category.status_code} == {201}

    response = await api.get(f"{API}/admin/audit-log", headers=admin.headers)
    assert response.status_code == 200, response.text
    log = response.json()
    assert [e["action"] for e in log["items"]] == [
        "category.create",
        "faq.create",
        "cms_page.create",
        "user.role_change",
    ]
    assert log["next_cursor"] is None
    faq_entry = log["items"][1]
    assert (faq_entry["actor_id"], faq_entry["actor_email"]) == (member.id, "member@example.com")
    assert (faq_entry["target_type"], faq_entry["target_id"]) == ("faq", faq.json()["id"])
    assert faq_entry["detail"]["question"] == "Why?" and faq_entry["ip"] == "127.0.0.1"

    by_actor = (await api.get(f"{API}/admin/audit-log?actor={member.id}", headers=admin.headers)).json()
    assert [e["action"] for e in by_actor["items"]] == ["faq.create"]
    by_action = (await api.get(f"{API}/admin/audit-log?action=user.role_change", headers=admin.headers)).json()
    assert [e["target_id"] for e in by_action["items"]] == [member.id]
    by_target = await api.get(
        f"{API}/admin/audit-log?target_type=static_page&target_id={page.json()['id']}", headers=admin.headers
    )
    assert [e["action"] for e in by_target.json()["items"]] == ["cms_page.create"]

    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=1" + (f"&cursor={cursor}" if cursor else "")
        chunk = (await api.get(f"{API}/admin/audit-log{query}", headers=admin.headers)).json()
        seen += [e["id"] for e in chunk["items"]]
        if not (cursor := chunk["next_cursor"]):
            break
    assert seen == [e["id"] for e in log["items"]]
    problem(await api.get(f"{API}/admin/audit-log?cursor=%%%", headers=admin.headers), 422, "invalid_cursor")
