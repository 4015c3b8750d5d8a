"""CMS actions: published pages and FAQs for everyone, editing for administrators.

Markdown is stored as written and rendered to sanitized HTML on the way out
(``server.domain.cms.markdown``), so a change of the sanitizer's rules applies to every
stored text at once. Every admin write commits together with its audit row.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
from piccolo.query import OrderByRaw
from piccolo.table import Table

from server.domain.accounts.audit import check_admin, record_admin_action
from server.domain.accounts.services import ClientInfo, Principal
from server.domain.cms.markdown import render_markdown
from server.domain.cms.schemas import (
    AdminFaqList,
    AdminFaqOut,
    AdminPageList,
    AdminPageOut,
    FaqCreate,
    FaqList,
    FaqOut,
    FaqUpdate,
    PageCreate,
    PageOut,
    PageUpdate,
)
from server.domain.tables.cms import FAQ, StaticPage
from server.foundation.errors import Conflict, NotFound, ValidationFailed
from server.foundation.pagination import SortKey, keyset_page
from server.foundation.state import AppState
from server.foundation.unit_of_work import unit_of_work

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_PUBLIC_FAQS = 500  # the public list is one response; more than this is not a FAQ any more
POSITION_STEP = 10  # gaps between FAQ positions leave room to insert between two
MAX_SLUG_LENGTH = 120
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # PageSlug's pattern (server/domain/cms/schemas.py)
# Uncategorised FAQs first, then by category, each in position order.
_FAQ_ORDER = OrderByRaw("category NULLS FIRST, position, created_at, id")
_AUDIT_TARGET: dict[type[Table], str] = {StaticPage: "static_page", FAQ: "faq"}  # audit log target_type


# -- helpers -----------------------------------------------------------------------------------


def _digest(text: str) -> dict[str, Any]:
    """What the audit log keeps of a long text: its size and fingerprint, not the text."""
    return {"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _not_blank(value: str, code: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise ValidationFailed(f"{field} must not be blank", code=code)
    return value


async def _row_or_404(table: type[Table], row_id: uuid.UUID, not_found: Callable[[], NotFound]) -> dict[str, Any]:
    row = await table.select().where(table._meta.primary_key == row_id).first()
    if row is None:
        raise not_found()
    return row


async def _save_changes(
    table: type[Table],
    before: dict[str, Any],
    values: dict[Any, Any],
    *,
    admin: Principal,
    client: ClientInfo,
    action: str,
    long_field: str,
    stamp: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """In the caller's transaction: write the ``values`` that differ from ``before`` (with
    ``stamp`` when anything does) and audit them; the row as it is afterwards."""
    changed = {column: value for column, value in values.items() if before[column._meta.name] != value}
    if not changed:
        return before
    [row] = (
        await table.update({**changed, **(stamp or {})})
        .where(table._meta.primary_key == before["id"])
        .returning(*table.all_columns())
    )
    await record_admin_action(
        admin,
        action,
        target_type=_AUDIT_TARGET[table],
        target_id=before["id"],
        client=client,
        detail=_change_detail(changed, before, long_field=long_field),
    )
    return row


async def _delete_audited(
    state: AppState,
    table: type[Table],
    row_id: uuid.UUID,
    columns: tuple[str, ...],
    *,
    not_found: Callable[[], NotFound],
    admin: Principal,
    client: ClientInfo,
    action: str,
    long_field: str,
) -> None:
    """Delete the row and audit what it held (``long_field`` as a digest), in one transaction."""
    async with unit_of_work(state.engine):
        rows = await table.raw(
            f"DELETE FROM {table._meta.tablename} WHERE id = {{}} RETURNING {', '.join((*columns, long_field))}",
            row_id,
        )
        if not rows:
            raise not_found()
        row = rows[0]
        await record_admin_action(
            admin,
            action,
            target_type=_AUDIT_TARGET[table],
            target_id=row_id,
            client=client,
            detail={**{name: row[name] for name in columns}, long_field: _digest(row[long_field])},
        )


def _change_detail(changed: dict[Any, Any], before: dict[str, Any], *, long_field: str) -> dict[str, Any]:
    """``{"changes": {...}, "before": {...}}`` of the columns that changed; the long text as digests."""
    after_values: dict[str, Any] = {}
    before_values: dict[str, Any] = {}
    for column, value in changed.items():
        name = column._meta.name
        if name == long_field:
            after_values[name], before_values[name] = _digest(value), _digest(before[name])
        else:
            after_values[name], before_values[name] = value, before[name]
    return {"changes": after_values, "before": before_values}


def _page_not_found() -> NotFound:
    return NotFound("no such page", code="page_not_found")


def _faq_not_found() -> NotFound:
    return NotFound("no such FAQ", code="faq_not_found")


def _slug_taken(slug: str) -> Conflict:
    return Conflict(f"a page with slug {slug!r} exists", code="page_slug_taken")


def _admin_page_out(row: dict[str, Any]) -> AdminPageOut:
    return AdminPageOut(
        id=row["id"],
        slug=row["slug"],
        title=row["title"],
        body_markdown=row["body_markdown"],
        body_html=render_markdown(row["body_markdown"]),
        published=row["published"],
        updated_by=row["updated_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _admin_faq_out(row: dict[str, Any]) -> AdminFaqOut:
    return AdminFaqOut(
        id=row["id"],
        question=row["question"],
        answer_markdown=row["answer_markdown"],
        answer_html=render_markdown(row["answer_markdown"]),
        category=row["category"],
        position=row["position"],
        published=row["published"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# -- public ------------------------------------------------------------------------------------


async def get_published_page(slug: str) -> PageOut:
    """A published page by slug; unpublished and unknown pages are both 404."""
    if len(slug) > MAX_SLUG_LENGTH or not _SLUG.fullmatch(slug):  # could not have been stored
        raise _page_not_found()
    row = await StaticPage.select().where(StaticPage.slug == slug, StaticPage.published.eq(True)).first()
    if row is None:
        raise _page_not_found()
    return PageOut(
        slug=row["slug"],
        title=row["title"],
        body_markdown=row["body_markdown"],
        body_html=render_markdown(row["body_markdown"]),
        updated_at=row["updated_at"],
    )


async def list_published_faqs(category: str | None = None) -> FaqList:
    """Published FAQs grouped by category (uncategorised first), in position order: one
    page of at most :data:`MAX_PUBLIC_FAQS`, so ``next_cursor`` is null."""
    query = FAQ.select().where(FAQ.published.eq(True))
    if category is not None:
        query = query.where(FAQ.category == category)
    rows = await query.order_by(_FAQ_ORDER).limit(MAX_PUBLIC_FAQS)
    items = [
        FaqOut(
            id=row["id"],
            question=row["question"],
            answer_markdown=row["answer_markdown"],
            answer_html=render_markdown(row["answer_markdown"]),
            category=row["category"],
            position=row["position"],
            updated_at=row["updated_at"],
        )
        for row in rows
    ]
    return FaqList(items=items, next_cursor=None)


# -- admin: pages ------------------------------------------------------------------------------


async def list_pages(
    admin: Principal, *, published: bool | None = None, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> AdminPageList:
    """Every page (published or not, or filtered), by slug."""
    check_admin(admin)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = "SELECT p.* FROM static_pages p WHERE TRUE"
    args: list[Any] = []
    if published is not None:
        sql += " AND p.published = {}"
        args.append(published)
    rows, next_cursor = await keyset_page(
        sql,
        args,
        leading=[SortKey("p.slug", "text")],
        moment="p.created_at",
        row_id="p.id",
        cursor=cursor,
        limit=limit,
        descending=False,
    )
    return AdminPageList(items=[_admin_page_out(row) for row in rows], next_cursor=next_cursor)


async def get_page(admin: Principal, page_id: uuid.UUID) -> AdminPageOut:
    check_admin(admin)
    return _admin_page_out(await _row_or_404(StaticPage, page_id, _page_not_found))


async def do_create_page(state: AppState, admin: Principal, data: PageCreate, client: ClientInfo) -> AdminPageOut:
    check_admin(admin)
    title = _not_blank(data.title, "invalid_title", "title")
    try:
        async with unit_of_work(state.engine):
            if await StaticPage.exists().where(StaticPage.slug == data.slug):
                raise _slug_taken(data.slug)
            [row] = await StaticPage.insert(
                StaticPage(
                    slug=data.slug,
                    title=title,
                    body_markdown=data.body_markdown,
                    published=data.published,
                    updated_by=admin.user_id,
                )
            ).returning(*StaticPage.all_columns())
            await record_admin_action(
                admin,
                "cms_page.create",
                target_type="static_page",
                target_id=row["id"],
                client=client,
                detail={
                    "slug": data.slug,
                    "title": title,
                    "published": data.published,
                    "body_markdown": _digest(data.body_markdown),
                },
            )
    except asyncpg.UniqueViolationError:  # a concurrent create with the same slug won
        raise _slug_taken(data.slug) from None
    return _admin_page_out(row)


async def do_update_page(
    state: AppState, admin: Principal, page_id: uuid.UUID, changes: PageUpdate, client: ClientInfo
) -> AdminPageOut:
    """Change the given fields (publishing and unpublishing included); the rest keep their value."""
    check_admin(admin)
    values: dict[Any, Any] = {}
    if changes.slug is not msgspec.UNSET:
        values[StaticPage.slug] = changes.slug
    if changes.title is not msgspec.UNSET:
        values[StaticPage.title] = _not_blank(changes.title, "invalid_title", "title")
    if changes.body_markdown is not msgspec.UNSET:
        values[StaticPage.body_markdown] = changes.body_markdown
    if changes.published is not msgspec.UNSET:
        values[StaticPage.published] = changes.published
    try:
        async with unit_of_work(state.engine):
            before = await _row_or_404(StaticPage, page_id, _page_not_found)
            if changes.slug is not msgspec.UNSET and await StaticPage.exists().where(
                StaticPage.slug == changes.slug, StaticPage.id != page_id
            ):
                raise _slug_taken(changes.slug)
            row = await _save_changes(
                StaticPage,
                before,
                values,
                admin=admin,
                client=client,
                action="cms_page.update",
                long_field="body_markdown",
                stamp={StaticPage.updated_by: admin.user_id},
            )
    except asyncpg.UniqueViolationError:
        raise _slug_taken(str(changes.slug)) from None
    return _admin_page_out(row)


async def do_delete_page(state: AppState, admin: Principal, page_id: uuid.UUID, client: ClientInfo) -> None:
    check_admin(admin)
    await _delete_audited(
        state,
        StaticPage,
        page_id,
        ("slug", "title", "published"),
        not_found=_page_not_found,
        admin=admin,
        client=client,
        action="cms_page.delete",
        long_field="body_markdown",
    )


# -- admin: FAQs -------------------------------------------------------------------------------


async def list_faqs(
    admin: Principal,
    *,
    category: str | None = None,
    published: bool | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> AdminFaqList:
    """Every FAQ (published or not, or filtered), in the public order (uncategorised first:
    the key ``(coalesce(category, ''), position, created_at, id)``)."""
    check_admin(admin)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = "SELECT f.*, coalesce(f.category, '') AS category_key FROM faqs f WHERE TRUE"
    args: list[Any] = []
    if category is not None:
        sql += " AND f.category = {}"
        args.append(category)
    if published is not None:
        sql += " AND f.published = {}"
        args.append(published)
    rows, next_cursor = await keyset_page(
        sql,
        args,
        leading=[SortKey("coalesce(f.category, '')", "text", "category_key"), SortKey("f.position", "integer")],
        moment="f.created_at",
        row_id="f.id",
        cursor=cursor,
        limit=limit,
        descending=False,
    )
    return AdminFaqList(items=[_admin_faq_out(row) for row in rows], next_cursor=next_cursor)


async def get_faq(admin: Principal, faq_id: uuid.UUID) -> AdminFaqOut:
    check_admin(admin)
    return _admin_faq_out(await _row_or_404(FAQ, faq_id, _faq_not_found))


async def do_create_faq(state: AppState, admin: Principal, data: FaqCreate, client: ClientInfo) -> AdminFaqOut:
    check_admin(admin)
    question = _not_blank(data.question, "invalid_question", "question")
    answer = data.answer_markdown
    _not_blank(answer, "invalid_answer", "answer_markdown")
    category = data.category.strip() if data.category is not None else None
    category = category or None
    async with unit_of_work(state.engine):
        position = data.position
        if position is None:  # after the last one of its category
            last = (
                await FAQ.select(FAQ.position)
                .where(FAQ.category.is_null() if category is None else FAQ.category == category)
                .order_by(FAQ.position, ascending=False)
                .first()
            )
            position = last["position"] + POSITION_STEP if last else POSITION_STEP
        [row] = await FAQ.insert(
            FAQ(
                question=question,
                answer_markdown=answer,
                category=category,
                position=position,
                published=data.published,
            )
        ).returning(*FAQ.all_columns())
        await record_admin_action(
            admin,
            "faq.create",
            target_type="faq",
            target_id=row["id"],
            client=client,
            detail={
                "question": question,
                "category": category,
                "position": position,
                "published": data.published,
                "answer_markdown": _digest(answer),
            },
        )
    return _admin_faq_out(row)


async def do_update_faq(
    state: AppState, admin: Principal, faq_id: uuid.UUID, changes: FaqUpdate, client: ClientInfo
) -> AdminFaqOut:
    """Change the given fields (publishing and unpublishing included); the rest keep their value."""
    check_admin(admin)
    values: dict[Any, Any] = {}
    if changes.question is not msgspec.UNSET:
        values[FAQ.question] = _not_blank(changes.question, "invalid_question", "question")
    if changes.answer_markdown is not msgspec.UNSET:
        _not_blank(changes.answer_markdown, "invalid_answer", "answer_markdown")
        values[FAQ.answer_markdown] = changes.answer_markdown
    if changes.category is not msgspec.UNSET:
        values[FAQ.category] = (changes.category or "").strip() or None
    if changes.position is not msgspec.UNSET:
        values[FAQ.position] = changes.position
    if changes.published is not msgspec.UNSET:
        values[FAQ.published] = changes.published
    async with unit_of_work(state.engine):
        before = await _row_or_404(FAQ, faq_id, _faq_not_found)
        row = await _save_changes(
            FAQ, before, values, admin=admin, client=client, action="faq.update", long_field="answer_markdown"
        )
    return _admin_faq_out(row)


async def do_delete_faq(state: AppState, admin: Principal, faq_id: uuid.UUID, client: ClientInfo) -> None:
    check_admin(admin)
    await _delete_audited(
        state,
        FAQ,
        faq_id,
        ("question", "category", "published"),
        not_found=_faq_not_found,
        admin=admin,
        client=client,
        action="faq.delete",
        long_field="answer_markdown",
    )
