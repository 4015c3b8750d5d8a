"""What each protocol command does for a connection. Thin: permission checks and
writes are the domain's (the same services as REST, reached through the node's
:class:`~server.gateway.ports.Domain`), this module only speaks the protocol.

Every failure of a command becomes an error reply; only protocol violations
(no connect first, a bad token, too many failed commands) end the connection,
with a disconnect code. A command takes at most ``WS_COMMAND_TIMEOUT`` seconds: a
stalled database or Redis is answered 108, not waited for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from asyncpg.exceptions._base import DataError as ArgumentError  # a query argument asyncpg cannot encode
from opentelemetry.trace import SpanKind

from server.foundation import tracing
from server.foundation.errors import AppError
from server.foundation.redis import REDIS_ERRORS
from server.gateway import protocol
from server.gateway.connection import PERSONAL, Connection, Subscription
from server.gateway.hub import catch_up
from server.gateway.node import Node
from server.gateway.protocol import Command, ProtocolError, ReplyError
from server.gateway.subscriber import REDIS_TIMEOUT, personal_channel
from server.streams import history
from server.streams.channels import ChannelName

log = logging.getLogger("lounges.realtime")

VERSION = "lounges 0.1"
_pub_encoder = msgspec.json.Encoder()


def app_error_reply(exc: AppError) -> ReplyError:
    """Map a domain problem to the socket's one error shape: a protocol code and
    ``"<stable code>: <detail>"`` as the message."""
    if exc.status == 401:
        code = protocol.ERROR_TOKEN_EXPIRED if exc.code == "token_expired" else protocol.ERROR_UNAUTHORIZED
    elif exc.status in (402, 403):
        code = protocol.ERROR_PERMISSION_DENIED
    elif exc.status == 404:
        code = (
            protocol.ERROR_UNKNOWN_CHANNEL
            if exc.code.endswith(("channel_not_found", "lounge_not_found", "thread_not_found"))
            else protocol.ERROR_BAD_REQUEST
        )
    elif exc.status == 429:
        code = protocol.ERROR_TOO_MANY_REQUESTS
    elif exc.status == 503:
        code = protocol.ERROR_NOT_AVAILABLE
    else:
        code = protocol.ERROR_BAD_REQUEST
    return ReplyError(code=code, message=f"{exc.code}: {exc.detail}", temporary=exc.status in (429, 503))


async def handle_frame(node: Node, connection: Connection, frame: str | bytes) -> None:
    """Run every command of a frame, in order. A frame too large runs none of them (each
    is refused by id); one of more than ``MAX_COMMANDS_PER_FRAME`` commands is a protocol
    violation that closes the socket."""
    commands = connection.codec.decode_commands(frame)
    if len(commands) > protocol.MAX_COMMANDS_PER_FRAME:
        connection.abort(protocol.DISCONNECT_BAD_REQUEST, "too many commands")
        return
    if len(frame) > node.settings.ws_max_frame_bytes:
        if not connection.connected:
            connection.abort(protocol.DISCONNECT_BAD_REQUEST, "frame too large")
            return
        # Still answer the commands by id, so the client learns why (each counts as a failure).
        for command in commands:
            command_id = command.id if isinstance(command, Command) else command.command_id
            if command_id:
                _fail(connection, command_id, ReplyError(protocol.ERROR_BAD_REQUEST, "frame too large"))
            if connection.closed:
                return
        return
    for command in commands:
        if connection.closed:
            return
        if isinstance(command, ProtocolError):
            if connection.connected:
                _fail(connection, command.command_id, command.error)
            else:
                connection.abort(protocol.DISCONNECT_BAD_REQUEST, "malformed command")
            continue
        await (_traced_run if tracing.TRACING else _run)(node, connection, command)


async def _traced_run(node: Node, connection: Connection, command: Command) -> None:
    """:func:`_run` inside the command's span ``gateway.<method>`` (tracing on only): the
    store, broker and coach spans of what the command does are its children."""
    method = command.method()
    if method is None or method == "send":  # a pong, or a message that means nothing here
        await _run(node, connection, command)
        return
    attributes = {"rpc.system": "centrifuge", "rpc.method": method, "lounges.client": connection.client_id}
    request = getattr(command, method)
    channel = getattr(request, "channel", None)
    if isinstance(channel, str):
        attributes["lounges.channel"] = channel
    if command.rpc is not None:
        attributes["lounges.rpc"] = command.rpc.method
    with tracing.tracer.start_as_current_span(f"gateway.{method}", kind=SpanKind.SERVER, attributes=attributes):
        await _run(node, connection, command)


def _fail(connection: Connection, command_id: int, error: ReplyError) -> None:
    """Answer a failed command; failures the client caused count towards ``WS_MAX_ERRORS``."""
    connection.enqueue(connection.codec.error_reply(command_id, error))
    if error.code not in (protocol.ERROR_INTERNAL, protocol.ERROR_NOT_AVAILABLE):
        connection.count_failure()


async def _run(node: Node, connection: Connection, command: Command) -> None:
    method = command.method()
    if method is None and not command.id:  # an empty command is a pong
        connection.pong_due = 0.0
        return
    if not connection.connected and method != "connect":
        connection.abort(protocol.DISCONNECT_BAD_REQUEST, "connect first")
        return
    if method in ("send",):
        return  # asynchronous messages carry no meaning here
    handler = _HANDLERS.get(method) if method is not None else None
    started = time.perf_counter()
    error: ReplyError | None = None
    try:
        if method is None or handler is None:
            # Also a command with an id but no request this server knows (a pong has no id).
            raise ProtocolError(protocol.ERROR_METHOD_NOT_FOUND, f"method {method or 'unknown'} is not supported")
        result = await node.bounded(handler(node, connection, command), node.settings.ws_command_timeout)
        follow_up = None
        if isinstance(result, AfterReply):
            result, follow_up = result.result, result.then
        if result is not None and command.id:
            connection.enqueue(connection.codec.reply(command.id, method, result))
        if follow_up is not None:
            await follow_up()
    except ProtocolError as exc:
        error = exc.error
    except AppError as exc:
        error = app_error_reply(exc)
    except protocol.Disconnect as exc:
        connection.abort(exc.code, exc.reason)
        node.tally.command(method, "disconnect", started)
        return
    except (asyncpg.DataError, ArgumentError) as exc:  # a value PostgreSQL cannot store (a NUL, a huge number)
        log.info("command refused by the database", extra={"method": method, "error": repr(exc)})
        error = ReplyError(protocol.ERROR_BAD_REQUEST, "invalid_value: a value cannot be stored")
    except RecursionError:
        error = ReplyError(protocol.ERROR_BAD_REQUEST, "malformed command: nested too deeply")
    except (*REDIS_ERRORS, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        log.warning("command failed: a dependency is unavailable", extra={"method": method, "error": repr(exc)})
        error = UNAVAILABLE
    except Exception:
        log.exception("command failed", extra={"method": method, "client": connection.client_id})
        error = ReplyError(protocol.ERROR_INTERNAL, "internal error", temporary=True)
    if error is not None:
        _answer(connection, command, error)
    node.tally.command(method, "ok" if error is None else str(error.code), started)


@dataclass(frozen=True, slots=True)
class AfterReply:
    """A handler's result and what runs once its reply is queued: outside the command's
    time limit (a command answered with success is never answered again) and never failing."""

    result: Any
    then: Callable[[], Awaitable[None]]


UNAVAILABLE = ReplyError(
    protocol.ERROR_NOT_AVAILABLE, "unavailable: the server could not complete this in time; retry", temporary=True
)


def _answer(connection: Connection, command: Command, error: ReplyError) -> None:
    if tracing.TRACING:  # the command's span, which is current here
        tracing.failed(str(error.code), error.message)
    if command.connect is not None:
        # A failed connect is answered, then closed: an expired token or a temporary failure
        # with a code the SDKs reconnect on, anything else as an invalid token.
        if error.code == protocol.ERROR_TOKEN_EXPIRED:
            close, reason = protocol.DISCONNECT_EXPIRED, "token expired"
        elif error.temporary:
            close, reason = protocol.DISCONNECT_SERVER_ERROR, "temporarily unavailable"
        else:
            close, reason = protocol.DISCONNECT_INVALID_TOKEN, "unauthorized"
        frame = connection.codec.error_reply(command.id, error)
        connection.node.spawn(_reply_then_close(connection, frame, close, reason))
        return
    _fail(connection, command.id, error)


async def _reply_then_close(connection: Connection, frame: bytes, code: int, reason: str) -> None:
    try:
        await connection.send_now(frame)
    except ConnectionError:
        pass  # the peer is already gone: there is no one left to tell
    finally:
        connection.abort(code, reason)


# -- connect / refresh -------------------------------------------------------------------


async def _connect(node: Node, connection: Connection, command: Command) -> None:
    assert command.connect is not None
    if connection.connected:
        raise ProtocolError(protocol.ERROR_BAD_REQUEST, "already connected")
    if not command.connect.token:
        raise protocol.Disconnect(protocol.DISCONNECT_INVALID_TOKEN, "token required")
    # WS_CONNECT_TIMEOUT bounds the client's time to send connect, not our answer to it
    # (under a reconnect storm authenticating can take longer than the timeout).
    deadline, connection.deadline = connection.deadline, math.inf
    try:
        await _authenticate_connection(node, connection, command)
    finally:
        if not connection.connected:
            connection.deadline = deadline


async def _authenticate_connection(node: Node, connection: Connection, command: Command) -> None:
    assert command.connect is not None
    try:
        principal = await node.domain.authenticate(command.connect.token)
    except AppError as exc:
        if exc.code == "token_expired":
            raise ProtocolError(protocol.ERROR_TOKEN_EXPIRED, "token expired") from None
        raise protocol.Disconnect(protocol.DISCONNECT_INVALID_TOKEN, exc.code) from None
    connection.principal = principal
    connection.expires_at = float(principal.expires_at)
    connection.full_name = principal.full_name
    personal = personal_channel(principal.user_id)
    connection.subs[personal] = PERSONAL
    await node.join_personal(connection)
    connection.connected = True
    connection.next_ping = time.monotonic() + node.settings.ws_ping_interval
    result = {
        "client": connection.client_id,
        "version": VERSION,
        "expires": True,
        "ttl": max(1, int(connection.expires_at - time.time())),
        "ping": node.settings.ws_ping_interval,
        "pong": True,
        "subs": {personal: {}},
    }
    await connection.send_now(connection.codec.reply(command.id, "connect", result))
    connection.start_writer()


async def _refresh(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    assert command.refresh is not None and connection.principal is not None
    principal = await node.domain.authenticate(command.refresh.token)
    if principal.user_id != connection.principal.user_id:
        raise protocol.Disconnect(protocol.DISCONNECT_INVALID_TOKEN, "token of another user")
    old_session = connection.principal.session_id
    connection.principal = principal
    node.move_session(connection, old_session)
    connection.expires_at = float(principal.expires_at)
    return {
        "client": connection.client_id,
        "version": VERSION,
        "expires": True,
        "ttl": max(1, int(connection.expires_at - time.time())),
    }


# -- subscriptions -----------------------------------------------------------------------


async def _subscribe(node: Node, connection: Connection, command: Command) -> AfterReply:
    request = command.subscribe
    assert request is not None and connection.principal is not None
    name = request.channel
    if name in connection.subs:
        raise ProtocolError(protocol.ERROR_ALREADY_SUBSCRIBED, "already subscribed")
    if len(connection.subs) >= node.settings.ws_max_subscriptions + 1:  # + the personal channel
        raise ProtocolError(protocol.ERROR_LIMIT_EXCEEDED, "too many subscriptions")
    if ChannelName.parse(name) is None:
        raise ProtocolError(protocol.ERROR_UNKNOWN_CHANNEL, "unknown channel")
    await node.domain.authorize(connection.principal, name, write=False)
    sub = Subscription(join_leave=request.join_leave)
    connection.subs[name] = sub  # from now on live publications are buffered
    try:
        hub = await node.hub(name)
        hub.subscribers.add(connection)
        if request.recover and request.epoch == hub.epoch and request.offset > hub.offset:
            # The client saw more than this node has delivered yet (it comes from a node
            # that is ahead): all it saw is committed, so bring the hub up to it from the log.
            await catch_up([hub])
        position = hub.offset
        publications: list[tuple[int, bytes]] = []
        recovered = False
        if request.recover:
            missed = position - request.offset
            if request.epoch == hub.epoch and 0 <= missed <= node.settings.recovery_max_publications:
                ring = hub.ring_after(request.offset)
                publications = (
                    ring
                    if ring is not None
                    else await history.publications_after(
                        node.state, name, request.offset, position, missed, rewrites=hub.rewrites
                    )
                )
                recovered = True
            elif request.flag & 2:
                raise ProtocolError(protocol.ERROR_UNRECOVERABLE_POSITION, "unrecoverable position")
            node.tally.recovery(recovered)
        snapshots = await _stream_snapshots(node, name)
    except BaseException:
        connection.subs.pop(name, None)
        hub_now = node.hubs.get(name)
        if hub_now is not None:
            hub_now.subscribers.discard(connection)
            node.release_if_idle(hub_now)
        raise
    result = {
        "recoverable": True,
        "positioned": True,
        "epoch": hub.epoch,
        "offset": position,
        "recovered": recovered,
        "was_recovering": request.recover,
        "publications": [protocol.Publication(data=msgspec.Raw(d), offset=o) for o, d in publications],
    }

    async def go_live() -> None:
        """Nothing here may fail: the subscription is complete once its reply is queued."""
        # A reply still streaming: its text so far first, then the live deltas (numbered,
        # so the client drops those the snapshot already holds).
        for snapshot in snapshots:
            connection.enqueue(hub.push_frames(connection.codec).publication(snapshot, 0))
        for offset, frame in sub.go_live():
            if offset == 0 or offset > position:
                connection.enqueue(frame)
        await node.announce_join(connection, name)

    return AfterReply(result, go_live)


async def _stream_snapshots(node: Node, name: str) -> list[bytes]:
    """Coach replies streaming in ``name`` (none while Redis is away: their deltas could not reach us either)."""
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            return await node.domain.stream_snapshots(name)
    except REDIS_ERRORS as exc:
        log.warning("streaming replies unknown; subscribing without", extra={"channel": name, "error": repr(exc)})
        return []


async def _unsubscribe(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    assert command.unsubscribe is not None and connection.principal is not None
    name = command.unsubscribe.channel
    if name == personal_channel(connection.principal.user_id):
        raise ProtocolError(protocol.ERROR_PERMISSION_DENIED, "the personal channel cannot be left")
    await node.unsubscribe(connection, name)
    return {}


# -- publish, history, presence ----------------------------------------------------------


async def _publish(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    request = command.publish
    assert request is not None and connection.principal is not None
    await node.domain.post_message(connection.principal, request.channel, request.data)
    return {}


async def _history(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    request = command.history
    assert request is not None and connection.principal is not None
    await node.domain.authorize(connection.principal, request.channel, write=False)
    position = await history.stream_position(request.channel)
    if position is None:
        raise ProtocolError(protocol.ERROR_UNKNOWN_CHANNEL, "unknown channel")
    offset, epoch, rewrites = position
    limit = max(0, min(request.limit, node.settings.recovery_max_publications))
    entries: list[tuple[int, bytes]] = []
    if request.since is not None:
        if request.since.epoch and request.since.epoch != epoch:
            raise ProtocolError(protocol.ERROR_UNRECOVERABLE_POSITION, "epoch changed")
        if limit:
            entries = await history.publications_after(
                node.state, request.channel, request.since.offset, offset, limit, rewrites=rewrites
            )
    elif limit:
        entries = await history.latest(request.channel, limit)
    if request.reverse:
        entries.reverse()
    return {
        "epoch": epoch,
        "offset": offset,
        "publications": [protocol.Publication(data=msgspec.Raw(d), offset=o) for o, d in entries],
    }


async def _presence(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    assert command.presence is not None and connection.principal is not None
    await node.domain.authorize(connection.principal, command.presence.channel, write=False)
    clients = await node.presence.clients(command.presence.channel)
    node.tally.presence(len(clients))
    return {"presence": clients}


async def _presence_stats(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    assert command.presence_stats is not None and connection.principal is not None
    await node.domain.authorize(connection.principal, command.presence_stats.channel, write=False)
    clients = await node.presence.clients(command.presence_stats.channel)
    node.tally.presence(len(clients))
    return {"num_clients": len(clients), "num_users": len({c["user"] for c in clients.values()})}


async def _rpc(node: Node, connection: Connection, command: Command) -> dict[str, Any]:
    request = command.rpc
    assert request is not None and connection.principal is not None
    method = node.domain.rpc_methods.get(request.method)
    if method is None:
        raise ProtocolError(protocol.ERROR_METHOD_NOT_FOUND, f"unknown rpc method {request.method!r}")
    data = await method(connection.principal, request.data)
    return {"data": msgspec.Raw(_pub_encoder.encode(data))} if data is not None else {}


_HANDLERS = {
    "connect": _connect,
    "refresh": _refresh,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "publish": _publish,
    "history": _history,
    "presence": _presence,
    "presence_stats": _presence_stats,
    "rpc": _rpc,
}
