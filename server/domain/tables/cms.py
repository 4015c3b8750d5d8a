"""CMS tables: admin-edited static pages and FAQs."""

from __future__ import annotations

from piccolo.columns import (
    UUID,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

from server.domain.tables.accounts import User


class StaticPage(Table, tablename="static_pages"):
    """A Markdown page such as the terms of service or the privacy policy."""

    id = UUID(primary_key=True)
    slug = Varchar(length=120, unique=True)
    title = Varchar(length=200)
    body_markdown = Text()
    published = Boolean(default=False)
    updated_by = ForeignKey(User, null=True, on_delete=OnDelete.set_null, index=True)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)


class FAQ(Table, tablename="faqs"):
    """A frequently asked question and its Markdown answer."""

    id = UUID(primary_key=True)
    question = Varchar(length=300)
    answer_markdown = Text()
    category = Varchar(length=80, null=True, default=None)
    position = Integer(default=0)
    published = Boolean(default=False)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)
