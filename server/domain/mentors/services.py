"""Mentor and category actions: applications, admin review, the public directory.

Every permission decision is taken here, not in the controllers: the route
guards only establish who is calling. Each ``do_*`` action writes in one
transaction, together with its notification and its admin audit row.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import asyncpg
import msgspec

from server.domain.access.policy import PRIVATE_LISTED_TO
from server.domain.accounts.audit import check_admin, record_admin_action
from server.domain.accounts.services import ClientInfo, Principal
from server.domain.accounts.session_cache import announce
from server.domain.mentors.schemas import (
    ApplyRequest,
    CategoryList,
    CategoryOut,
    CategoryRef,
    CreateCategoryRequest,
    MentorApplicationOut,
    MentorLoungeOut,
    MentorLoungePage,
    MentorOut,
    MentorPage,
    PendingMentorOut,
    PendingMentorPage,
    UpdateCategoryRequest,
)
from server.domain.notifications.services import notify_on_commit
from server.domain.tables.accounts import Role, User
from server.domain.tables.mentors import Category, Mentor, MentorCategory, MentorStatus
from server.foundation.control import ControlEvent
from server.foundation.errors import Conflict, Forbidden, NotFound, ValidationFailed
from server.foundation.pagination import keyset_page, like_pattern
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
POSITION_STEP = 10  # gaps between category positions leave room to insert between two

# The categories a new installation starts with. The seed migration
# (piccolo_migrations/lounges_2026_11_27t09_00_00_000000.py) holds a frozen copy;
# tests/test_mentors.py checks that a freshly migrated database matches this list.
STARTER_CATEGORIES: tuple[dict[str, Any], ...] = (
    {
        "slug": "career",
        "name": "Career",
        "description": "Job search, growth at work and career changes.",
        "position": 10,
    },
    {"slug": "fitness", "name": "Fitness", "description": "Training, movement and healthy habits.", "position": 20},
    {
        "slug": "mindfulness",
        "name": "Mindfulness",
        "description": "Meditation, stress and emotional balance.",
        "position": 30,
    },
    {
        "slug": "productivity",
        "name": "Productivity",
        "description": "Focus, planning and getting things done.",
        "position": 40,
    },
    {
        "slug": "relationships",
        "name": "Relationships",
        "description": "Family, friendship, dating and communication.",
        "position": 50,
    },
    {
        "slug": "leadership",
        "name": "Leadership",
        "description": "Leading teams, managing people and decisions.",
        "position": 60,
    },
    {
        "slug": "finance",
        "name": "Finance",
        "description": "Budgeting, saving, investing and money habits.",
        "position": 70,
    },
    {
        "slug": "creativity",
        "name": "Creativity",
        "description": "Writing, art, music and creative practice.",
        "position": 80,
    },
)


# -- helpers -----------------------------------------------------------------------------------


def _check_verified(principal: Principal) -> None:
    if not principal.email_verified:
        raise Forbidden("verify your email address first", code="email_unverified")


def _can_see_any_status(mentor_user_id: uuid.UUID, viewer: Principal | None) -> bool:
    """The applicant sees their own application in every status; admins see every application."""
    return viewer is not None and (viewer.user_id == mentor_user_id or viewer.role == Role.admin)


def _category_out(row: dict[str, Any]) -> CategoryOut:
    return CategoryOut(
        id=row["id"], slug=row["slug"], name=row["name"], description=row["description"], position=row["position"]
    )


async def _categories_of(mentor_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[CategoryRef]]:
    """Each mentor's categories, in category order (one query for a whole page)."""
    found: dict[uuid.UUID, list[CategoryRef]] = {mentor_id: [] for mentor_id in mentor_ids}
    if not mentor_ids:
        return found
    rows = await MentorCategory.raw(
        """
        SELECT mc.mentor, c.id, c.slug, c.name
        FROM mentor_categories mc JOIN categories c ON c.id = mc.category
        WHERE mc.mentor = ANY({}::uuid[])
        ORDER BY c.position, c.name
        """,
        mentor_ids,
    )
    for row in rows:
        found[row["mentor"]].append(CategoryRef(id=row["id"], slug=row["slug"], name=row["name"]))
    return found


_MENTOR_SELECT = """
    SELECT m.id, m."user" AS user_id, u.email, u.full_name, u.avatar_file_id, u.is_active,
           m.headline, m.bio, m.status, m.rejection_reason, m.reviewed_at, m.created_at, m.updated_at
    FROM mentors m JOIN users u ON u.id = m."user"
"""


async def _mentor_row(**where: Any) -> dict[str, Any] | None:
    """One mentor joined with its user, by ``id`` or ``user``."""
    [(column, value)] = where.items()
    rows = await Mentor.raw(_MENTOR_SELECT + f' WHERE m."{column}" = {{}}', value)
    return rows[0] if rows else None


def _public_out(row: dict[str, Any], categories: list[CategoryRef]) -> MentorOut:
    return MentorOut(
        id=row["id"],
        user_id=row["user_id"],
        full_name=row["full_name"],
        avatar_file_id=row["avatar_file_id"],
        headline=row["headline"],
        bio=row["bio"],
        categories=categories,
        status=row["status"],
        approved_at=row["reviewed_at"] if row["status"] == MentorStatus.approved else None,
    )


def _application_out(row: dict[str, Any], categories: list[CategoryRef]) -> MentorApplicationOut:
    return MentorApplicationOut(
        id=row["id"],
        user_id=row["user_id"],
        full_name=row["full_name"],
        avatar_file_id=row["avatar_file_id"],
        headline=row["headline"],
        bio=row["bio"],
        categories=categories,
        status=row["status"],
        rejection_reason=row["rejection_reason"],
        reviewed_at=row["reviewed_at"],
        submitted_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _application(mentor_id: uuid.UUID) -> MentorApplicationOut:
    row = await _mentor_row(id=mentor_id)
    assert row is not None
    return _application_out(row, (await _categories_of([mentor_id]))[mentor_id])


async def _visible_mentor(mentor_id: uuid.UUID, viewer: Principal | None) -> dict[str, Any]:
    """The mentor's row if ``viewer`` may see it, else 404 (existence is not revealed)."""
    row = await _mentor_row(id=mentor_id)
    if row is not None and (
        (row["status"] == MentorStatus.approved and row["is_active"]) or _can_see_any_status(row["user_id"], viewer)
    ):
        return row
    raise NotFound("no such mentor", code="mentor_not_found")


# -- categories --------------------------------------------------------------------------------


async def seed_categories() -> int:
    """Insert the starter categories that are missing (matched by slug); returns how many.

    Idempotent, and never overwrites an admin's edits. The seed migration does the
    same for a new database; tests (whose tables are emptied before each) and
    development tooling call this.
    """
    values = ", ".join("({}, {}, {}, {}::integer)" for _ in STARTER_CATEGORIES)
    args = [
        value
        for category in STARTER_CATEGORIES
        for value in (category["slug"], category["name"], category["description"], category["position"])
    ]
    rows = await Category.raw(
        f"""
        INSERT INTO categories (id, slug, name, description, position, created_at, updated_at)
        SELECT gen_random_uuid(), v.slug, v.name, v.description, v.position, now(), now()
        FROM (VALUES {values}) AS v (slug, name, description, position)
        ON CONFLICT (slug) DO NOTHING
        RETURNING id
        """,
        *args,
    )
    return len(rows)


async def list_categories() -> CategoryList:
    """Every category in display order (a short list an admin curates: one page)."""
    rows = await Category.select().order_by(Category.position, Category.name, Category.id)
    return CategoryList(items=[_category_out(row) for row in rows], next_cursor=None)


async def do_create_category(
    state: AppState, admin: Principal, data: CreateCategoryRequest, client: ClientInfo
) -> CategoryOut:
    check_admin(admin)
    name = data.name.strip()
    if not name:
        raise ValidationFailed("name must not be blank", code="invalid_category_name")
    try:
        async with unit_of_work(state.engine):
            if await Category.exists().where(Category.slug == data.slug):
                raise Conflict(f"a category with slug {data.slug!r} exists", code="category_slug_taken")
            position = data.position
            if position is None:  # after the last one
                last = await Category.select(Category.position).order_by(Category.position, ascending=False).first()
                position = last["position"] + POSITION_STEP if last else POSITION_STEP
            [row] = await Category.insert(
                Category(slug=data.slug, name=name, description=data.description.strip(), position=position)
            ).returning(*Category.all_columns())
            await record_admin_action(
                admin,
                "category.create",
                target_type="category",
                target_id=row["id"],
                client=client,
                detail={"slug": data.slug, "name": name, "position": position},
            )
    except asyncpg.UniqueViolationError:  # a concurrent create with the same slug won
        raise Conflict(f"a category with slug {data.slug!r} exists", code="category_slug_taken") from None
    return _category_out(row)


async def do_update_category(
    state: AppState, admin: Principal, category_id: uuid.UUID, changes: UpdateCategoryRequest, client: ClientInfo
) -> CategoryOut:
    check_admin(admin)
    values: dict[Any, Any] = {}
    detail: dict[str, Any] = {}
    if changes.slug is not msgspec.UNSET:
        values[Category.slug] = detail["slug"] = changes.slug
    if changes.name is not msgspec.UNSET:
        if not changes.name.strip():
            raise ValidationFailed("name must not be blank", code="invalid_category_name")
        values[Category.name] = detail["name"] = changes.name.strip()
    if changes.description is not msgspec.UNSET:
        values[Category.description] = detail["description"] = changes.description.strip()
    if changes.position is not msgspec.UNSET:
        values[Category.position] = detail["position"] = changes.position
    try:
        async with unit_of_work(state.engine):
            before = await Category.select().where(Category.id == category_id).first()
            if before is None:
                raise NotFound("no such category", code="category_not_found")
            if changes.slug is not msgspec.UNSET and await Category.exists().where(
                Category.slug == changes.slug, Category.id != category_id
            ):
                raise Conflict(f"a category with slug {changes.slug!r} exists", code="category_slug_taken")
            if not values:
                return _category_out(before)
            [row] = await Category.update(values).where(Category.id == category_id).returning(*Category.all_columns())
            await record_admin_action(
                admin,
                "category.update",
                target_type="category",
                target_id=category_id,
                client=client,
                detail={"changes": detail, "before": {key: before[key] for key in detail}},
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a category with slug {changes.slug!r} exists", code="category_slug_taken") from None
    return _category_out(row)


async def do_delete_category(state: AppState, admin: Principal, category_id: uuid.UUID, client: ClientInfo) -> None:
    """Delete a category: mentors lose it, its lounges become uncategorised."""
    check_admin(admin)
    async with unit_of_work(state.engine):
        rows = await Category.raw("DELETE FROM categories WHERE id = {} RETURNING slug, name", category_id)
        if not rows:
            raise NotFound("no such category", code="category_not_found")
        await record_admin_action(
            admin,
            "category.delete",
            target_type="category",
            target_id=category_id,
            client=client,
            detail={"slug": rows[0]["slug"], "name": rows[0]["name"]},
        )


# -- applications ------------------------------------------------------------------------------


async def do_apply(state: AppState, principal: Principal, data: ApplyRequest) -> MentorApplicationOut:
    """Submit a mentor application; after a rejection the same application is resubmitted.

    An application that is pending or approved cannot be replaced (409
    ``mentor_application_exists``).
    """
    _check_verified(principal)
    headline, bio = data.headline.strip(), data.bio.strip()
    if len(headline) < 3:
        raise ValidationFailed("headline needs at least 3 characters", code="invalid_headline")
    if not bio:
        raise ValidationFailed("bio must not be blank", code="invalid_bio")
    category_ids = list(dict.fromkeys(data.category_ids))
    async with unit_of_work(state.engine):
        known = {row["id"] for row in await Category.select(Category.id).where(Category.id.is_in(category_ids))}
        missing = [str(category_id) for category_id in category_ids if category_id not in known]
        if missing:
            raise ValidationFailed("unknown category ids", code="category_not_found", category_ids=missing)
        # One row per user: a first application inserts; a rejected one is reset to
        # pending; a pending or approved one is left alone (no row returned).
        rows = await Mentor.raw(
            """
            INSERT INTO mentors AS m (id, "user", headline, bio, status, created_at, updated_at)
            VALUES (gen_random_uuid(), {}, {}, {}, 'pending', now(), now())
            ON CONFLICT ("user") DO UPDATE
                SET headline = EXCLUDED.headline, bio = EXCLUDED.bio, status = 'pending',
                    rejection_reason = NULL, reviewed_by = NULL, reviewed_at = NULL,
                    created_at = now(), updated_at = now()
                WHERE m.status = 'rejected'
            RETURNING m.id
            """,
            principal.user_id,
            headline,
            bio,
        )
        if not rows:
            existing = await Mentor.select(Mentor.status).where(Mentor.user == principal.user_id).first()
            raise Conflict(
                "you already have a mentor application that is pending or approved",
                code="mentor_application_exists",
                application_status=existing["status"] if existing else None,
            )
        mentor_id = rows[0]["id"]
        await MentorCategory.delete().where(MentorCategory.mentor == mentor_id)
        await MentorCategory.insert(
            *[MentorCategory(mentor=mentor_id, category=category_id) for category_id in category_ids]
        )
    return await _application(mentor_id)


async def get_my_application(principal: Principal) -> MentorApplicationOut:
    row = await _mentor_row(user=principal.user_id)
    if row is None:
        raise NotFound("you have not applied to be a mentor", code="mentor_application_not_found")
    return _application_out(row, (await _categories_of([row["id"]]))[row["id"]])


# -- the public directory --------------------------------------------------------------------


async def list_mentors(
    *, category: str | None = None, q: str | None = None, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> MentorPage:
    """Approved mentors of active accounts, newest approval first, each once.

    ``category`` filters by category slug; ``q`` matches the user's full name or
    the headline, case-insensitively. Keyset pagination: stable while mentors are
    approved in the meantime.
    """
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = _MENTOR_SELECT + " WHERE m.status = 'approved' AND u.is_active"
    args: list[Any] = []
    if category:
        sql += """ AND EXISTS (
            SELECT 1 FROM mentor_categories mc JOIN categories c ON c.id = mc.category
            WHERE mc.mentor = m.id AND c.slug = {})"""
        args.append(category)
    if q and q.strip():
        sql += " AND (u.full_name ILIKE {} OR m.headline ILIKE {})"
        pattern = like_pattern(q.strip())
        args += [pattern, pattern]
    page, next_cursor = await keyset_page(sql, args, moment="m.reviewed_at", row_id="m.id", cursor=cursor, limit=limit)
    categories = await _categories_of([row["id"] for row in page])
    return MentorPage(
        items=[_public_out(row, categories[row["id"]]) for row in page],
        next_cursor=next_cursor,
    )


async def get_mentor(mentor_id: uuid.UUID, viewer: Principal | None) -> MentorOut:
    """An approved mentor for anyone; an application in another status only for its applicant and admins."""
    row = await _visible_mentor(mentor_id, viewer)
    return _public_out(row, (await _categories_of([mentor_id]))[mentor_id])


async def list_mentor_lounges(
    mentor_id: uuid.UUID, viewer: Principal | None, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> MentorLoungePage:
    """The mentor's lounges that are not archived, oldest first; private ones only for
    their members, the mentor and admins (:data:`~server.domain.access.policy.PRIVATE_LISTED_TO`)."""
    await _visible_mentor(mentor_id, viewer)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    viewer_id = viewer.user_id if viewer else None
    sql = f"""
        SELECT l.id, l.title, l.description, l.access, l.channel, l.created_at,
               c.id AS category_id, c.slug AS category_slug, c.name AS category_name
        FROM lounges l JOIN mentors m ON m.id = l.mentor LEFT JOIN categories c ON c.id = l.category
        LEFT JOIN lounge_memberships me ON me.lounge = l.id AND me."user" = {{}}
        WHERE l.mentor = {{}} AND l.archived_at IS NULL AND {PRIVATE_LISTED_TO}"""
    args: list[Any] = [viewer_id, mentor_id, viewer_id, viewer is not None and viewer.role == Role.admin]
    rows, next_cursor = await keyset_page(
        sql, args, moment="l.created_at", row_id="l.id", cursor=cursor, limit=limit, descending=False
    )
    items = [
        MentorLoungeOut(
            id=row["id"],
            title=row["title"],
            description=row["description"],
            access=row["access"],
            category=(
                CategoryRef(id=row["category_id"], slug=row["category_slug"], name=row["category_name"])
                if row["category_id"] is not None
                else None
            ),
            channel=row["channel"],
            created_at=row["created_at"],
        )
        for row in rows
    ]
    return MentorLoungePage(items=items, next_cursor=next_cursor)


# -- admin review ------------------------------------------------------------------------------


async def list_pending(
    admin: Principal, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> PendingMentorPage:
    """The review queue, oldest submission first."""
    check_admin(admin)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    sql = _MENTOR_SELECT + " WHERE m.status = 'pending' AND u.is_active"
    args: list[Any] = []
    page, next_cursor = await keyset_page(
        sql, args, moment="m.created_at", row_id="m.id", cursor=cursor, limit=limit, descending=False
    )
    categories = await _categories_of([row["id"] for row in page])
    return PendingMentorPage(
        items=[
            PendingMentorOut(
                id=row["id"],
                user_id=row["user_id"],
                email=row["email"],
                full_name=row["full_name"],
                headline=row["headline"],
                bio=row["bio"],
                categories=categories[row["id"]],
                status=row["status"],
                submitted_at=row["created_at"],
            )
            for row in page
        ],
        next_cursor=next_cursor,
    )


async def _review(admin: Principal, mentor_id: uuid.UUID, status: MentorStatus, reason: str | None) -> uuid.UUID:
    """Move a pending application to ``status`` (in the caller's transaction); returns the applicant's id."""
    rows = await Mentor.raw(
        """
        UPDATE mentors SET status = {}, rejection_reason = {}, reviewed_by = {}, reviewed_at = now(), updated_at = now()
        WHERE id = {} AND status = 'pending'
        RETURNING "user"
        """,
        status.value,
        reason,
        admin.user_id,
        mentor_id,
    )
    if rows:
        return rows[0]["user"]
    existing = await Mentor.select(Mentor.status).where(Mentor.id == mentor_id).first()
    if existing is None:
        raise NotFound("no such mentor application", code="mentor_not_found")
    raise Conflict(
        f"the application is {existing['status']}, not pending",
        code="mentor_not_pending",
        application_status=existing["status"],
    )


async def do_approve(
    state: AppState, admin: Principal, mentor_id: uuid.UUID, client: ClientInfo
) -> MentorApplicationOut:
    """Approve a pending application: the user becomes a mentor and is notified."""
    check_admin(admin)
    async with unit_of_work(state.engine):
        user_id = await _review(admin, mentor_id, MentorStatus.approved, None)
        # An admin who applied keeps the admin role (it includes the mentor's rights).
        promoted = (
            await User.update({User.role: Role.mentor})
            .where(User.id == user_id, User.role == Role.user)
            .returning(User.id)
        )
        if promoted:  # every node: cached sessions and open sockets act as a mentor at once
            await on_commit(partial(announce, state, ControlEvent(kind="user.role_changed", user_id=user_id)))
        await notify_on_commit(
            state,
            user_id,
            kind="mentor.approved",
            title="You are now a mentor",
            body="Your mentor application was approved. You can now open lounges.",
            data={"mentor_id": str(mentor_id)},
        )
        await record_admin_action(
            admin,
            "mentor.approve",
            target_type="mentor",
            target_id=mentor_id,
            client=client,
            detail={"user_id": str(user_id)},
        )
    return await _application(mentor_id)


async def do_reject(
    state: AppState, admin: Principal, mentor_id: uuid.UUID, reason: str, client: ClientInfo
) -> MentorApplicationOut:
    """Reject a pending application with a reason the applicant is told; they may apply again."""
    check_admin(admin)
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("give the applicant a reason", code="reason_required")
    async with unit_of_work(state.engine):
        user_id = await _review(admin, mentor_id, MentorStatus.rejected, reason)
        await notify_on_commit(
            state,
            user_id,
            kind="mentor.rejected",
            title="Your mentor application was not approved",
            body=f"Reason: {reason}\n\nYou may update your application and apply again.",
            data={"mentor_id": str(mentor_id), "reason": reason},
        )
        await record_admin_action(
            admin,
            "mentor.reject",
            target_type="mentor",
            target_id=mentor_id,
            client=client,
            detail={"user_id": str(user_id), "reason": reason},
        )
    return await _application(mentor_id)
