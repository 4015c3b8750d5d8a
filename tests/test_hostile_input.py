"""Hostile REST input is refused at the edge: integers past 64 bits, the NUL character
(which PostgreSQL text and jsonb cannot store) and JSON nested too deeply to decode.

Each refusal is a 4xx problem document naming the field, and the database is
byte-for-byte what it was before the request. One parametrised test per route class.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar

from server.domain.tables.accounts import Role, User
from tests.support.accounts import Account
from tests.support.community import Community

API = "/api/v1"
BIG = 2**63  # one past the largest PostgreSQL BIGINT
NUL = "a\x00b"


@dataclass
class World:
    """Accounts and objects every hostile request aims at (ids formatted into the paths)."""

    admin: Account
    mentor: Account
    member: Account
    ids: dict[str, str]


@dataclass(frozen=True)
class Case:
    """One hostile request: ``who`` sends it (None: anonymous); ``field`` must be named in the refusal."""

    method: str
    path: str
    field: str | None
    who: str | None = "member"
    json: Any = None
    params: dict[str, Any] | None = None
    content: bytes | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.field}"


async def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


async def _world(client: httpx.AsyncClient, community: Community) -> World:
    admin = await community.user("admin@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(admin.id))
    mentor = await community.mentor("mentor@example.com")
    member = await community.user("member@example.com")
    lounge = await community.lounge(mentor)
    assert (await community.join(member, lounge)).status_code == 200
    await _ok(await community.post(mentor, f"{API}/lounges/{lounge['id']}", "first"))
    thread = await _ok(await client.post(f"{API}/chat/threads", json={}, headers=member.headers))
    note = await _ok(await client.post(f"{API}/notes", json={"title": "n"}, headers=member.headers))
    category = await _ok(
        await client.post(f"{API}/admin/categories", json={"slug": "focus", "name": "Focus"}, headers=admin.headers)
    )
    faq = await _ok(
        await client.post(f"{API}/admin/faqs", json={"question": "Q?", "answer_markdown": "A"}, headers=admin.headers)
    )
    page = await _ok(
        await client.post(f"{API}/admin/cms/pages", json={"slug": "terms", "title": "Terms"}, headers=admin.headers)
    )
    applicant = await community.user("applicant@example.com")
    application = await _ok(
        await client.post(
            f"{API}/mentors/apply",
            json={"headline": "Helping you grow", "bio": "Years", "category_ids": [category["id"]]},
            headers=applicant.headers,
        )
    )
    ids = {
        "lounge": lounge["id"],
        "thread": thread["id"],
        "note": note["id"],
        "category": category["id"],
        "faq": faq["id"],
        "page": page["id"],
        "application": application["id"],
        "mentor": lounge["mentor_id"],
    }
    return World(admin, mentor, member, ids)


async def _database_digest(app: Litestar) -> dict[str, str]:
    """An md5 of every table's rows: equal digests mean nothing was stored."""
    async with app.state.app_state.engine.pool.acquire() as connection:
        tables = [row[0] for row in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
        query = " UNION ALL ".join(
            f"SELECT '{table}', md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM \"{table}\" t"
            for table in tables
        )
        return {row[0]: row[1] for row in await connection.fetch(query)}


def _assert_refused(case: Case, response: httpx.Response) -> None:
    assert response.status_code in (400, 422), f"{case}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), case
    body = response.json()
    assert body["status"] == response.status_code and body["code"], body
    if case.field is not None:
        assert f"`{case.field}`" in body["detail"], f"{case}: {body}"
        assert case.field in {error.get("key") for error in body["errors"]}, f"{case}: {body}"
    # The client is told what is wrong with its text, not shown a regular expression
    # (an email's own pattern, which also excludes NUL, reports a mismatch instead).
    if case.field != "email" and ("%00" in case.path or "\x00" in repr((case.json, case.params))):
        assert "NUL character (U+0000)" in body["detail"], f"{case}: {body}"


def _cursor(values: list[Any]) -> str:
    """A cursor as the API encodes one (URL-safe base64 of a JSON array), holding ``values``."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


NOON = "2026-01-01T12:00:00+00:00"


def _deeply_nested(depth: int = 100_000) -> bytes:
    return b'{"title": ' + b"[" * depth + b"]" * depth + b"}"


L = f"{API}/lounges/{{lounge}}"
T = f"{API}/chat/threads/{{thread}}"

CASES: dict[str, list[Case]] = {
    "lounges": [
        Case("GET", f"{API}/lounges", "cursor", who=None, params={"cursor": NUL}),
        Case("GET", f"{API}/lounges", "q", who=None, params={"q": NUL}),
        Case("GET", f"{L}/members", "cursor", params={"cursor": NUL}),
        Case("GET", f"{L}/messages", "cursor", params={"cursor": NUL}),
        # A well-formed cursor with an unstorable value inside: refused, never sent to PostgreSQL.
        Case("GET", f"{L}/messages", None, params={"cursor": _cursor(["after", BIG])}),
        Case("GET", f"{API}/lounges", None, who=None, params={"cursor": _cursor([NUL, str(uuid.uuid4())])}),
        Case("POST", f"{API}/lounges", "title", who="mentor", json={"title": NUL}),
        Case("POST", f"{API}/lounges", "description", who="mentor", json={"title": "t", "description": NUL}),
        Case("POST", f"{API}/lounges", "ai_persona", who="mentor", json={"title": "t", "ai_persona": NUL}),
        Case("PUT", L, "title", who="mentor", json={"title": NUL}),
        Case("POST", f"{API}/lounges", None, who="mentor", content=_deeply_nested()),
    ],
    "messages": [
        Case("GET", f"{L}/messages", "before", params={"before": BIG}),
        Case("GET", f"{L}/messages", "after", params={"after": BIG}),
        Case("POST", f"{L}/messages", "reply_to", json={"client_id": str(uuid.uuid4()), "text": "t", "reply_to": BIG}),
        Case("POST", f"{L}/messages", "text", json={"client_id": str(uuid.uuid4()), "text": NUL}),
        Case("PATCH", f"{L}/messages/{BIG}", "offset", who="mentor", json={"text": "t"}),
        Case("PATCH", f"{L}/messages/1", "text", who="mentor", json={"text": NUL}),
        Case("DELETE", f"{L}/messages/{BIG}", "offset", who="mentor"),
        Case("POST", f"{L}/messages/{BIG}/reactions", "offset", json={"emoji": "+1"}),
        Case("POST", f"{L}/messages/1/reactions", "emoji", json={"emoji": NUL}),
        Case("DELETE", f"{L}/messages/{BIG}/reactions/x", "offset"),
        Case("DELETE", f"{L}/messages/1/reactions/a%00", "emoji"),
        Case("POST", f"{L}/read", "offset", json={"offset": BIG}),
        Case("POST", f"{L}/messages", None, content=_deeply_nested()),
    ],
    "threads": [
        Case("GET", f"{API}/chat/threads", "cursor", params={"cursor": NUL}),
        Case("POST", f"{API}/chat/threads", "title", json={"title": NUL}),
        Case("PATCH", T, "title", json={"title": NUL}),
        Case("GET", f"{T}/messages", "before", params={"before": BIG}),
        Case("POST", f"{T}/messages", "text", json={"client_id": str(uuid.uuid4()), "text": NUL}),
        Case("PATCH", f"{T}/messages/{BIG}", "offset", json={"text": "t"}),
        Case("POST", f"{T}/read", "offset", json={"offset": BIG}),
    ],
    "accounts": [
        Case(
            "POST", f"{API}/auth/register", "email", None, json={"email": f"x{NUL}@example.com", "password": "x" * 12}
        ),
        Case(
            "POST",
            f"{API}/auth/register",
            "full_name",
            None,
            json={"email": "new@example.com", "password": "long enough password", "full_name": NUL},
        ),
        Case("POST", f"{API}/auth/login", "email", None, json={"email": f"member{NUL}@example.com", "password": "x"}),
        Case("POST", f"{API}/auth/verify-email/resend", "email", None, json={"email": f"m{NUL}@example.com"}),
        Case("POST", f"{API}/auth/forgot-password", "email", None, json={"email": f"m{NUL}@example.com"}),
        Case("PUT", f"{API}/users/me", "full_name", json={"full_name": NUL}),
        Case("PUT", f"{API}/users/me", "notification_prefs", json={"notification_prefs": {NUL: True}}),
        Case("POST", f"{API}/auth/register", None, None, content=_deeply_nested()),
    ],
    "mentors": [
        Case("GET", f"{API}/mentors", "q", None, params={"q": NUL}),
        Case("GET", f"{API}/mentors", "category", None, params={"category": NUL}),
        Case("POST", f"{API}/mentors/apply", "headline", json={"headline": NUL, "bio": "b", "category_ids": []}),
        Case("POST", f"{API}/mentors/apply", "bio", json={"headline": "hello", "bio": NUL, "category_ids": []}),
        Case("POST", f"{API}/admin/categories", "name", "admin", json={"slug": "new", "name": NUL}),
        Case("PUT", f"{API}/admin/categories/{{category}}", "description", "admin", json={"description": NUL}),
        Case("POST", f"{API}/admin/mentors/{{application}}/reject", "reason", "admin", json={"reason": NUL}),
    ],
    "notes": [
        Case("GET", f"{API}/notes", "cursor", params={"cursor": NUL}),
        Case("GET", f"{API}/notes", None, params={"cursor": _cursor([True, "2026-01-01T00:00:00+00:00", NUL])}),
        Case("GET", f"{API}/notes", "tag", params={"tag": NUL}),
        Case("POST", f"{API}/notes", "title", json={"title": NUL}),
        Case("POST", f"{API}/notes", "content", json={"content": NUL}),
        Case("PATCH", f"{API}/notes/{{note}}", "content", json={"content": NUL}),
        Case("POST", f"{API}/notes/search", "query", json={"query": NUL}),
        Case("POST", f"{API}/notes", None, content=_deeply_nested()),
    ],
    "capsules": [
        Case("POST", f"{API}/capsules", "title", json={"title": NUL, "content": "c", "unlock_at": "{unlock_at}"}),
        Case("POST", f"{API}/capsules", "content", json={"title": "t", "content": NUL, "unlock_at": "{unlock_at}"}),
    ],
    "cms": [
        Case("GET", f"{API}/cms/faqs", "category", None, params={"category": NUL}),
        Case("POST", f"{API}/admin/faqs", "question", "admin", json={"question": NUL, "answer_markdown": "a"}),
        Case("POST", f"{API}/admin/faqs", "answer_markdown", "admin", json={"question": "q", "answer_markdown": NUL}),
        Case("PUT", f"{API}/admin/faqs/{{faq}}", "category", "admin", json={"category": NUL}),
        Case("GET", f"{API}/admin/faqs", "category", "admin", params={"category": NUL}),
        Case("GET", f"{API}/admin/faqs", None, "admin", params={"cursor": _cursor([NUL, 0, NOON, str(uuid.uuid4())])}),
        Case(
            "GET", f"{API}/admin/faqs", None, "admin", params={"cursor": _cursor(["a", BIG, NOON, str(uuid.uuid4())])}
        ),
        Case(
            "GET", f"{API}/admin/cms/pages", None, "admin", params={"cursor": _cursor([NUL, NOON, str(uuid.uuid4())])}
        ),
        Case("POST", f"{API}/admin/cms/pages", "title", "admin", json={"slug": "new", "title": NUL}),
        Case("PUT", f"{API}/admin/cms/pages/{{page}}", "body_markdown", "admin", json={"body_markdown": NUL}),
    ],
    "admin, files, billing": [
        Case("GET", f"{API}/admin/users", "q", "admin", params={"q": NUL}),
        Case("GET", f"{API}/admin/audit-log", "action", "admin", params={"action": NUL}),
        Case("GET", f"{API}/admin/audit-log", "target_type", "admin", params={"target_type": NUL}),
        Case("GET", f"{API}/admin/audit-log", "target_id", "admin", params={"target_id": NUL}),
        Case("GET", f"{API}/files", "cursor", params={"cursor": NUL}),
        Case("GET", f"{API}/billing/invoices", "cursor", params={"cursor": NUL}),
        Case("GET", f"{API}/users/me/exports", "cursor", params={"cursor": NUL}),
        Case("GET", f"{API}/mentors/{{mentor}}/lounges", "cursor", None, params={"cursor": NUL}),
    ],
}


def _filled(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids) if "{" in value else value
    if isinstance(value, dict):
        return {_filled(key, ids): _filled(item, ids) for key, item in value.items()}
    return value


@pytest.mark.parametrize("route_class", list(CASES))
async def test_hostile_input_is_refused_naming_the_field_and_nothing_is_stored(
    route_class: str, app: Litestar, client: httpx.AsyncClient, community: Community
) -> None:
    world = await _world(client, community)
    ids = {**world.ids, "unlock_at": (datetime.now(UTC) + timedelta(days=30)).isoformat()}
    accounts = {"admin": world.admin, "mentor": world.mentor, "member": world.member}
    failures = []
    for case in CASES[route_class]:
        headers = accounts[case.who].headers if case.who else {}
        if case.content is not None:
            headers = {**headers, "Content-Type": "application/json"}
        before = await _database_digest(app)
        response = await client.request(
            case.method,
            case.path.format(**ids),
            json=_filled(case.json, ids),
            params=case.params,
            content=case.content,
            headers=headers,
        )
        try:
            _assert_refused(case, response)
            assert await _database_digest(app) == before, f"{case} stored something"
        except AssertionError as failure:
            failures.append(str(failure).splitlines()[0])
    assert not failures, "\n".join(failures)
