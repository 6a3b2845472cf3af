"""Heartbeats for every async activity that has a heartbeat timeout, for its whole
run: the remote call and the Mongo work around it (which can wait for a pooled
connection under load). Cancellation and worker loss then reach it promptly: within a fifth
of its heartbeat timeout (2 s for the usual 10 s; a long activity that may wait longer, such
as a live world's day, sets a longer timeout and heartbeats less)."""

import asyncio
import contextlib
import inspect

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor


@contextlib.asynccontextmanager
async def heartbeating(every: float):
    async def beat():
        while True:  # the first beat waits: most activities finish sooner and need none
            await asyncio.sleep(every)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class HeartbeatInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _HeartbeatAround(next)


class _HeartbeatAround(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput):
        timeout = activity.info().heartbeat_timeout
        if timeout is None or not inspect.iscoroutinefunction(input.fn):
            return await self.next.execute_activity(input)
        # Well inside the timeout (the SDK sends at most one heartbeat per 80% of it).
        async with heartbeating(every=timeout.total_seconds() / 5):
            return await self.next.execute_activity(input)
