"""A socket's encoding of the client protocol, chosen once at the handshake.

Two encodings are served on the one endpoint, as Centrifugo serves them: JSON
(:mod:`server.gateway.json_codec`, text frames) and Protobuf
(:mod:`server.gateway.protobuf_codec`, binary frames), the latter asked for with the
``centrifuge-protobuf`` WebSocket subprotocol (what every official SDK sends) or with
``?format=protobuf`` in the URL. Everything above this seam works with
:class:`Codec` and never with a wire format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

from server.gateway.json_codec import JSON
from server.gateway.protobuf_codec import PROTOBUF
from server.gateway.protocol import Command, ProtocolError, ReplyError


class PushEncoder(Protocol):
    """One channel's pushes in one encoding (built once per broadcast for all its sockets)."""

    def publication(self, data: bytes, offset: int) -> bytes: ...

    def join(self, info: bytes) -> bytes: ...

    def leave(self, info: bytes) -> bytes: ...


class Codec(Protocol):
    """An encoding: frames in, replies and pushes out. Each encoded reply or push is one
    unit a socket's queue holds; :meth:`batch` joins the units queued for one socket into
    one WebSocket message and :meth:`ws_frame` frames it."""

    name: str
    subprotocol: str  # the WebSocket subprotocol that asks for it ("" for none)
    ping: bytes

    def decode_commands(self, frame: str | bytes) -> list[Command | ProtocolError]: ...

    def reply(self, command_id: int, method: str, result: Any) -> bytes: ...

    def error_reply(self, command_id: int, error: ReplyError) -> bytes: ...

    def push_frames(self, channel: str) -> PushEncoder: ...

    def unsubscribe_push(self, channel: str, code: int, reason: str) -> bytes: ...

    def disconnect_push(self, code: int, reason: str) -> bytes: ...

    def batch(self, frames: list[bytes]) -> bytes: ...

    def ws_frame(self, payload: bytes) -> bytes: ...

    def asgi_message(self, payload: bytes) -> dict[str, Any]: ...


def negotiate(subprotocols: Sequence[str], query_string: bytes) -> tuple[Codec, str | None]:
    """The encoding a handshake asks for, and the subprotocol to accept (only one the client
    offered: RFC 6455 fails the handshake otherwise)."""
    if PROTOBUF.subprotocol in subprotocols:
        return PROTOBUF, PROTOBUF.subprotocol
    if parse_qs(query_string.decode("latin-1")).get("format") == ["protobuf"]:
        return PROTOBUF, None
    return JSON, None
