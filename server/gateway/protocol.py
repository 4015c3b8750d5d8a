"""The Centrifuge client protocol v2, whatever its encoding: codes, commands and errors.

A command, in either encoding, is decoded into the :class:`Command` below and
validated by msgspec against the bounds declared here (an id is a uint32, an offset
fits PostgreSQL's bigint, ...), so the command handlers never see which encoding a
client speaks. The encodings themselves (:mod:`server.gateway.json_codec`,
:mod:`server.gateway.protobuf_codec`) turn frames into commands and results into
frames; :mod:`server.gateway.codec` picks one per socket.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

# -- error codes (reply.error.code) -----------------------------------------------------------
ERROR_INTERNAL = 100
ERROR_UNAUTHORIZED = 101
ERROR_UNKNOWN_CHANNEL = 102
ERROR_PERMISSION_DENIED = 103
ERROR_METHOD_NOT_FOUND = 104
ERROR_ALREADY_SUBSCRIBED = 105
ERROR_LIMIT_EXCEEDED = 106
ERROR_BAD_REQUEST = 107
ERROR_NOT_AVAILABLE = 108
ERROR_TOKEN_EXPIRED = 109
ERROR_EXPIRED = 110
ERROR_TOO_MANY_REQUESTS = 111
ERROR_UNRECOVERABLE_POSITION = 112

# -- disconnect codes (WebSocket close code and disconnect push) ---------------------------
# 3000-3499: the client reconnects; 3500-3999: it must not (as the SDKs implement it).
DISCONNECT_SHUTDOWN = 3001
DISCONNECT_SERVER_ERROR = 3004
DISCONNECT_EXPIRED = 3005
DISCONNECT_SLOW = 3008
DISCONNECT_WRITE_ERROR = 3009
DISCONNECT_FORCE_RECONNECT = 3011
DISCONNECT_NO_PONG = 3012
DISCONNECT_TOO_MANY_REQUESTS = 3013
DISCONNECT_INVALID_TOKEN = 3500
DISCONNECT_BAD_REQUEST = 3501
DISCONNECT_STALE = 3502
DISCONNECT_FORCE_NO_RECONNECT = 3503
DISCONNECT_CHANNEL_LIMIT = 3505
DISCONNECT_TOO_MANY_ERRORS = 3509

# -- unsubscribe push codes ------------------------------------------------------------------
UNSUBSCRIBE_SERVER = 2000  # access lost: the client does not resubscribe
UNSUBSCRIBE_INSUFFICIENT_STATE = 2500  # the client resubscribes (and recovers)


# Numbers a client may send, bounded where the server stores or compares them: an id is the
# protocol's uint32, an offset or a count fits PostgreSQL's bigint. A number outside is a 107.
CommandId = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Count = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
Flag = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

MAX_COMMANDS_PER_FRAME = 256  # commands in one frame; more closes the socket (3501). A full client's subscribes fit


class ConnectRequest(msgspec.Struct, omit_defaults=True):
    token: str = ""
    name: str = ""
    version: str = ""
    subs: dict[str, Any] = msgspec.field(default_factory=dict)


class RefreshRequest(msgspec.Struct):
    token: str = ""


class SubscribeRequest(msgspec.Struct):
    channel: str = ""
    recover: bool = False
    epoch: str = ""
    offset: Offset = 0
    join_leave: bool = False
    flag: Flag = 0


class ChannelRequest(msgspec.Struct):
    channel: str = ""


class StreamPosition(msgspec.Struct):
    offset: Offset = 0
    epoch: str = ""


class HistoryRequest(msgspec.Struct):
    channel: str = ""
    limit: Count = 0
    since: StreamPosition | None = None
    reverse: bool = False


class PublishRequest(msgspec.Struct):
    channel: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")


class RPCRequest(msgspec.Struct):
    method: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")


class Command(msgspec.Struct, omit_defaults=True):
    """One client command: ``id`` and exactly one request (an empty object is a pong)."""

    id: CommandId = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: ChannelRequest | None = None
    publish: PublishRequest | None = None
    presence: ChannelRequest | None = None
    presence_stats: ChannelRequest | None = None
    history: HistoryRequest | None = None
    ping: dict[str, Any] | None = None
    send: dict[str, Any] | None = None
    rpc: RPCRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: dict[str, Any] | None = None

    def method(self) -> str | None:
        """The request this command carries (``None`` for a pong)."""
        for name in _METHODS:
            if getattr(self, name) is not None:
                return name
        return None


_METHODS = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)


class ClientInfo(msgspec.Struct, omit_defaults=True):
    user: str
    client: str
    conn_info: dict[str, Any] | None = None


class Publication(msgspec.Struct, omit_defaults=True):
    data: msgspec.Raw
    offset: int = 0


class ReplyError(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    temporary: bool = False


class ProtocolError(Exception):
    """A command the server answers with an error reply (the connection stays up)."""

    def __init__(self, code: int, message: str, *, temporary: bool = False, command_id: int = 0) -> None:
        super().__init__(message)
        self.error = ReplyError(code=code, message=message, temporary=temporary)
        self.command_id = command_id


class Disconnect(Exception):
    """End the connection with a disconnect code (sent as the WebSocket close code)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
