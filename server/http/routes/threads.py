"""HTTP transport for ``/api/v1/chat/threads``: the caller's AI threads and their messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from server.domain.access.policy import channel_access
from server.domain.accounts.services import Principal
from server.domain.chat import messages, threads
from server.domain.chat.schemas import (
    MessageEdit,
    MessageIn,
    MessageOut,
    MessagePage,
    ReactionIn,
    ReadIn,
    ReadOut,
    ThreadCreate,
    ThreadOut,
    ThreadPage,
    ThreadUpdate,
)
from server.foundation.state import AppState
from server.http.channel_messages import Emoji, HistoryLimit, HistoryOffset, MessageOffset, posted
from server.http.params import Cursor
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]


def _channel(id: uuid.UUID) -> str:
    return f"thread:{id}"


class ThreadController(Controller):
    """The caller's one-to-one AI threads."""

    path = "/chat/threads"
    tags = ["threads"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 422))
    async def list_threads(
        self, principal: Caller, archived: FromQuery[bool] = False, limit: Limit = 50, cursor: Cursor = None
    ) -> ThreadPage:
        """Your threads with the coach, most recently active first (archived ones on request)."""
        return await threads.list_threads(principal, archived=archived, limit=limit, cursor=cursor)

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 404, 422))
    async def create_thread(self, data: JSONBody[ThreadCreate], app_state: State, principal: Caller) -> ThreadOut:
        """Open a one-to-one thread with the coach; its channel is thread:<id>."""
        return await threads.do_create_thread(app_state, principal, data)

    @get("/{id:uuid}", responses=problem_responses(401, 404))
    async def get_thread(self, id: FromPath[uuid.UUID], principal: Caller) -> ThreadOut:
        """One of your threads."""
        return await threads.get_thread(principal, id)

    @patch("/{id:uuid}", responses=problem_responses(401, 404, 422))
    async def update_thread(
        self, id: FromPath[uuid.UUID], data: JSONBody[ThreadUpdate], principal: Caller
    ) -> ThreadOut:
        """Rename a thread, or archive or unarchive it."""
        return await threads.do_update_thread(principal, id, data)

    @delete("/{id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 404))
    async def delete_thread(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> None:
        """Delete a thread with its messages and its channel's history."""
        await threads.do_delete_thread(app_state, principal, id)

    # -- messages (the same routes as a lounge's, see server.http.channel_messages) -----------

    @get("/{id:uuid}/messages", responses=problem_responses(401, 403, 404, 422))
    async def list_messages(
        self,
        id: FromPath[uuid.UUID],
        principal: Caller,
        before: HistoryOffset = None,
        after: HistoryOffset = None,
        cursor: Cursor = None,
        limit: HistoryLimit = 50,
    ) -> MessagePage:
        """History by offset: the newest page by default; ``before``/``after`` an offset, then ``cursor`` onwards."""
        access = await channel_access(principal, _channel(id), write=False)
        return await messages.history(access, before=before, after=after, cursor=cursor, limit=limit)

    @post("/{id:uuid}/messages", status_code=HTTP_201_CREATED, responses=problem_responses(401, 403, 404, 409, 422))
    async def post_message(
        self, id: FromPath[uuid.UUID], data: JSONBody[MessageIn], app_state: State, principal: Caller
    ) -> Response[MessageOut]:
        """Post a message (201); a retry with the same ``client_id`` returns the stored one (200)."""
        return posted(await messages.do_post_message(app_state, principal, _channel(id), data))

    @patch("/{id:uuid}/messages/{offset:int}", responses=problem_responses(401, 403, 404, 409, 422))
    async def edit_message(
        self,
        id: FromPath[uuid.UUID],
        offset: MessageOffset,
        data: JSONBody[MessageEdit],
        app_state: State,
        principal: Caller,
    ) -> MessageOut:
        """Edit your message's text; history and recovery serve the new text from now on."""
        return await messages.do_edit_message(app_state, principal, _channel(id), offset, data.text)

    @delete(
        "/{id:uuid}/messages/{offset:int}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404)
    )
    async def delete_message(
        self, id: FromPath[uuid.UUID], offset: MessageOffset, app_state: State, principal: Caller
    ) -> None:
        """Delete your message: it becomes a tombstone at the same offset."""
        await messages.do_delete_message(app_state, principal, _channel(id), offset)

    @post(
        "/{id:uuid}/messages/{offset:int}/reactions",
        status_code=HTTP_200_OK,
        responses=problem_responses(401, 403, 404, 409),
    )
    async def add_reaction(
        self,
        id: FromPath[uuid.UUID],
        offset: MessageOffset,
        data: JSONBody[ReactionIn],
        app_state: State,
        principal: Caller,
    ) -> dict[str, int]:
        """Add the caller's reaction; answers the message's counts per emoji."""
        return await messages.do_react(app_state, principal, _channel(id), offset, data.emoji, add=True)

    @delete(
        "/{id:uuid}/messages/{offset:int}/reactions/{emoji:str}",
        status_code=HTTP_200_OK,
        responses=problem_responses(401, 403, 404, 409),
    )
    async def remove_reaction(
        self, id: FromPath[uuid.UUID], offset: MessageOffset, emoji: Emoji, app_state: State, principal: Caller
    ) -> dict[str, int]:
        """Take back your reaction; answers the message's reaction counts."""
        return await messages.do_react(app_state, principal, _channel(id), offset, emoji, add=False)

    @post("/{id:uuid}/read", status_code=HTTP_200_OK, responses=problem_responses(401, 403, 404))
    async def mark_read(
        self, id: FromPath[uuid.UUID], data: JSONBody[ReadIn], app_state: State, principal: Caller
    ) -> ReadOut:
        """Move the read position forward; answers it with the unread count."""
        return await messages.do_mark_read(app_state, principal, _channel(id), data.offset)
