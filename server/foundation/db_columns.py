"""Custom Piccolo column types and constraint helpers used by the domain tables."""

from __future__ import annotations

from enum import Enum
from typing import Any

from piccolo.columns.base import Column


class Vector(Column):
    """A pgvector ``vector`` column, optionally with a fixed dimension.

    ``Vector(dimensions=384)`` maps to ``vector(384)``; ``Vector()`` maps to an
    untyped ``vector`` so that embeddings of different sizes can share a
    column. Values are encoded and decoded by the asyncpg codec that
    ``pgvector.asyncpg.register_vector`` installs on each connection: write a
    ``pgvector.Vector``, a 1-D numpy array or a list of floats (Piccolo warns
    about lists longer than 100 items and converts them item by item, so prefer
    the first two); reads return ``pgvector.Vector``.

    ``dimensions`` is passed through ``Column.__init__`` so that it is stored
    in ``_meta.params``: that is what Piccolo's auto migrations serialise
    (``Vector(dimensions=384, null=True, ...)``) and compare when detecting
    changes. The migration file re-imports this class by its module path.
    """

    value_type = list

    def __init__(self, dimensions: int | None = None, **kwargs: Any) -> None:
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise ValueError("dimensions must be a positive integer or None")
        self.dimensions = dimensions
        self.default = None
        super().__init__(dimensions=dimensions, **kwargs)

    @property
    def column_type(self) -> str:
        if self.dimensions is None:
            return "VECTOR"
        return f"VECTOR({self.dimensions})"


def in_choices(column_name: str, choices: type[Enum]) -> str:
    """Return a CHECK condition limiting ``column_name`` to the values of ``choices``.

    Piccolo's ``Check(column.is_in([...]))`` renders the values incorrectly, so
    check constraints on enumerated columns are written as SQL strings.
    """
    values = ", ".join(f"'{member.value}'" for member in choices)
    return f'"{column_name}" IN ({values})'
