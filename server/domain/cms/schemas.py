"""Request and response bodies of the CMS endpoints (public pages and FAQs, and their admin editing)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from server.foundation.types import Text

PageSlug = Annotated[str, msgspec.Meta(min_length=1, max_length=120, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")]
PageTitle = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
PageBody = Annotated[Text, msgspec.Meta(max_length=100_000)]
Question = Annotated[Text, msgspec.Meta(min_length=1, max_length=300)]
Answer = Annotated[Text, msgspec.Meta(min_length=1, max_length=20_000)]
FaqCategory = Annotated[Text, msgspec.Meta(min_length=1, max_length=80)]
Position = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


# -- public ------------------------------------------------------------------------------------


class PageOut(msgspec.Struct):
    """A published page: the Markdown source and its sanitized HTML rendering."""

    slug: str
    title: str
    body_markdown: str
    body_html: str
    updated_at: datetime


class FaqOut(msgspec.Struct):
    """A published FAQ: the answer's Markdown source and its sanitized HTML rendering."""

    id: uuid.UUID
    question: str
    answer_markdown: str
    answer_html: str
    category: str | None
    position: int
    updated_at: datetime


class FaqList(msgspec.Struct):
    """The published FAQs: one page of at most 500, so ``next_cursor`` is always null."""

    items: list[FaqOut]
    next_cursor: str | None


# -- admin -------------------------------------------------------------------------------------


class AdminPageOut(msgspec.Struct):
    """A page as admins see it, published or not, with a preview of its rendering."""

    id: uuid.UUID
    slug: str
    title: str
    body_markdown: str
    body_html: str
    published: bool
    updated_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class AdminPageList(msgspec.Struct):
    """One page of pages, by slug; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[AdminPageOut]
    next_cursor: str | None


class PageCreate(msgspec.Struct, forbid_unknown_fields=True):
    slug: PageSlug
    title: PageTitle
    body_markdown: PageBody = ""
    published: bool = False


class PageUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out keep their value."""

    slug: PageSlug | msgspec.UnsetType = msgspec.UNSET
    title: PageTitle | msgspec.UnsetType = msgspec.UNSET
    body_markdown: PageBody | msgspec.UnsetType = msgspec.UNSET
    published: bool | msgspec.UnsetType = msgspec.UNSET


class AdminFaqOut(msgspec.Struct):
    id: uuid.UUID
    question: str
    answer_markdown: str
    answer_html: str
    category: str | None
    position: int
    published: bool
    created_at: datetime
    updated_at: datetime


class AdminFaqList(msgspec.Struct):
    """One page of FAQs in the public order; pass ``next_cursor`` as ``cursor`` for the next (null at the end)."""

    items: list[AdminFaqOut]
    next_cursor: str | None


class FaqCreate(msgspec.Struct, forbid_unknown_fields=True):
    question: Question
    answer_markdown: Answer
    category: FaqCategory | None = None
    position: Position | None = None
    """Sort key within the category; left out, the FAQ goes after the last one."""
    published: bool = False


class FaqUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out keep their value; ``category: null`` clears the category."""

    question: Question | msgspec.UnsetType = msgspec.UNSET
    answer_markdown: Answer | msgspec.UnsetType = msgspec.UNSET
    category: FaqCategory | msgspec.UnsetType | None = msgspec.UNSET
    position: Position | msgspec.UnsetType = msgspec.UNSET
    published: bool | msgspec.UnsetType = msgspec.UNSET
