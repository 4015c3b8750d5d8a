"""The Protobuf encoding of the client protocol, the one the native mobile SDKs speak.

A WebSocket binary frame carries one or more messages, each preceded by its length
as a varint (Protobuf's length-delimited stream). Commands are parsed with the
schema of :mod:`server.gateway.protobuf_schema` and then validated as the very same
:class:`~server.gateway.protocol.Command` the JSON encoding produces, so both
encodings share every bound (a uint64 offset beyond bigint is a 107 here too).

Publication ``data`` (and rpc/publish ``data``) are bytes in this encoding: they
carry the same UTF-8 JSON document the JSON encoding carries inline, so a client
decodes a publication the same way on every platform. A broadcast is encoded once
per hub for all Protobuf subscribers (:class:`PushFrames`), like the JSON one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from server.gateway import protobuf_schema as schema
from server.gateway.frame_writer import binary_frame
from server.gateway.protocol import (
    ERROR_BAD_REQUEST,
    MAX_COMMANDS_PER_FRAME,
    ClientInfo,
    Command,
    ProtocolError,
    Publication,
    ReplyError,
)

_json = msgspec.json.Encoder()
_info_decoder = msgspec.json.Decoder(ClientInfo)
_MAX_VARINT_BYTES = 10


def delimited(message: bytes) -> bytes:
    """``message`` preceded by its length as a varint."""
    length = len(message)
    if length < 0x80:
        return bytes((length,)) + message
    prefix = bytearray()
    while length >= 0x80:
        prefix.append((length & 0x7F) | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix) + message


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it; ``ValueError`` if it runs off the end."""
    result = shift = 0
    for index in range(position, min(len(data), position + _MAX_VARINT_BYTES)):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, index + 1
        shift += 7
    raise ValueError("truncated varint")


# -- commands in ----------------------------------------------------------------------------


def decode_commands(frame: str | bytes) -> list[Command | ProtocolError]:
    """Split a frame into commands; a command that is not one becomes its error. A length
    that runs past the frame's end ends the frame with one error (nothing after it can
    be framed). Decoding stops one command past ``MAX_COMMANDS_PER_FRAME`` (the caller
    closes the socket then)."""
    if isinstance(frame, str):  # a text frame on a Protobuf socket: decoded as bytes, refused below
        frame = frame.encode(errors="surrogateescape")
    commands: list[Command | ProtocolError] = []
    position, end = 0, len(frame)
    while position < end and len(commands) <= MAX_COMMANDS_PER_FRAME:
        try:
            length, position = _read_varint(frame, position)
        except ValueError:
            commands.append(ProtocolError(ERROR_BAD_REQUEST, "malformed frame: a length prefix is cut off"))
            break
        if position + length > end:
            commands.append(ProtocolError(ERROR_BAD_REQUEST, "malformed frame: a command runs past the frame's end"))
            break
        commands.append(decode_command(frame[position : position + length]))
        position += length
    return commands


def decode_command(data: bytes) -> Command | ProtocolError:
    message = schema.Command()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return ProtocolError(
            ERROR_BAD_REQUEST, "malformed command: not a Protobuf Command", command_id=_salvage_id(data)
        )
    try:
        return msgspec.convert(_as_dict(message), Command)
    except msgspec.ValidationError as exc:
        return ProtocolError(ERROR_BAD_REQUEST, f"malformed command: {exc}", command_id=message.id)


def _salvage_id(data: bytes) -> int:
    """The id of a command that does not parse, when it comes first (as every SDK writes it)."""
    if not data or data[0] != 0x08:  # field 1, varint
        return 0
    try:
        command_id, _ = _read_varint(data, 1)
    except ValueError:
        return 0
    return command_id if command_id <= 2**32 - 1 else 0


def _as_dict(message: Message) -> dict[str, Any]:
    """A parsed message as the plain values msgspec validates into a ``Command``: the
    fields set, bytes as :class:`msgspec.Raw` (the JSON document they carry)."""
    values: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                values[field.name] = {k: _as_dict(v) if isinstance(v, Message) else v for k, v in value.items()}
            elif field.is_repeated:
                values[field.name] = [_as_dict(item) for item in value]
            else:
                values[field.name] = _as_dict(value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            values[field.name] = msgspec.Raw(value)
        else:
            values[field.name] = value
    return values


# -- replies and pushes out -----------------------------------------------------------------


def _fill(message: Message, values: Mapping[str, Any] | msgspec.Struct) -> None:
    """Set ``message``'s fields from a result as the command handlers build it (dicts,
    structs, ``Raw`` JSON documents); an empty result still marks the message present."""
    message.SetInParent()
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in _items(values):
        if value is None:
            continue
        field = fields[name]
        if field.message_type is not None:
            target = getattr(message, name)
            if field.message_type.GetOptions().map_entry:
                scalar_values = field.message_type.fields_by_name["value"].message_type is None
                for key, item in value.items():
                    if scalar_values:
                        target[key] = item
                    else:
                        _fill(target[key], item)
            elif field.is_repeated:
                add = target.add
                for item in value:
                    if isinstance(item, Publication):  # a recovery's or a history page's: the hot case
                        add(data=bytes(item.data), offset=item.offset)
                    else:
                        _fill(add(), item)
            else:
                _fill(target, value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, name, _as_bytes(value))
        else:
            setattr(message, name, value)


def _items(values: Mapping[str, Any] | msgspec.Struct) -> Any:
    if isinstance(values, msgspec.Struct):
        return ((name, getattr(values, name)) for name in values.__struct_fields__)
    return values.items()


def _as_bytes(value: Any) -> bytes:
    """A bytes field's value: a JSON document already encoded, or one to encode."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, msgspec.Raw):
        return bytes(value)
    return _json.encode(value)


def reply(command_id: int, method: str, result: Mapping[str, Any]) -> bytes:
    message = schema.Reply(id=command_id)
    _fill(getattr(message, method), result)
    return delimited(message.SerializeToString())


def error_reply(command_id: int, error: ReplyError) -> bytes:
    message = schema.Reply(id=command_id)
    _fill(message.error, error)
    return delimited(message.SerializeToString())


PING = delimited(b"")  # an empty Reply


class PushFrames:
    """One channel's pushes, each encoded once for every Protobuf subscriber."""

    __slots__ = ("_channel",)

    def __init__(self, channel: str) -> None:
        self._channel = channel

    def publication(self, data: bytes, offset: int) -> bytes:
        message = schema.Reply()
        push = message.push
        push.channel = self._channel
        pub = push.pub
        pub.SetInParent()
        pub.data = data
        if offset:
            pub.offset = offset
        return delimited(message.SerializeToString())

    def join(self, info: bytes) -> bytes:
        return self._presence("join", info)

    def leave(self, info: bytes) -> bytes:
        return self._presence("leave", info)

    def _presence(self, kind: str, info: bytes) -> bytes:
        message = schema.Reply()
        message.push.channel = self._channel
        _fill(getattr(message.push, kind).info, _info_decoder.decode(info))
        return delimited(message.SerializeToString())


def unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    message = schema.Reply()
    message.push.channel = channel
    _fill(message.push.unsubscribe, {"code": code, "reason": reason})
    return delimited(message.SerializeToString())


def disconnect_push(code: int, reason: str) -> bytes:
    message = schema.Reply()
    _fill(message.push.disconnect, {"code": code, "reason": reason})
    return delimited(message.SerializeToString())


class ProtobufCodec:
    """The Protobuf encoding, asked for with the ``centrifuge-protobuf`` WebSocket
    subprotocol (the SDKs) or ``?format=protobuf``."""

    name = "protobuf"
    subprotocol = "centrifuge-protobuf"
    ping = PING
    decode_commands = staticmethod(decode_commands)
    reply = staticmethod(reply)
    error_reply = staticmethod(error_reply)
    push_frames = PushFrames
    unsubscribe_push = staticmethod(unsubscribe_push)
    disconnect_push = staticmethod(disconnect_push)
    ws_frame = staticmethod(binary_frame)

    @staticmethod
    def batch(frames: list[bytes]) -> bytes:
        """Frames queued for one socket, as the payload of one WebSocket message (each is length-delimited)."""
        return b"".join(frames)

    @staticmethod
    def asgi_message(payload: bytes) -> dict[str, Any]:
        return {"type": "websocket.send", "bytes": payload, "text": None}


PROTOBUF = ProtobufCodec()
