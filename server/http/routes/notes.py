"""HTTP transport for ``/api/v1/notes``: a user's own notes, pinning, tags and hybrid search."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, HttpMethod, delete, get, patch, post, route
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from server.domain.accounts.services import Principal
from server.domain.notes import services
from server.domain.notes.schemas import (
    NoteCreate,
    NoteOut,
    NotePage,
    NoteUpdate,
    PinRequest,
    SearchRequest,
    SearchResults,
)
from server.foundation.state import AppState
from server.http.params import Cursor, text_query
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]
TagFilter = Annotated[str | None, text_query(min_length=1, max_length=50)]


class NotesController(Controller):
    """Personal notes: only their owner sees them (anyone else gets 404)."""

    path = "/notes"
    tags = ["notes"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 422))
    async def list_notes(
        self,
        principal: Caller,
        pinned: FromQuery[bool | None] = None,
        tag: TagFilter = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> NotePage:
        """Your notes, pinned first then most recently updated; filter by ``pinned`` and ``tag``."""
        return await services.list_notes(principal, pinned=pinned, tag=tag, limit=limit, cursor=cursor)

    @post("", status_code=HTTP_201_CREATED, responses=problem_responses(401, 422))
    async def create_note(self, data: JSONBody[NoteCreate], app_state: State, principal: Caller) -> NoteOut:
        """Write a note; the coach can cite it once indexed. Tags: up to 20, each 1-50 letters, digits, ``_``, ``-`` or spaces (stored lower-case)."""
        return await services.do_create_note(app_state, principal, data)

    @post("/search", status_code=HTTP_200_OK, responses=problem_responses(401, 422))
    async def search(self, data: JSONBody[SearchRequest], app_state: State, principal: Caller) -> SearchResults:
        """Hybrid search of your notes: vector similarity and full text, fused by
        Reciprocal Rank Fusion. Highlights are HTML-escaped with ``<mark>`` around matches."""
        return await services.search_notes(app_state, principal, data)

    @get("/{id:uuid}", responses=problem_responses(401, 404))
    async def get_note(self, id: FromPath[uuid.UUID], principal: Caller) -> NoteOut:
        """One of your notes."""
        return await services.get_note(principal, id)

    @route("/{id:uuid}", http_method=[HttpMethod.PUT, HttpMethod.PATCH], responses=problem_responses(401, 404, 422))
    async def update_note(
        self, id: FromPath[uuid.UUID], data: JSONBody[NoteUpdate], app_state: State, principal: Caller
    ) -> NoteOut:
        """Change the fields given (PUT and PATCH alike); absent fields stay."""
        return await services.do_update_note(app_state, principal, id, data)

    @patch("/{id:uuid}/pin", responses=problem_responses(401, 404, 422))
    async def pin_note(self, id: FromPath[uuid.UUID], data: JSONBody[PinRequest], principal: Caller) -> NoteOut:
        """``{"pinned": true}`` pins, ``false`` unpins."""
        return await services.do_pin_note(principal, id, data.pinned)

    @delete("/{id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 404))
    async def delete_note(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> None:
        """Delete a note; the coach no longer finds it and search no longer lists it."""
        await services.do_delete_note(app_state, principal, id)
