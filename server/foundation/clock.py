"""The one clock: what every ``timestamptz`` column and every expiry is measured against."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current moment, timezone-aware, in UTC."""
    return datetime.now(UTC)
