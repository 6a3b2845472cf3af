"""Activities that write Django models. Registered on the workflows task queue;
workflows call them by name so that workflow modules import nothing from Django."""

from django.db import close_old_connections
from temporalio import activity

from generation.contracts import DegradedItemsUpdate, RunStatusUpdate
from worlds import services


class RunMirrorActivities:
    @activity.defn(name="record_run_status")
    def record_run_status(self, update: RunStatusUpdate) -> None:
        # Workers never pass through Django's request cycle: drop stale connections ourselves.
        close_old_connections()
        try:
            services.run_status_record(update=update)
        finally:
            close_old_connections()

    @activity.defn(name="record_degraded_items")
    def record_degraded_items(self, update: DegradedItemsUpdate) -> None:
        close_old_connections()
        try:
            services.run_degraded_record(update=update)
        finally:
            close_old_connections()
