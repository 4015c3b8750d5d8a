"""HTTP transport for ``/api/v1/cms`` (published pages and FAQs, cacheable) and their
admin editing under ``/api/v1/admin/cms/pages`` and ``/api/v1/admin/faqs``."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED

from server.domain.accounts.services import ClientInfo, Principal
from server.domain.cms import services
from server.domain.cms.schemas import (
    AdminFaqList,
    AdminFaqOut,
    AdminPageList,
    AdminPageOut,
    FaqCreate,
    FaqList,
    FaqUpdate,
    PageCreate,
    PageOut,
    PageUpdate,
)
from server.foundation.state import AppState
from server.http.params import Cursor, text_query
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Admin = NamedDependency[Principal]
Client = NamedDependency[ClientInfo]

# A client or shared cache may reuse a public CMS answer for a minute unasked, then revalidates.
CACHE_CONTROL = "public, max-age=60"
Limit = Annotated[int, QueryParameter(ge=1, le=services.MAX_PAGE_SIZE, description="page size")]
IfNoneMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-None-Match",
        max_length=2000,
        required=False,
        description="the ETag of a copy you hold: 304 without a body while it is current",
        examples=[Example(value='"5d41402abc4b2a76b9719d911017c592"')],
    ),
]


# -- conditional GET ---------------------------------------------------------------------------


def strong_etag(body: Any) -> str:
    """A strong validator: the hash of the whole representation (rendered HTML, source, updated_at...)."""
    return '"' + hashlib.sha256(msgspec.json.encode(body)).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against each listed tag, or ``*``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def cacheable(body: Any, if_none_match: str | None) -> Response[Any]:
    """200 with ``ETag`` and ``Cache-Control``, or 304 (same headers, no body) when the client's copy is current."""
    etag = strong_etag(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(if_none_match, etag):
        return Response(content=b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(content=body, headers=headers)


_CONDITIONAL = {
    HTTP_304_NOT_MODIFIED: ResponseSpec(data_container=None, description="Not modified: your copy is current")
}


# -- public ------------------------------------------------------------------------------------


class CmsController(Controller):
    """Published static pages and FAQs, Markdown rendered to sanitized HTML. No sign-in needed."""

    path = "/cms"
    tags = ["cms"]

    @get("/pages/{slug:str}", responses={**_CONDITIONAL, **problem_responses(404)})
    async def get_page(self, slug: FromPath[str], if_none_match: IfNoneMatch = None) -> Response[PageOut]:
        """A published page (e.g. ``terms``, ``privacy``): ``body_html`` is safe to insert as HTML.

        Answers carry a strong ``ETag``; send it back in ``If-None-Match`` for a 304.
        """
        return cacheable(await services.get_published_page(slug), if_none_match)

    @get("/faqs", responses={**_CONDITIONAL, **problem_responses(422)})
    async def list_faqs(
        self,
        category: Annotated[str | None, text_query(max_length=80, description="only this category")] = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response[FaqList]:
        """Published FAQs, uncategorised first, then by category and position; with ``ETag`` like pages."""
        return cacheable(await services.list_published_faqs(category), if_none_match)


# -- admin -------------------------------------------------------------------------------------


class AdminCmsPageController(Controller):
    """Create, edit, publish and delete static pages (administrators only; every write is audited)."""

    path = "/admin/cms/pages"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 403, 422))
    async def list_pages(
        self,
        admin_principal: Admin,
        published: FromQuery[bool | None] = None,
        limit: Limit = services.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> AdminPageList:
        """Every page, published or not (``published`` filters), by slug."""
        return await services.list_pages(admin_principal, published=published, limit=limit, cursor=cursor)

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 409, 422))
    async def create_page(
        self, data: JSONBody[PageCreate], app_state: State, admin_principal: Admin, client: Client
    ) -> AdminPageOut:
        """A new page; unpublished unless ``published`` is true."""
        return await services.do_create_page(app_state, admin_principal, data, client)

    @get("/{page_id:uuid}", responses=problem_responses(401, 403, 404))
    async def get_page(self, page_id: FromPath[uuid.UUID], admin_principal: Admin) -> AdminPageOut:
        """One page with a preview of its rendering, published or not."""
        return await services.get_page(admin_principal, page_id)

    @put("/{page_id:uuid}", responses=problem_responses(401, 403, 404, 409, 422))
    async def update_page(
        self,
        page_id: FromPath[uuid.UUID],
        data: JSONBody[PageUpdate],
        app_state: State,
        admin_principal: Admin,
        client: Client,
    ) -> AdminPageOut:
        """Change the given fields (``published`` publishes or withdraws); fields left out keep their value."""
        return await services.do_update_page(app_state, admin_principal, page_id, data, client)

    @delete("/{page_id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404))
    async def delete_page(
        self, page_id: FromPath[uuid.UUID], app_state: State, admin_principal: Admin, client: Client
    ) -> None:
        """Delete a CMS page; it stops being served at once."""
        await services.do_delete_page(app_state, admin_principal, page_id, client)


class AdminFaqController(Controller):
    """Create, edit, order, publish and delete FAQs (administrators only; every write is audited)."""

    path = "/admin/faqs"
    tags = ["admin"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 403, 422))
    async def list_faqs(
        self,
        admin_principal: Admin,
        category: Annotated[str | None, text_query(max_length=80)] = None,
        published: FromQuery[bool | None] = None,
        limit: Limit = services.DEFAULT_PAGE_SIZE,
        cursor: Cursor = None,
    ) -> AdminFaqList:
        """Every FAQ, published or not, in the public order."""
        return await services.list_faqs(
            admin_principal, category=category, published=published, limit=limit, cursor=cursor
        )

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 422))
    async def create_faq(
        self, data: JSONBody[FaqCreate], app_state: State, admin_principal: Admin, client: Client
    ) -> AdminFaqOut:
        """A new FAQ; without ``position`` it goes after the last of its category."""
        return await services.do_create_faq(app_state, admin_principal, data, client)

    @get("/{faq_id:uuid}", responses=problem_responses(401, 403, 404))
    async def get_faq(self, faq_id: FromPath[uuid.UUID], admin_principal: Admin) -> AdminFaqOut:
        """One FAQ entry, published or not, with its Markdown source."""
        return await services.get_faq(admin_principal, faq_id)

    @put("/{faq_id:uuid}", responses=problem_responses(401, 403, 404, 422))
    async def update_faq(
        self,
        faq_id: FromPath[uuid.UUID],
        data: JSONBody[FaqUpdate],
        app_state: State,
        admin_principal: Admin,
        client: Client,
    ) -> AdminFaqOut:
        """Change the given fields; fields left out keep their value."""
        return await services.do_update_faq(app_state, admin_principal, faq_id, data, client)

    @delete("/{faq_id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404))
    async def delete_faq(
        self, faq_id: FromPath[uuid.UUID], app_state: State, admin_principal: Admin, client: Client
    ) -> None:
        """Delete a FAQ entry."""
        await services.do_delete_faq(app_state, admin_principal, faq_id, client)
