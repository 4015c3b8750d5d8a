"""Shared input types that keep what a client sends storable in PostgreSQL.

A ``BIGINT`` holds at most 64 bits and ``text``/``jsonb`` cannot hold the NUL
character; a value past either reaches the database as a driver error (a 500)
unless it is refused at the edge. Request bodies use the msgspec types below;
query and path parameters use the ``*_query``/``*_path`` helpers of ``server.http.params``,
because Litestar reads parameter constraints from ``Parameter(...)``, not from msgspec ``Meta``.
Both refusals become ``422 validation_failed`` problems naming the field.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

INT64_MAX = 2**63 - 1
"""The largest value of a PostgreSQL ``BIGINT`` (offsets, sizes)."""

NO_NUL_PATTERN = r"^[^\x00]*$"
"""A string without U+0000, which PostgreSQL text and jsonb cannot store."""

Text = Annotated[str, msgspec.Meta(pattern=NO_NUL_PATTERN)]
"""Any text that is stored or compared in SQL; add length limits with another ``Meta``."""

NonNegativeInt64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
PositiveInt64 = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
