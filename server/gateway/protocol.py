"""The Centrifuge client protocol v2, JSON encoding: commands in, replies and pushes out.

A WebSocket text frame carries one or more JSON objects separated by newlines.
Commands are decoded with msgspec (unknown fields ignored, as the protocol
evolves); replies are encoded once and, for publications, shared by every
subscriber. Only this module and :mod:`server.gateway.codec` know the wire
format, so the Protobuf encoding can be added beside them.
"""

from __future__ import annotations

import re
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


_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
encode = _encoder.encode


def decode_commands(frame: str | bytes) -> list[Command | ProtocolError]:
    """Split a frame into commands (one per non-empty line); a line that is not a command
    becomes its error. A line holding a JSON array is refused element by element, so
    each command in it is answered by its id."""
    if isinstance(frame, str):
        frame = frame.encode(errors="surrogateescape")
    commands: list[Command | ProtocolError] = []
    for line in frame.split(b"\n"):
        if not line.strip():
            continue
        if line.lstrip().startswith(b"["):
            commands.extend(_refuse_array(line))
        else:
            commands.append(decode_command(line))
    return commands


_ARRAY_REFUSED = "malformed command: commands go one per line, not in a JSON array"
_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def _refuse_array(line: bytes) -> list[ProtocolError]:
    try:
        elements = _array_decoder.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return [ProtocolError(ERROR_BAD_REQUEST, _ARRAY_REFUSED)]
    if not elements:
        return [ProtocolError(ERROR_BAD_REQUEST, _ARRAY_REFUSED)]
    return [ProtocolError(ERROR_BAD_REQUEST, _ARRAY_REFUSED, command_id=salvage_id(bytes(e))) for e in elements]


def decode_command(line: bytes) -> Command | ProtocolError:
    try:
        return _command_decoder.decode(line)
    except msgspec.DecodeError as exc:
        return ProtocolError(ERROR_BAD_REQUEST, f"malformed command: {exc}", command_id=salvage_id(line))
    except RecursionError:  # msgspec refuses nesting deeper than the interpreter's stack allows
        return ProtocolError(ERROR_BAD_REQUEST, "malformed command: nested too deeply", command_id=salvage_id(line))


class _IdOnly(msgspec.Struct):
    id: CommandId = 0


_id_decoder = msgspec.json.Decoder(_IdOnly)


_LEADING_ID = re.compile(rb'\s*\{\s*"id"\s*:\s*(\d{1,10})\s*,')


def salvage_id(line: bytes) -> int:
    """The id of a command that failed validation, so its error reply can be matched
    (0 when it has none the protocol allows). Other fields are skipped, not built; a
    line nested too deeply to skip still has its id read when it comes first (as the SDKs send it)."""
    try:
        return _id_decoder.decode(line).id
    except msgspec.DecodeError:
        return 0
    except RecursionError:
        found = _LEADING_ID.match(line)
        command_id = int(found.group(1)) if found else 0
        return command_id if command_id <= 2**32 - 1 else 0


def reply(command_id: int, method: str, result: Any) -> bytes:
    return _encoder.encode({"id": command_id, method: result})


def error_reply(command_id: int, error: ReplyError) -> bytes:
    return _encoder.encode({"id": command_id, "error": error})


PING = b"{}"


class PushFrames:
    """Pre-encoded pieces of one channel's pushes, so a publication is encoded
    once per broadcast and shared by every subscriber."""

    __slots__ = ("_join", "_leave", "_pub")

    def __init__(self, channel: str) -> None:
        name = _encoder.encode(channel)
        self._pub = b'{"push":{"channel":' + name + b',"pub":{"data":'
        self._join = b'{"push":{"channel":' + name + b',"join":{"info":'
        self._leave = b'{"push":{"channel":' + name + b',"leave":{"info":'

    def publication(self, data: bytes, offset: int) -> bytes:
        if offset:
            return b'%s%s,"offset":%d}}}' % (self._pub, data, offset)
        return self._pub + data + b"}}}"

    def join(self, info: bytes) -> bytes:
        return self._join + info + b"}}}"

    def leave(self, info: bytes) -> bytes:
        return self._leave + info + b"}}}"


def unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    return _encoder.encode({"push": {"channel": channel, "unsubscribe": {"code": code, "reason": reason}}})


def subscribe_push(channel: str, result: dict[str, Any]) -> bytes:
    return _encoder.encode({"push": {"channel": channel, "subscribe": result}})


def disconnect_push(code: int, reason: str) -> bytes:
    return _encoder.encode({"push": {"disconnect": {"code": code, "reason": reason}}})
