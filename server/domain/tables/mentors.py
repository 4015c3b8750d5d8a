"""Mentor tables: categories, mentor profiles (applications) and their categories."""

from __future__ import annotations

import enum

from piccolo.columns import (
    UUID,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from server.domain.tables.accounts import User
from server.foundation.db_columns import in_choices


class MentorStatus(enum.StrEnum):
    """Where a mentor application is in admin review."""

    pending = "pending"
    approved = "approved"
    rejected = "rejected"


class Category(Table, tablename="categories"):
    """A topic that mentors and lounges are filed under."""

    id = UUID(primary_key=True)
    slug = Varchar(length=80, unique=True)
    name = Varchar(length=100)
    description = Text()
    position = Integer(default=0)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)


class Mentor(Table, tablename="mentors"):
    """A user's mentor profile, created as an application and approved by an admin."""

    id = UUID(primary_key=True)
    user = ForeignKey(User, null=False, unique=True, on_delete=OnDelete.cascade)
    headline = Varchar(length=200)
    bio = Text()
    status = Varchar(length=16, default=MentorStatus.pending, choices=MentorStatus)
    rejection_reason = Text(null=True, default=None)
    reviewed_by = ForeignKey(User, null=True, on_delete=OnDelete.set_null, index=True)
    reviewed_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=TimestamptzNow().python)

    mentors_status_check = Check(in_choices("status", MentorStatus))


class MentorCategory(Table, tablename="mentor_categories"):
    """Links a mentor to a category they cover."""

    id = UUID(primary_key=True)
    mentor = ForeignKey(Mentor, null=False, on_delete=OnDelete.cascade)
    category = ForeignKey(Category, null=False, on_delete=OnDelete.cascade, index=True)
    created_at = Timestamptz()

    mentor_categories_mentor_category_key = Unique([mentor, category])
