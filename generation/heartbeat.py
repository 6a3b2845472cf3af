"""Heartbeat while an async activity awaits something slow, so cancellation
and worker loss reach it promptly."""

import asyncio
import contextlib

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating(every: float = 2.0, *details):
    async def beat():
        while True:  # the first beat waits: most calls finish sooner and need none
            await asyncio.sleep(every)
            activity.heartbeat(*details)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
