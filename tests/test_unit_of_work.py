"""The unit of work: after-commit effects run after the commit, in order, never after a rollback."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from litestar import Litestar

from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work
from server.streams.channels import create_channel
from server.streams.tables import Channel


@pytest.fixture
def state(app: Litestar) -> AppState:
    return app.state.app_state


async def test_effects_run_in_order_after_the_commit(state: AppState) -> None:
    name = f"lounge:{uuid.uuid4()}"
    seen: list[tuple[str, bool]] = []

    async def record(label: str) -> None:
        seen.append((label, await Channel.exists().where(Channel.name == name)))  # seen from outside

    async with unit_of_work(state.engine):
        await create_channel(name)
        await on_commit(lambda: record("first"))
        await on_commit(lambda: record("second"))
        assert seen == []
    assert seen == [("first", True), ("second", True)]


async def test_no_effect_after_a_rollback(state: AppState) -> None:
    seen: list[str] = []

    async def record() -> None:
        seen.append("ran")

    with pytest.raises(LookupError):
        async with unit_of_work(state.engine):
            await on_commit(record)
            raise LookupError("rolled back")
    assert seen == []


async def test_nested_units_run_their_effects_after_the_outermost_commit(state: AppState) -> None:
    seen: list[str] = []

    async def record(name: str) -> None:
        seen.append(name)

    async def service() -> None:  # a nested service call with a unit of work of its own
        async with unit_of_work(state.engine):
            await on_commit(lambda: record("inner"))
        assert seen == []  # not yet: the outer transaction has not committed

    async with unit_of_work(state.engine):
        await on_commit(lambda: record("outer"))
        await service()
        await on_commit(lambda: record("last"))
    assert seen == ["outer", "inner", "last"]


async def test_a_nested_failure_rolls_back_everything(state: AppState) -> None:
    seen: list[str] = []

    async def record() -> None:
        seen.append("ran")

    with pytest.raises(LookupError):
        async with unit_of_work(state.engine):
            await on_commit(record)
            async with unit_of_work(state.engine):
                raise LookupError("inner failure")
    assert seen == []


async def test_outside_a_unit_of_work_an_effect_runs_at_once(state: AppState) -> None:
    seen: list[str] = []

    async def record() -> None:
        seen.append("ran")

    await on_commit(record)
    assert seen == ["ran"]


async def test_a_failing_effect_does_not_stop_the_others_and_is_raised(
    state: AppState, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def fail(name: str) -> None:
        raise ConnectionError(name)

    async def record() -> None:
        seen.append("ran")

    with caplog.at_level(logging.WARNING, logger="lounges.unit_of_work"), pytest.raises(ConnectionError, match="first"):
        async with unit_of_work(state.engine):
            await on_commit(lambda: fail("first"))
            await on_commit(record)
            await on_commit(lambda: fail("second"))
    assert seen == ["ran"]
    assert len([r for r in caplog.records if r.name == "lounges.unit_of_work"]) == 2


async def test_an_effect_registering_an_effect_runs_it_at_once(state: AppState) -> None:
    seen: list[str] = []

    async def follow_up() -> None:
        seen.append("follow-up")

    async def first() -> None:
        seen.append("first")
        await on_commit(follow_up)  # the transaction is over: nothing to wait for

    async with unit_of_work(state.engine):
        await on_commit(first)
    assert seen == ["first", "follow-up"]


async def test_inside_a_plain_transaction_it_is_refused(state: AppState) -> None:
    async with state.engine.transaction():
        with pytest.raises(RuntimeError, match="plain transaction"):
            async with unit_of_work(state.engine):
                pass


async def test_a_caller_cancelled_after_the_commit_still_runs_every_effect(state: AppState) -> None:
    """A socket command answered 108 is cancelled; what it committed is still announced."""
    started, release = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def slow_broadcast() -> None:
        started.set()
        await release.wait()
        seen.append("broadcast")

    async def push() -> None:
        seen.append("push")

    async def write() -> None:
        async with unit_of_work(state.engine):
            await create_channel(f"lounge:{uuid.uuid4()}")
            await on_commit(slow_broadcast)
            await on_commit(push)
        seen.append("after the unit of work")  # never reached: the cancellation is raised

    command = asyncio.create_task(write())
    await started.wait()
    command.cancel()  # the command's timeout, while the first effect is under way
    await asyncio.sleep(0.05)
    assert not command.done() and seen == []
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await command
    assert seen == ["broadcast", "push"]
