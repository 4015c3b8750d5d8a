"""What the gateway needs of the domain, as its own interface.

The gateway speaks the socket protocol; who a client is, what it may read or post and
what an RPC does are the domain's. The gateway never imports the domain: the app wires
an implementation of :class:`Domain` into the :class:`~server.gateway.node.Node`
(``server.wiring``). Refusals are :class:`~server.foundation.errors.AppError`, which the
gateway maps to protocol error codes (:func:`server.gateway.commands.app_error_reply`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from server.foundation.control import ControlEvent


class Principal(Protocol):
    """Who a socket acts as, as far as the gateway reads it (the domain's own type stands behind it)."""

    @property
    def user_id(self) -> uuid.UUID: ...

    @property
    def session_id(self) -> uuid.UUID: ...

    @property
    def role(self) -> str: ...

    @property
    def expires_at(self) -> int: ...  # of the access token, in epoch seconds

    @property
    def full_name(self) -> str: ...


class SessionChange(Protocol):
    """A session whose sockets must not go on as they are: ``revoked`` (closed), or acting
    with a role that is no longer the user's (``role`` is the current one)."""

    @property
    def session_id(self) -> uuid.UUID: ...

    @property
    def user_id(self) -> uuid.UUID: ...

    @property
    def role(self) -> str: ...

    @property
    def revoked(self) -> bool: ...


RpcMethod = Callable[[Principal, msgspec.Raw], Awaitable[Any]]
"""An ``rpc`` method: the caller and the raw ``data``; returns what the reply carries (``None``: nothing)."""


class Domain(Protocol):
    """The domain services the gateway calls. Each raises ``AppError`` to refuse."""

    @property
    def rpc_methods(self) -> Mapping[str, RpcMethod]:
        """The ``rpc`` methods clients may call, by name."""
        ...

    async def authenticate(self, token: str) -> Principal:
        """The principal of a live session for an access token (``token_expired`` when it expired)."""
        ...

    def with_role(self, principal: Principal, role: str) -> Principal:
        """``principal`` acting with ``role`` from now on (its role changed while connected)."""
        ...

    async def authorize(self, principal: Principal, channel: str, *, write: bool) -> None:
        """Refuse unless ``principal`` may read ``channel`` (and, with ``write``, post to it)."""
        ...

    async def post_message(self, principal: Principal, channel: str, data: msgspec.Raw) -> None:
        """Validate and store a message ``data`` published to ``channel`` (it reaches subscribers as a publication)."""
        ...

    async def stream_snapshots(self, channel: str) -> list[bytes]:
        """Publication data a new subscriber of ``channel`` gets before live ones (replies still streaming)."""
        ...

    async def current_role(self, user_id: uuid.UUID) -> str | None:
        """The user's role now (``None``: no such user)."""
        ...

    async def session_changes(self, sessions: Sequence[tuple[uuid.UUID, str]]) -> Sequence[SessionChange]:
        """Of these (session, role it acts with) pairs, those revoked or whose user's role changed."""
        ...

    def control_received(self, event: ControlEvent) -> None:
        """A control event from the bus (any node's, this one's included), before the gateway
        acts on its sockets: what the domain keeps per process may be stale now."""
        ...
