"""Run an app's lifespan in a task of its own.

Litestar's lifespan holds an anyio task group, which must be exited by the
task that entered it; pytest-asyncio tears fixtures down in another task. A
dedicated task enters the lifespan, waits for the stop signal and exits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar


@asynccontextmanager
async def running_lifespan(app: Litestar) -> AsyncIterator[Litestar]:
    started = asyncio.Event()
    stop = asyncio.Event()

    async def hold() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(hold())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # start-up failed: raise its error here
    try:
        yield app
    finally:
        stop.set()
        await task
