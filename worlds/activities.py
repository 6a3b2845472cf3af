"""Activities that write Django models. Registered on the workflows task queue;
workflows call them by name so that workflow modules import nothing from Django."""

import contextlib

from django.db import close_old_connections
from temporalio import activity

from generation.contracts import DegradedItemsUpdate, RegenerationUpdate, RunStatusUpdate
from generation.living.contracts import LiveReport
from worlds import services


@contextlib.contextmanager
def _fresh_db_connections():
    # Workers never pass through Django's request cycle: drop stale connections ourselves.
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


class RunMirrorActivities:
    @activity.defn(name="record_run_status")
    def record_run_status(self, update: RunStatusUpdate) -> None:
        with _fresh_db_connections():
            services.run_status_record(update=update)

    @activity.defn(name="record_degraded_items")
    def record_degraded_items(self, update: DegradedItemsUpdate) -> None:
        with _fresh_db_connections():
            services.run_degraded_record(update=update)

    @activity.defn(name="record_regeneration")
    def record_regeneration(self, update: RegenerationUpdate) -> None:
        with _fresh_db_connections():
            services.regeneration_record(update=update)

    @activity.defn(name="record_live_state")
    def record_live_state(self, report: LiveReport) -> None:
        with _fresh_db_connections():
            services.live_report_record(report=report)
