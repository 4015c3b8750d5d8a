"""The coach as the message store sees it: a stored post may be answered, a deletion
stops the replies to it.

The coach (:mod:`server.domain.ai.coach`) sits above the message store: it stores its
replies through it, and stopping a reply may end one whose worker died, which stores
it. So the store does not import the coach; each process connects it here once, at
wiring (:func:`connect_coach`: ``server.app.create_app``, the worker's start-up).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from server.domain.access.policy import LoungeRow
from server.foundation.state import AppState


class Coach(Protocol):
    """What the message store asks of the coach (the module ``server.domain.ai.coach``)."""

    async def maybe_answer(
        self,
        state: AppState,
        *,
        channel: str,
        kind: str,
        lounge: LoungeRow | None,
        asker: uuid.UUID,
        offset: int,
        text: str,
    ) -> str | None: ...

    async def stop_replies_to(self, state: AppState, channel: str, offsets: list[int]) -> None: ...


_connected: Coach | None = None


def connect_coach(coach: Coach) -> None:
    """Connect the coach; one per process (connecting again replaces it)."""
    global _connected
    _connected = coach


def _coach() -> Coach:
    if _connected is None:
        raise RuntimeError("the coach is not connected (create_app and the worker connect it)")
    return _connected


async def maybe_answer(
    state: AppState, *, channel: str, kind: str, lounge: LoungeRow | None, asker: uuid.UUID, offset: int, text: str
) -> str | None:
    """Queue the coach's reply to the message at ``offset`` if the channel wants one; returns its stream id."""
    return await _coach().maybe_answer(
        state, channel=channel, kind=kind, lounge=lounge, asker=asker, offset=offset, text=text
    )


async def stop_replies_to(state: AppState, channel: str, offsets: list[int]) -> None:
    """The messages at ``offsets`` were deleted: stop the coach's replies to them (the coach
    logs its own failures rather than raising them: the deletion is committed)."""
    await _coach().stop_replies_to(state, channel, offsets)
