"""The app's request class: JSON nested past the decoder's depth is the client's mistake."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import SerializationException


class LoungesRequest(Request[Any, Any, Any]):
    """msgspec refuses JSON nested deeper than Python's recursion limit with ``RecursionError``,
    which Litestar does not expect and would answer 500. Raised as a ``SerializationException``
    it takes the path of any malformed body: ``400 bad_request``."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise SerializationException("the JSON body is nested too deeply") from None
