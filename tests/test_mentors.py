"""The community domain over HTTP: categories, mentor applications, the mentor
directory, and the admin review with its notifications and audit log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.domain.mentors.services import STARTER_CATEGORIES, seed_categories
from server.domain.tables.accounts import Role, User
from server.domain.tables.admin import AdminAuditLog
from server.domain.tables.lounges import Lounge
from server.domain.tables.mentors import Mentor
from server.domain.tables.notifications import Notification
from tests.support.accounts import Account, signed_in
from tests.support.pages import envelope, walk

ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1"


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client for the community routes."""
    return client


@pytest.fixture
def verified(api: httpx.AsyncClient, mailbox, run_jobs):
    """``await verified(email, full_name=...)``: a signed-in account with a verified email."""

    async def make(email: str, full_name: str | None = None) -> Account:
        account = await signed_in(api, email, verified_by=(mailbox, run_jobs))
        if full_name:
            response = await api.put(f"{API}/users/me", headers=account.headers, json={"full_name": full_name})
            assert response.status_code == 200, response.text
        return account

    return make


@pytest.fixture
async def admin(verified) -> Account:
    account = await verified("admin@example.com")
    await User.update({User.role: Role.admin}).where(User.email == account.email)
    return account


@pytest.fixture
async def categories(api: httpx.AsyncClient) -> dict[str, str]:
    """The starter categories (tables are emptied before each test), by slug."""
    await seed_categories()
    return {c["slug"]: c["id"] for c in (await api.get(f"{API}/categories")).json()["items"]}


async def apply(
    api: httpx.AsyncClient,
    account: Account,
    category_ids: list[str],
    headline: str = "Helping you grow",
    bio: str = "Ten years of coaching.",
) -> httpx.Response:
    return await api.post(
        f"{API}/mentors/apply",
        headers=account.headers,
        json={"headline": headline, "bio": bio, "category_ids": category_ids},
    )


async def applied(api: httpx.AsyncClient, account: Account, category_ids: list[str], **fields: str) -> dict[str, Any]:
    response = await apply(api, account, category_ids, **fields)
    assert response.status_code == 201, response.text
    return response.json()


async def approved_mentor(
    api: httpx.AsyncClient, admin: Account, account: Account, category_ids: list[str], **fields: str
) -> dict[str, Any]:
    application = await applied(api, account, category_ids, **fields)
    response = await api.patch(f"{API}/admin/mentors/{application['id']}/approve", headers=admin.headers)
    assert response.status_code == 200, response.text
    return response.json()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    return body


async def audit_rows(action: str) -> list[dict[str, Any]]:
    rows = await AdminAuditLog.select().where(AdminAuditLog.action == action).order_by(AdminAuditLog.created_at)
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


async def notifications_of(account: Account) -> list[dict[str, Any]]:
    rows = await Notification.select().where(Notification.user == account.id).order_by(Notification.created_at)
    return [{**row, "data": json.loads(row["data"])} for row in rows]


# -- categories --------------------------------------------------------------------------------


async def test_categories_are_public_and_in_display_order(api: httpx.AsyncClient) -> None:
    assert (await api.get(f"{API}/categories")).json() == {"items": [], "next_cursor": None}
    assert await seed_categories() == len(STARTER_CATEGORIES)
    assert await seed_categories() == 0  # idempotent

    listed = (await api.get(f"{API}/categories")).json()["items"]
    assert [c["slug"] for c in listed] == [c["slug"] for c in STARTER_CATEGORIES]
    assert [c["position"] for c in listed] == sorted(c["position"] for c in listed)
    assert {
        "career",
        "fitness",
        "mindfulness",
        "productivity",
        "relationships",
        "leadership",
        "finance",
        "creativity",
    } == {c["slug"] for c in listed}
    assert all(c["name"] and c["description"] for c in listed)


async def test_a_freshly_migrated_database_holds_the_starter_categories(empty_database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    migrated = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    connection = await asyncpg.connect(empty_database_url)
    try:
        rows = await connection.fetch("SELECT slug, name, description, position FROM categories ORDER BY position")
    finally:
        await connection.close()
    assert [dict(row) for row in rows] == [dict(c) for c in STARTER_CATEGORIES]


async def test_admin_creates_edits_and_deletes_categories(api: httpx.AsyncClient, admin: Account) -> None:
    await seed_categories()
    created = await api.post(
        f"{API}/admin/categories",
        headers=admin.headers,
        json={"slug": "parenting", "name": "Parenting", "description": "Raising children."},
    )
    assert created.status_code == 201, created.text
    parenting = created.json()
    assert parenting["position"] == max(c["position"] for c in STARTER_CATEGORIES) + 10  # appended
    assert (await api.get(f"{API}/categories")).json()["items"][-1]["slug"] == "parenting"

    duplicate = await api.post(
        f"{API}/admin/categories", headers=admin.headers, json={"slug": "parenting", "name": "Again"}
    )
    assert_problem(duplicate, 409, "category_slug_taken")

    first = await api.post(
        f"{API}/admin/categories", headers=admin.headers, json={"slug": "first", "name": "First", "position": 0}
    )
    assert first.status_code == 201
    assert (await api.get(f"{API}/categories")).json()["items"][0]["slug"] == "first"

    updated = await api.put(
        f"{API}/admin/categories/{parenting['id']}",
        headers=admin.headers,
        json={"slug": "family", "name": "Family life"},
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["slug"], updated.json()["name"], updated.json()["description"]) == (
        "family",
        "Family life",
        "Raising children.",
    )
    taken = await api.put(f"{API}/admin/categories/{parenting['id']}", headers=admin.headers, json={"slug": "career"})
    assert_problem(taken, 409, "category_slug_taken")
    missing = await api.put(f"{API}/admin/categories/{uuid.uuid4()}", headers=admin.headers, json={"name": "X"})
    assert_problem(missing, 404, "category_not_found")

    deleted = await api.delete(f"{API}/admin/categories/{parenting['id']}", headers=admin.headers)
    assert deleted.status_code == 204
    assert "family" not in {c["slug"] for c in (await api.get(f"{API}/categories")).json()["items"]}
    assert_problem(
        await api.delete(f"{API}/admin/categories/{parenting['id']}", headers=admin.headers), 404, "category_not_found"
    )

    [create_row, _] = await audit_rows("category.create")
    assert (create_row["actor"], create_row["target_type"], create_row["target_id"]) == (
        uuid.UUID(admin.id),
        "category",
        parenting["id"],
    )
    assert create_row["ip"] == "127.0.0.1"
    [update_row] = await audit_rows("category.update")
    assert update_row["detail"]["changes"] == {"slug": "family", "name": "Family life"}
    assert update_row["detail"]["before"] == {"slug": "parenting", "name": "Parenting"}
    [delete_row] = await audit_rows("category.delete")
    assert delete_row["detail"]["slug"] == "family"


async def test_category_input_is_validated(api: httpx.AsyncClient, admin: Account) -> None:
    await seed_categories()
    career = next(c for c in (await api.get(f"{API}/categories")).json()["items"] if c["slug"] == "career")
    for body in (
        {"slug": "Not A Slug", "name": "X"},
        {"slug": "-dash", "name": "X"},
        {"slug": "x" * 81, "name": "X"},
        {"slug": "ok", "name": ""},
        {"slug": "ok", "name": "x" * 101},
        {"slug": "ok", "name": "X", "description": "d" * 2001},
        {"slug": "ok", "name": "X", "position": -1},
        {"slug": "ok", "name": "X", "colour": "red"},
        {"name": "X"},
    ):
        assert_problem(
            await api.post(f"{API}/admin/categories", headers=admin.headers, json=body), 422, "validation_failed"
        )
    assert_problem(
        await api.post(f"{API}/admin/categories", headers=admin.headers, json={"slug": "ok", "name": "   "}),
        422,
        "invalid_category_name",
    )
    for body in ({"slug": "Bad Slug"}, {"id": str(uuid.uuid4())}, {"position": "first"}):
        response = await api.put(f"{API}/admin/categories/{career['id']}", headers=admin.headers, json=body)
        assert_problem(response, 422, "validation_failed")
    assert (await api.put(f"{API}/admin/categories/not-a-uuid", headers=admin.headers, json={})).status_code in (
        404,
        422,
    )
    assert await AdminAuditLog.count() == 0


# -- applications and review -------------------------------------------------------------------


async def test_apply_then_approve_makes_a_mentor(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    user = await verified("coach@example.com", full_name="Ada Coach")
    assert_problem(await api.get(f"{API}/mentors/me", headers=user.headers), 404, "mentor_application_not_found")

    application = await applied(
        api, user, [categories["career"], categories["leadership"], categories["career"]], headline="  Lead with care  "
    )
    assert (application["status"], application["headline"], application["full_name"]) == (
        "pending",
        "Lead with care",
        "Ada Coach",
    )
    assert [c["slug"] for c in application["categories"]] == ["career", "leadership"]
    assert application["rejection_reason"] is None and application["reviewed_at"] is None
    mentor_id = application["id"]
    assert (await api.get(f"{API}/mentors/me", headers=user.headers)).json()["status"] == "pending"

    # Not public yet; visible to the applicant (and admins) only.
    assert (await api.get(f"{API}/mentors")).json()["items"] == []
    assert_problem(await api.get(f"{API}/mentors/{mentor_id}"), 404, "mentor_not_found")
    stranger = await verified("stranger@example.com")
    assert_problem(await api.get(f"{API}/mentors/{mentor_id}", headers=stranger.headers), 404, "mentor_not_found")
    own = await api.get(f"{API}/mentors/{mentor_id}", headers=user.headers)
    assert own.status_code == 200 and own.json()["status"] == "pending"
    assert (await api.get(f"{API}/mentors/{mentor_id}", headers=admin.headers)).status_code == 200

    pending = (await api.get(f"{API}/admin/mentors/pending", headers=admin.headers)).json()
    assert [(p["id"], p["email"], p["status"]) for p in pending["items"]] == [
        (mentor_id, "coach@example.com", "pending")
    ]
    assert pending["next_cursor"] is None

    assert_problem(await apply(api, user, [categories["fitness"]]), 409, "mentor_application_exists")

    approved = await api.patch(f"{API}/admin/mentors/{mentor_id}/approve", headers=admin.headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["reviewed_at"]

    me = (await api.get(f"{API}/users/me", headers=user.headers)).json()
    assert me["role"] == "mentor"
    row = await Mentor.select().where(Mentor.id == mentor_id).first()
    assert (row["status"], row["reviewed_by"]) == ("approved", uuid.UUID(admin.id))

    [note] = await notifications_of(user)
    assert note["kind"] == "mentor.approved" and note["title"]
    assert note["data"] == {"mentor_id": mentor_id}
    [audit] = await audit_rows("mentor.approve")
    assert (audit["actor"], audit["target_type"], audit["target_id"], audit["ip"]) == (
        uuid.UUID(admin.id),
        "mentor",
        mentor_id,
        "127.0.0.1",
    )

    assert (await api.get(f"{API}/admin/mentors/pending", headers=admin.headers)).json()["items"] == []
    public = (await api.get(f"{API}/mentors/{mentor_id}")).json()
    assert (public["status"], public["full_name"], public["approved_at"]) == (
        "approved",
        "Ada Coach",
        approved.json()["reviewed_at"],
    )
    assert [m["id"] for m in (await api.get(f"{API}/mentors")).json()["items"]] == [mentor_id]

    # Approved is final: no second review, no new application.
    assert_problem(
        await api.post(f"{API}/admin/mentors/{mentor_id}/approve", headers=admin.headers), 409, "mentor_not_pending"
    )
    rejected = await api.post(f"{API}/admin/mentors/{mentor_id}/reject", headers=admin.headers, json={"reason": "late"})
    assert_problem(rejected, 409, "mentor_not_pending")
    assert_problem(await apply(api, user, [categories["career"]]), 409, "mentor_application_exists")
    assert len(await audit_rows("mentor.approve")) == 1 and await audit_rows("mentor.reject") == []


async def test_rejection_tells_the_reason_and_allows_applying_again(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    user = await verified("hopeful@example.com")
    first = await applied(api, user, [categories["fitness"]], headline="Run with me")

    rejected = await api.post(
        f"{API}/admin/mentors/{first['id']}/reject",
        headers=admin.headers,
        json={"reason": "  Please add your certifications.  "},
    )
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["status"], rejected.json()["rejection_reason"]) == (
        "rejected",
        "Please add your certifications.",
    )
    assert (await api.get(f"{API}/users/me", headers=user.headers)).json()["role"] == "user"

    [note] = await notifications_of(user)
    assert note["kind"] == "mentor.rejected"
    assert note["data"] == {"mentor_id": first["id"], "reason": "Please add your certifications."}
    assert "Please add your certifications." in note["body"]
    [audit] = await audit_rows("mentor.reject")
    assert audit["detail"]["reason"] == "Please add your certifications." and audit["target_id"] == first["id"]

    mine = (await api.get(f"{API}/mentors/me", headers=user.headers)).json()
    assert (mine["status"], mine["rejection_reason"]) == ("rejected", "Please add your certifications.")
    assert_problem(await api.get(f"{API}/mentors/{first['id']}"), 404, "mentor_not_found")
    assert (await api.get(f"{API}/admin/mentors/pending", headers=admin.headers)).json()["items"] == []

    again = await applied(
        api, user, [categories["fitness"], categories["mindfulness"]], headline="Certified running coach"
    )
    assert again["id"] == first["id"]
    assert (again["status"], again["rejection_reason"], again["reviewed_at"]) == ("pending", None, None)
    assert again["headline"] == "Certified running coach"
    assert [c["slug"] for c in again["categories"]] == ["fitness", "mindfulness"]
    assert again["submitted_at"] > first["submitted_at"]
    assert [
        p["id"] for p in (await api.get(f"{API}/admin/mentors/pending", headers=admin.headers)).json()["items"]
    ] == [first["id"]]
    assert_problem(await apply(api, user, [categories["fitness"]]), 409, "mentor_application_exists")

    await approved_review(api, admin, first["id"])
    assert (await api.get(f"{API}/users/me", headers=user.headers)).json()["role"] == "mentor"
    kinds = [n["kind"] for n in await notifications_of(user)]
    assert kinds == ["mentor.rejected", "mentor.approved"]


async def approved_review(api: httpx.AsyncClient, admin: Account, mentor_id: str) -> None:
    response = await api.post(f"{API}/admin/mentors/{mentor_id}/approve", headers=admin.headers)
    assert response.status_code == 200, response.text


async def test_an_admin_who_applies_keeps_the_admin_role(
    api: httpx.AsyncClient, admin: Account, categories: dict[str, str]
) -> None:
    application = await applied(api, admin, [categories["career"]])
    await approved_review(api, admin, application["id"])
    assert (await api.get(f"{API}/users/me", headers=admin.headers)).json()["role"] == "admin"


async def test_only_verified_users_may_apply(api: httpx.AsyncClient, categories: dict[str, str]) -> None:
    unverified = await signed_in(api, "fresh@example.com")
    assert_problem(await apply(api, unverified, [categories["career"]]), 403, "email_unverified")
    anonymous = await api.post(
        f"{API}/mentors/apply", json={"headline": "Hello there", "bio": "Bio", "category_ids": [categories["career"]]}
    )
    assert_problem(anonymous, 401, "missing_token")
    assert_problem(await api.get(f"{API}/mentors/me"), 401, "missing_token")
    assert await Mentor.count() == 0


async def test_application_input_is_validated(api: httpx.AsyncClient, verified, categories: dict[str, str]) -> None:
    user = await verified("careful@example.com")
    unknown = str(uuid.uuid4())
    body = assert_problem(await apply(api, user, [categories["career"], unknown]), 422, "category_not_found")
    assert body["category_ids"] == [unknown]
    assert_problem(await apply(api, user, [categories["career"]], headline="   "), 422, "invalid_headline")
    assert_problem(await apply(api, user, [categories["career"]], bio="  \n "), 422, "invalid_bio")
    career = categories["career"]
    for payload in (
        {"headline": "Hello there", "bio": "Bio", "category_ids": []},
        {"headline": "Hello there", "bio": "Bio", "category_ids": [str(uuid.uuid4()) for _ in range(11)]},
        {"headline": "Hello there", "bio": "Bio", "category_ids": ["career"]},
        {"headline": "Hi", "bio": "Bio", "category_ids": [career]},
        {"headline": "h" * 201, "bio": "Bio", "category_ids": [career]},
        {"headline": "Hello there", "bio": "b" * 5001, "category_ids": [career]},
        {"headline": "Hello there", "category_ids": [career]},
        {"headline": "Hello there", "bio": "Bio", "category_ids": [career], "status": "approved"},
    ):
        response = await api.post(f"{API}/mentors/apply", headers=user.headers, json=payload)
        assert_problem(response, 422, "validation_failed")
    assert await Mentor.count() == 0


async def test_admin_routes_refuse_everyone_else(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    user = await verified("member@example.com")
    mentor = await verified("mentor@example.com")
    application = await applied(api, mentor, [categories["career"]])
    await User.update({User.role: Role.mentor}).where(User.email == mentor.email)
    target, category = application["id"], categories["career"]
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"{API}/admin/mentors/pending", None),
        ("PATCH", f"{API}/admin/mentors/{target}/approve", None),
        ("POST", f"{API}/admin/mentors/{target}/approve", None),
        ("PATCH", f"{API}/admin/mentors/{target}/reject", {"reason": "no"}),
        ("POST", f"{API}/admin/mentors/{target}/reject", {"reason": "no"}),
        ("POST", f"{API}/admin/categories", {"slug": "new", "name": "New"}),
        ("PUT", f"{API}/admin/categories/{category}", {"name": "Renamed"}),
        ("DELETE", f"{API}/admin/categories/{category}", None),
    ]
    for method, path, body in routes:
        anonymous = await api.request(method, path, json=body)
        assert_problem(anonymous, 401, "missing_token")
        for account in (user, mentor):
            refused = await api.request(method, path, json=body, headers=account.headers)
            assert_problem(refused, 403, "role_required")
    # Who is calling is settled before the body is looked at.
    bad_body = {"slug": "Not A Slug", "extra": True}
    assert_problem(await api.post(f"{API}/admin/categories", json=bad_body), 401, "missing_token")
    assert_problem(await api.post(f"{API}/admin/categories", json=bad_body, headers=user.headers), 403, "role_required")
    assert (await Mentor.select(Mentor.status).where(Mentor.id == target).first())["status"] == "pending"
    assert next(c["name"] for c in (await api.get(f"{API}/categories")).json()["items"]) == "Career"
    assert await AdminAuditLog.count() == 0


async def test_review_input_is_validated(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    user = await verified("pending@example.com")
    target = (await applied(api, user, [categories["career"]]))["id"]
    reject = f"{API}/admin/mentors/{target}/reject"
    for body in ({}, {"reason": ""}, {"reason": "r" * 1001}, {"reason": "ok", "note": "x"}):
        assert_problem(await api.post(reject, headers=admin.headers, json=body), 422, "validation_failed")
    assert_problem(await api.post(reject, headers=admin.headers), 422, "validation_failed")  # no body
    assert_problem(await api.patch(reject, headers=admin.headers, json={"reason": "   "}), 422, "reason_required")
    unknown = uuid.uuid4()
    assert_problem(
        await api.patch(f"{API}/admin/mentors/{unknown}/approve", headers=admin.headers), 404, "mentor_not_found"
    )
    assert_problem(
        await api.post(f"{API}/admin/mentors/{unknown}/reject", headers=admin.headers, json={"reason": "x"}),
        404,
        "mentor_not_found",
    )
    for query in ("limit=0", "limit=101", "cursor=%25%25%25"):
        response = await api.get(f"{API}/admin/mentors/pending?{query}", headers=admin.headers)
        assert response.status_code == 422, (query, response.text)
    assert (await Mentor.select(Mentor.status).where(Mentor.id == target).first())["status"] == "pending"
    assert await Notification.count() == 0 and await AdminAuditLog.count() == 0


async def test_pending_queue_pages_oldest_first(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    ids = []
    for i in range(5):
        account = await verified(f"queue{i}@example.com")
        ids.append((await applied(api, account, [categories["career"]]))["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(f"{API}/admin/mentors/pending", headers=admin.headers, params=params)).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


# -- the directory -----------------------------------------------------------------------------


async def test_directory_filters_searches_and_pages_each_mentor_once(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    c = categories
    people = [
        ("ada@example.com", "Ada Lovelace", "Analytical career coaching", [c["career"], c["leadership"]]),
        (
            "grace@example.com",
            "Grace Hopper",
            "Leadership for engineers",
            [c["leadership"], c["career"], c["productivity"]],
        ),
        ("alan@example.com", "Alan Turing", "Run, think, repeat", [c["fitness"]]),
        (
            "edsger@example.com",
            "Edsger Dijkstra",
            "Mindful focus: 100% attention",
            [c["mindfulness"], c["productivity"]],
        ),
        ("barbara@example.com", "Barbara Liskov", "Money without substitutes", [c["finance"]]),
    ]
    mentors: dict[str, str] = {}
    for email, name, headline, category_ids in people:
        account = await verified(email, full_name=name)
        mentors[name] = (await approved_mentor(api, admin, account, category_ids, headline=headline))["id"]
    pending = await verified("pat@example.com", full_name="Pat Pending")
    await applied(api, pending, [c["career"]], headline="Career coaching soon")
    refused = await verified("rex@example.com", full_name="Rex Rejected")
    refused_id = (await applied(api, refused, [c["career"]], headline="Career coaching never"))["id"]
    await api.post(f"{API}/admin/mentors/{refused_id}/reject", headers=admin.headers, json={"reason": "no"})

    async def names(**params: Any) -> list[str]:
        response = await api.get(f"{API}/mentors", params=params)
        assert response.status_code == 200, response.text
        return [m["full_name"] for m in response.json()["items"]]

    everyone = await names(limit=100)
    assert everyone == [name for _, name, _, _ in reversed(people)]  # newest approval first, each once
    assert await names() == everyone  # default page size covers them
    assert set(await names(category="career")) == {"Ada Lovelace", "Grace Hopper"}
    assert set(await names(category="productivity")) == {"Grace Hopper", "Edsger Dijkstra"}
    assert await names(category="creativity") == []
    assert await names(category="no-such-slug") == []
    assert await names(q="grace") == ["Grace Hopper"]  # by name, case-insensitive
    assert set(await names(q="LEADERSHIP")) == {"Grace Hopper"}  # by headline
    assert set(await names(q="career")) == {"Ada Lovelace"}  # pending and rejected stay hidden
    assert await names(q="100%") == ["Edsger Dijkstra"]
    assert await names(q="%") == ["Edsger Dijkstra"]  # wildcards are taken literally
    assert await names(q="_") == []
    assert await names(q="engineers", category="leadership") == ["Grace Hopper"]
    assert await names(q="hopper", category="finance") == []

    ada = next(m for m in (await api.get(f"{API}/mentors", params={"q": "ada"})).json()["items"])
    assert ada["id"] == mentors["Ada Lovelace"] and ada["status"] == "approved"
    assert [x["slug"] for x in ada["categories"]] == ["career", "leadership"]  # in category order
    assert "email" not in ada and "rejection_reason" not in ada

    # Paging: every mentor exactly once, in order, also with a filter.
    for params in ({}, {"category": "leadership"}, {"q": "a"}):
        seen, cursor, pages = [], None, 0
        while True:
            query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await api.get(f"{API}/mentors", params=query)).json()
            assert len(page["items"]) <= 2
            seen += [m["full_name"] for m in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == await names(limit=100, **params), params
        assert len(seen) == len(set(seen)) and pages == max(1, -(-len(seen) // 2))

    # A disabled account's profile disappears.
    await User.update({User.is_active: False}).where(User.email == "alan@example.com")
    assert "Alan Turing" not in await names(limit=100)
    assert_problem(await api.get(f"{API}/mentors/{mentors['Alan Turing']}"), 404, "mentor_not_found")

    for query in (
        "limit=0",
        "limit=101",
        "limit=two",
        "cursor=bm90IGEgY3Vyc29y",
        f"q={'q' * 101}",
        f"category={'c' * 81}",
    ):
        assert_problem(
            await api.get(f"{API}/mentors?{query}"), 422, "invalid_cursor" if "cursor" in query else "validation_failed"
        )
    assert_problem(await api.get(f"{API}/mentors/{uuid.uuid4()}"), 404, "mentor_not_found")


async def test_mentor_lounges_lists_the_open_ones(
    api: httpx.AsyncClient, admin: Account, verified, categories: dict[str, str]
) -> None:
    account = await verified("host@example.com")
    mentor = await approved_mentor(api, admin, account, [categories["mindfulness"]])
    other = await verified("other@example.com")
    waiting = await applied(api, other, [categories["career"]])

    def lounge(mentor_id: str, title: str, **fields: Any) -> Lounge:
        lounge_id = uuid.uuid4()
        return Lounge(
            id=lounge_id,
            mentor=mentor_id,
            title=title,
            description=f"About {title}",
            ai_persona="calm",
            channel=f"lounge:{lounge_id}",
            **fields,
        )

    morning = lounge(mentor["id"], "Morning calm", category=categories["mindfulness"])
    evening = lounge(mentor["id"], "Evening wind-down", access="paid")
    closed = lounge(mentor["id"], "Old room", archived_at=datetime.now(UTC))
    for row in (morning, evening, closed):
        await Lounge.insert(row)
    await Lounge.insert(lounge(waiting["id"], "Not yet"))

    listed = envelope(await api.get(f"{API}/mentors/{mentor['id']}/lounges"))
    assert [(item["title"], item["access"], item["channel"]) for item in listed["items"]] == [
        ("Morning calm", "public", f"lounge:{morning.id}"),
        ("Evening wind-down", "paid", f"lounge:{evening.id}"),
    ]
    assert listed["next_cursor"] is None
    first = listed["items"][0]
    assert first["id"] == str(morning.id) and first["description"] == "About Morning calm"
    assert first["category"] == {"id": categories["mindfulness"], "slug": "mindfulness", "name": "Mindfulness"}
    assert listed["items"][1]["category"] is None
    assert await walk(api, f"{API}/mentors/{mentor['id']}/lounges", limit=1) == listed["items"]
    assert_problem(await api.get(f"{API}/mentors/{mentor['id']}/lounges?cursor=bogus"), 422, "invalid_cursor")

    assert_problem(await api.get(f"{API}/mentors/{waiting['id']}/lounges"), 404, "mentor_not_found")
    own = await api.get(f"{API}/mentors/{waiting['id']}/lounges", headers=other.headers)
    assert [item["title"] for item in own.json()["items"]] == ["Not yet"]
    assert_problem(await api.get(f"{API}/mentors/{uuid.uuid4()}/lounges"), 404, "mentor_not_found")
    bad_token = await api.get(f"{API}/mentors/{mentor['id']}/lounges", headers={"Authorization": "Bearer nonsense"})
    assert bad_token.status_code == 401
