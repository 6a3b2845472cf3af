"""Activities that write Django models. Registered on the workflows task queue;
workflows call them by name so that workflow modules import nothing from Django."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from temporalio import activity

from generation import metrics
from generation.contracts import DegradedItemsUpdate, RegenerationUpdate, RunStatusUpdate
from generation.living.contracts import LiveReport
from worlds import services

_django_writes: ThreadPoolExecutor | None = None


def _writer() -> ThreadPoolExecutor:
    """The worker's Django write threads: WORKER_DJANGO_THREADS (one on SQLite, which takes one writer)."""
    global _django_writes
    if _django_writes is None:
        threads = 1 if connection.vendor == "sqlite" else settings.WORKER_DJANGO_THREADS
        _django_writes = ThreadPoolExecutor(threads, thread_name_prefix="django-writes")
    return _django_writes


async def _in_django(write: Callable[..., Any], /, **kwargs: Any) -> Any:
    """Run a Django write on one of the worker's few Django threads. Each keeps its SQL connection between
    activities (CONN_MAX_AGE, checked before reuse: CONN_HEALTH_CHECKS), so a worker holds a few connections
    instead of opening one each time; one thread alone could not keep up with 10,000 worlds' mirrors."""

    def call() -> Any:
        close_old_connections()  # workers never pass through Django's request cycle
        try:
            return write(**kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(call, thread_sensitive=False, executor=_writer())()


class RunMirrorActivities:
    @activity.defn(name="record_run_status")
    async def record_run_status(self, update: RunStatusUpdate) -> None:
        await _in_django(services.run_status_record, update=update)
        if update.finished:
            metrics.count(metrics.RUNS_FINISHED, status=str(update.progress.status))

    @activity.defn(name="record_degraded_items")
    async def record_degraded_items(self, update: DegradedItemsUpdate) -> None:
        await _in_django(services.run_degraded_record, update=update)

    @activity.defn(name="record_regeneration")
    async def record_regeneration(self, update: RegenerationUpdate) -> None:
        await _in_django(services.regeneration_record, update=update)

    @activity.defn(name="record_live_state")
    async def record_live_state(self, report: LiveReport) -> None:
        await _in_django(services.live_report_record, report=report)
