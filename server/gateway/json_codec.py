"""The JSON encoding of the client protocol: text frames of newline-separated objects.

A WebSocket text frame carries one or more JSON objects separated by newlines.
Commands are decoded with msgspec (unknown fields ignored, as the protocol
evolves); a publication's push is built from pre-encoded pieces, once per broadcast
for every JSON subscriber. Publication ``data`` is the JSON document itself.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from server.gateway.frame_writer import text_frame
from server.gateway.protocol import ERROR_BAD_REQUEST, Command, CommandId, ProtocolError, ReplyError

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)


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


def disconnect_push(code: int, reason: str) -> bytes:
    return _encoder.encode({"push": {"disconnect": {"code": code, "reason": reason}}})


class JsonCodec:
    """The JSON encoding (the default, and the only one of a plain WebSocket)."""

    name = "json"
    subprotocol = ""
    ping = PING
    decode_commands = staticmethod(decode_commands)
    reply = staticmethod(reply)
    error_reply = staticmethod(error_reply)
    push_frames = PushFrames
    unsubscribe_push = staticmethod(unsubscribe_push)
    disconnect_push = staticmethod(disconnect_push)
    ws_frame = staticmethod(text_frame)

    @staticmethod
    def batch(frames: list[bytes]) -> bytes:
        """Frames queued for one socket, as the payload of one WebSocket message."""
        return b"\n".join(frames)

    @staticmethod
    def asgi_message(payload: bytes) -> dict[str, Any]:
        return {"type": "websocket.send", "bytes": None, "text": payload.decode()}


JSON = JsonCodec()
