"""Work that must finish once it has started, whoever stops waiting for it.

A socket command is cancelled when it outlives ``WS_COMMAND_TIMEOUT`` (answered 108).
Cancelling a write whose statement already reached PostgreSQL would leave it stored
but never broadcast: a hole in its channel that subscribers wait behind until a gap
fill or the periodic catch-up reads the log. A :class:`Finisher` runs such work to
the end and holds the cancellation back until it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Finisher:
    """Runs awaitables to completion even when the task awaiting them is cancelled
    meanwhile; the cancellation is remembered and raised by :meth:`raise_if_cancelled`
    once the caller has finished what it started."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, awaited to the end whatever cancellations arrive."""
        work = asyncio.ensure_future(awaitable)
        while True:
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                if work.cancelled():  # the work itself was cancelled (the loop is closing)
                    raise
                self.cancelled = True

    def raise_if_cancelled(self) -> None:
        """Raise the cancellation held back by :meth:`run`, if one came."""
        if self.cancelled:
            raise asyncio.CancelledError
