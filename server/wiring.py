"""The socket gateway's access to the domain: :class:`GatewayDomain` implements
:class:`server.gateway.ports.Domain` with the same domain services REST calls, and
:data:`RPC_METHODS` are the small app actions clients send as ``rpc``.

Payloads are validated here, with the domain's schemas; a payload that does not
validate is ``ValidationFailed``, which the gateway answers as a bad request.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import msgspec

from server.domain.access.policy import channel_access
from server.domain.accounts import live_sessions
from server.domain.accounts.services import Principal, authenticate
from server.domain.accounts.session_cache import session_cache_of
from server.domain.ai import coach
from server.domain.chat import messages
from server.domain.chat.schemas import Emoji, MessageIn
from server.foundation.control import ControlEvent
from server.foundation.errors import ValidationFailed
from server.foundation.state import AppState
from server.gateway import ports
from server.streams.broker import broadcast_ephemeral

_encoder = msgspec.json.Encoder()

T = TypeVar("T")


def _decode(data: msgspec.Raw, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise ValidationFailed(str(exc)) from None


def _principal(principal: ports.Principal) -> Principal:
    """The domain's principal behind the gateway's view of it: the gateway holds only
    those :meth:`GatewayDomain.authenticate` and :meth:`GatewayDomain.with_role` made."""
    if not isinstance(principal, Principal):
        raise TypeError(f"not a principal of this domain: {type(principal).__name__}")
    return principal


# -- rpc -------------------------------------------------------------------------------------

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


class CancelArgs(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    stream_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


def _as_object(struct: msgspec.Struct) -> dict[str, Any]:
    """``struct`` as the JSON object it encodes to (``msgspec.to_builtins`` is typed ``Any``)."""
    built: dict[str, Any] = msgspec.to_builtins(struct)
    return built


async def typing(state: AppState, principal: Principal, data: msgspec.Raw) -> None:
    """Tell the channel's subscribers this user is typing (ephemeral)."""
    args = _decode(data, ChannelArgs)
    await channel_access(principal, args.channel, write=True)
    await broadcast_ephemeral(
        state,
        args.channel,
        {"type": "typing", "user": {"id": str(principal.user_id), "full_name": principal.full_name}},
    )


async def read(state: AppState, principal: Principal, data: msgspec.Raw) -> dict[str, Any]:
    """Move the read position; the channel sees a ``read`` receipt."""
    args = _decode(data, ReadArgs)
    result = await messages.do_mark_read(state, principal, args.channel, args.offset)
    await broadcast_ephemeral(
        state,
        args.channel,
        {"type": "read", "user_id": str(principal.user_id), "offset": result.last_read_offset},
    )
    return _as_object(result)


async def edit(state: AppState, principal: Principal, data: msgspec.Raw) -> dict[str, Any]:
    args = _decode(data, EditArgs)
    return _as_object(await messages.do_edit_message(state, principal, args.channel, args.offset, args.text))


async def delete(state: AppState, principal: Principal, data: msgspec.Raw) -> None:
    args = _decode(data, DeleteArgs)
    await messages.do_delete_message(state, principal, args.channel, args.offset)


async def reaction(state: AppState, principal: Principal, data: msgspec.Raw) -> dict[str, Any]:
    args = _decode(data, ReactionArgs)
    counts = await messages.do_react(state, principal, args.channel, args.offset, args.emoji, add=args.add)
    return {"reactions": counts}


async def ai_cancel(state: AppState, principal: Principal, data: msgspec.Raw) -> None:
    """Stop a streaming coach reply (the asker, the lounge's mentor or an admin)."""
    args = _decode(data, CancelArgs)
    await channel_access(principal, args.channel, write=False)
    await coach.do_cancel(state, principal, args.channel, args.stream_id)


RpcHandler = Callable[[AppState, Principal, msgspec.Raw], Awaitable[Any]]

RPC_METHODS: dict[str, RpcHandler] = {
    "typing": typing,
    "read": read,
    "message.edit": edit,
    "message.delete": delete,
    "reaction": reaction,
    "ai.cancel": ai_cancel,
}


# -- the adapter -----------------------------------------------------------------------------


class GatewayDomain:
    """:class:`server.gateway.ports.Domain` over the domain services of ``state``."""

    def __init__(self, state: AppState) -> None:
        self._state = state
        self.rpc_methods: Mapping[str, ports.RpcMethod] = {
            name: self._bind(handler) for name, handler in RPC_METHODS.items()
        }

    def _bind(self, handler: RpcHandler) -> ports.RpcMethod:
        state = self._state

        async def method(principal: ports.Principal, data: msgspec.Raw) -> Any:
            return await handler(state, _principal(principal), data)

        return method

    async def authenticate(self, token: str) -> Principal:
        # A socket keeps its principal for its lifetime: without the account row it holds less;
        # and it presents a token once, so the token is not kept among the verified ones.
        return dataclasses.replace(await authenticate(self._state, token, keep_token=False), account=None)

    def with_role(self, principal: ports.Principal, role: str) -> Principal:
        return dataclasses.replace(_principal(principal), role=role)

    async def authorize(self, principal: ports.Principal, channel: str, *, write: bool) -> None:
        await channel_access(_principal(principal), channel, write=write)

    async def post_message(self, principal: ports.Principal, channel: str, data: msgspec.Raw) -> None:
        message = _decode(data, MessageIn)
        await messages.do_post_message(self._state, _principal(principal), channel, message)

    async def stream_snapshots(self, channel: str) -> list[bytes]:
        """An ``ai.snapshot`` of every coach reply still streaming in ``channel``."""
        streams = await coach.active_streams(self._state, channel)
        return [_encoder.encode({"type": "ai.snapshot", **msgspec.to_builtins(stream)}) for stream in streams]

    async def current_role(self, user_id: uuid.UUID) -> str | None:
        return await live_sessions.current_role(user_id)

    async def session_changes(self, sessions: Sequence[tuple[uuid.UUID, str]]) -> list[live_sessions.SessionChange]:
        return await live_sessions.session_changes(sessions)

    def control_received(self, event: ControlEvent) -> None:
        session_cache_of(self._state).apply(event)
