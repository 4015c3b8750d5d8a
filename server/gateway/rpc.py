"""The small app actions clients send as ``rpc``: each decodes its data with
msgspec and calls the same domain service REST uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from server.domain.ai import coach
from server.domain.chat import messages
from server.domain.chat.schemas import Emoji
from server.gateway import protocol
from server.streams.broker import broadcast_ephemeral

if TYPE_CHECKING:
    from server.gateway.connection import Connection
    from server.gateway.node import Node

Offset = Annotated[int, msgspec.Meta(ge=1)]


class ChannelArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str


class ReadArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    offset: Annotated[int, msgspec.Meta(ge=0)]


class EditArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    offset: Offset
    text: str


class DeleteArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    offset: Offset


class ReactionArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    offset: Offset
    emoji: Emoji
    add: bool = True


def _decode(data: msgspec.Raw, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise protocol.ProtocolError(protocol.ERROR_BAD_REQUEST, f"validation_failed: {exc}") from None


async def typing(node: Node, connection: Connection, data: msgspec.Raw) -> None:
    """Tell the channel's subscribers this user is typing (ephemeral)."""
    args = _decode(data, ChannelArgs)
    assert connection.principal is not None
    await messages.channel_access(connection.principal, args.channel, write=True)
    await broadcast_ephemeral(
        node.state,
        args.channel,
        {"type": "typing", "user": {"id": str(connection.principal.user_id), "full_name": connection.full_name}},
    )


def _as_object(struct: msgspec.Struct) -> dict[str, Any]:
    """``struct`` as the JSON object it encodes to (``msgspec.to_builtins`` is typed ``Any``)."""
    built: dict[str, Any] = msgspec.to_builtins(struct)
    return built


async def read(node: Node, connection: Connection, data: msgspec.Raw) -> dict[str, Any]:
    """Move the read position; the channel sees a ``read`` receipt."""
    args = _decode(data, ReadArgs)
    assert connection.principal is not None
    result = await messages.do_mark_read(node.state, connection.principal, args.channel, args.offset)
    await broadcast_ephemeral(
        node.state,
        args.channel,
        {"type": "read", "user_id": str(connection.principal.user_id), "offset": result.last_read_offset},
    )
    return _as_object(result)


async def edit(node: Node, connection: Connection, data: msgspec.Raw) -> dict[str, Any]:
    args = _decode(data, EditArgs)
    assert connection.principal is not None
    message = await messages.do_edit_message(node.state, connection.principal, args.channel, args.offset, args.text)
    return _as_object(message)


async def delete(node: Node, connection: Connection, data: msgspec.Raw) -> None:
    args = _decode(data, DeleteArgs)
    assert connection.principal is not None
    await messages.do_delete_message(node.state, connection.principal, args.channel, args.offset)


async def reaction(node: Node, connection: Connection, data: msgspec.Raw) -> dict[str, Any]:
    args = _decode(data, ReactionArgs)
    assert connection.principal is not None
    counts = await messages.do_react(
        node.state, connection.principal, args.channel, args.offset, args.emoji, add=args.add
    )
    return {"reactions": counts}


class CancelArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    stream_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


async def ai_cancel(node: Node, connection: Connection, data: msgspec.Raw) -> None:
    """Stop a streaming coach reply (the asker, the lounge's mentor or an admin)."""
    args = _decode(data, CancelArgs)
    assert connection.principal is not None
    await messages.channel_access(connection.principal, args.channel, write=False)
    await coach.do_cancel(node.state, connection.principal, args.channel, args.stream_id)


RPC_METHODS: dict[str, Callable[[Node, Connection, msgspec.Raw], Awaitable[Any]]] = {
    "typing": typing,
    "read": read,
    "message.edit": edit,
    "message.delete": delete,
    "reaction": reaction,
    "ai.cancel": ai_cancel,
}
