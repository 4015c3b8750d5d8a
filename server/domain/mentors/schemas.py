"""Request and response bodies of the mentors, categories and mentor-review endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from server.foundation.types import Text

Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=80, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")]
CategoryName = Annotated[Text, msgspec.Meta(min_length=1, max_length=100)]
CategoryDescription = Annotated[Text, msgspec.Meta(max_length=2000)]
Position = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Headline = Annotated[Text, msgspec.Meta(min_length=3, max_length=200)]
Bio = Annotated[Text, msgspec.Meta(min_length=1, max_length=5000)]
CategoryIds = Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=10)]
Reason = Annotated[Text, msgspec.Meta(min_length=1, max_length=1000)]


# -- categories --------------------------------------------------------------------------------


class CategoryOut(msgspec.Struct):
    id: uuid.UUID
    slug: str
    name: str
    description: str
    position: int


class CategoryList(msgspec.Struct):
    """Every category, in display order: one short list, so ``next_cursor`` is always null."""

    items: list[CategoryOut]
    next_cursor: str | None


class CategoryRef(msgspec.Struct):
    """A category as it appears on a mentor or a lounge."""

    id: uuid.UUID
    slug: str
    name: str


class CreateCategoryRequest(msgspec.Struct, forbid_unknown_fields=True):
    slug: Slug
    name: CategoryName
    description: CategoryDescription = ""
    position: Position | None = None
    """Sort key of ``GET /categories``; left out, the category goes after the last one."""


class UpdateCategoryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out keep their value."""

    slug: Slug | msgspec.UnsetType = msgspec.UNSET
    name: CategoryName | msgspec.UnsetType = msgspec.UNSET
    description: CategoryDescription | msgspec.UnsetType = msgspec.UNSET
    position: Position | msgspec.UnsetType = msgspec.UNSET


# -- mentors -----------------------------------------------------------------------------------


class ApplyRequest(msgspec.Struct, forbid_unknown_fields=True):
    headline: Headline
    bio: Bio
    category_ids: CategoryIds


class RejectRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class MentorOut(msgspec.Struct):
    """A mentor profile as the public sees it (approved mentors only)."""

    id: uuid.UUID
    user_id: uuid.UUID
    full_name: str
    avatar_file_id: uuid.UUID | None
    headline: str
    bio: str
    categories: list[CategoryRef]
    status: str
    approved_at: datetime | None


class MentorApplicationOut(msgspec.Struct):
    """A mentor application as its applicant and the admins see it."""

    id: uuid.UUID
    user_id: uuid.UUID
    full_name: str
    avatar_file_id: uuid.UUID | None
    headline: str
    bio: str
    categories: list[CategoryRef]
    status: str
    rejection_reason: str | None
    reviewed_at: datetime | None
    submitted_at: datetime
    updated_at: datetime


class PendingMentorOut(msgspec.Struct):
    """An application in the admins' review queue."""

    id: uuid.UUID
    user_id: uuid.UUID
    email: str
    full_name: str
    headline: str
    bio: str
    categories: list[CategoryRef]
    status: str
    submitted_at: datetime


class MentorPage(msgspec.Struct):
    """One page of mentors; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[MentorOut]
    next_cursor: str | None


class PendingMentorPage(msgspec.Struct):
    items: list[PendingMentorOut]
    next_cursor: str | None


class MentorLoungeOut(msgspec.Struct):
    """A lounge run by a mentor, as listed on the mentor's profile."""

    id: uuid.UUID
    title: str
    description: str
    access: str
    category: CategoryRef | None
    channel: str
    created_at: datetime


class MentorLoungePage(msgspec.Struct):
    """One page of a mentor's lounges, oldest first; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[MentorLoungeOut]
    next_cursor: str | None
