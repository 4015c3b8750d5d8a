"""What the message routes of lounges and threads share.

A channel's messages are one resource whichever path reaches them:
``/lounges/{id}/messages`` (:mod:`server.http.routes.lounges`) and
``/chat/threads/{id}/messages`` (:mod:`server.http.routes.threads`). Each module
declares its own routes; both take their parameters and answers from here, so the
two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Response
from litestar.params import QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from server.domain.chat.messages import PostResult
from server.domain.chat.schemas import MessageOut
from server.http.params import int_path, int_query, text_path

HistoryLimit = Annotated[int, QueryParameter(ge=1, le=200)]
HistoryOffset = Annotated[
    int | None, int_query(description="a message offset (the page ends before or starts after it)")
]
MessageOffset = Annotated[int, int_path()]
Emoji = Annotated[str, text_path(max_length=32)]


def posted(result: PostResult) -> Response[MessageOut]:
    """201 with a new message; 200 with the stored one when a retry repeats its ``client_id``."""
    return Response(result.message, status_code=HTTP_201_CREATED if result.created else HTTP_200_OK)
