"""The unit of work: one database transaction and the side effects that wait for its commit.

A write that must tell the world (broadcast a publication, push a notification,
queue a job, announce lost access) may do so only once its rows are committed:
subscribers must never see what a rollback takes back, and a job must find what
it was queued for. Code inside :func:`unit_of_work`, however deeply nested in
service calls, registers such an effect with :func:`on_commit`; the effects run
in order of registration after the outermost unit of work committed, and never
after a rollback. Outside any unit of work an effect runs at once (what it
follows is already committed, statement by statement).

Once the transaction committed its effects run to the end even if the caller is
cancelled meanwhile (a socket command answered 108 after ``WS_COMMAND_TIMEOUT``): a
committed write whose broadcast was cut short would be a hole in its channel. The
cancellation is raised when they are done.

Each effect runs even when an earlier one failed; a failure is logged, and the
first one is raised once all ran, so a caller whose effect may fail (e.g. a job
that must be queued) still reports it. Effects that must never fail the caller
(broadcasts, notification delivery) catch their own errors, as they always did.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar

from piccolo.engine.postgres import PostgresEngine, PostgresTransaction

from server.foundation.finishing import Finisher

Effect = Callable[[], Awaitable[object]]

log = logging.getLogger("lounges.unit_of_work")

# The effects waiting for the open unit of work's commit; None outside one.
_pending: ContextVar[list[Effect] | None] = ContextVar("unit_of_work_effects", default=None)


@asynccontextmanager
async def unit_of_work(engine: PostgresEngine) -> AsyncIterator[PostgresTransaction]:
    """Open a transaction, or join the unit of work already open (its commit then decides),
    and run the effects registered with :func:`on_commit` once the transaction committed.

    A transaction opened with ``engine.transaction()`` around this one would commit
    after the effects ran, so that is refused."""
    if _pending.get() is not None:
        async with engine.transaction() as joined:  # piccolo joins the open transaction
            yield joined
        return
    if engine.current_transaction.get() is not None:
        raise RuntimeError("a unit of work inside a plain transaction cannot wait for its commit")
    effects: list[Effect] = []
    token = _pending.set(effects)
    try:
        async with engine.transaction() as transaction:
            yield transaction
    finally:
        _pending.reset(token)
    finisher = Finisher()
    await finisher.run(_run(effects))
    finisher.raise_if_cancelled()


async def on_commit(effect: Effect) -> None:
    """Run ``effect`` after the open unit of work commits (dropped if it rolls back),
    or at once when none is open."""
    pending = _pending.get()
    if pending is None:
        await _run([effect])
    else:
        pending.append(effect)


async def _run(effects: list[Effect]) -> None:
    first: Exception | None = None
    for effect in effects:
        try:
            await effect()
        except Exception as exc:
            log.warning("an after-commit effect failed", exc_info=True, extra={"effect": repr(effect)})
            if first is None:
                first = exc
    if first is not None:
        raise first
