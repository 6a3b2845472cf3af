"""The anti-pattern the benchmark compares against: a new MongoClient for every
activity (``python -m benchmarks.worker --mongo-client-per-activity``). Never use it in
production; it exists so ``benchmarks.generation`` can measure what shared clients save.

An activity interceptor opens the client before the activity and closes it after;
activities reach it through ``PerActivityDatabase``, which stands where the shared
``Database`` normally is.
"""

import asyncio
import contextvars

from pymongo import MongoClient
from pymongo.database import Database
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

_current: contextvars.ContextVar[Database] = contextvars.ContextVar("per_activity_database")


class PerActivityDatabase:
    """Looks like a pymongo ``Database``; every lookup goes to the running activity's own client."""

    @property
    def __class__(self):  # so isinstance(..., Database) holds, as GridFS checks
        return Database

    def __getattr__(self, name: str):
        return getattr(_current.get(), name)

    def __getitem__(self, name: str):
        return _current.get()[name]


class MongoClientPerActivity(Interceptor):
    def __init__(self, uri: str, database: str) -> None:
        self.uri, self.database = uri, database

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _OpenClientAround(next, self)


class _OpenClientAround(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owner: MongoClientPerActivity) -> None:
        super().__init__(next)
        self.owner = owner

    async def execute_activity(self, input: ExecuteActivityInput):
        client = await asyncio.to_thread(MongoClient, self.owner.uri)
        token = _current.set(client[self.owner.database])
        try:
            return await self.next.execute_activity(input)
        finally:
            _current.reset(token)
            await asyncio.to_thread(client.close)
