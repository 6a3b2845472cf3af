"""Heartbeat while an async activity awaits something slow, so cancellation
and worker loss reach it promptly."""

import asyncio
import contextlib

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating(every: float = 2.0, *details):
    async def beat():
        while True:
            activity.heartbeat(*details)
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
