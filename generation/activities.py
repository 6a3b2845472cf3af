"""Activities. Each class receives its clients in ``__init__``.

This module imports nothing from Django: workflows import it (for activity
references) inside the Temporal sandbox.
"""

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pymongo.database import Database
from temporalio import activity

WORKER_IDENTITY = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ProbeInput:
    check_id: str
    task_queue: str
    index: int
    hold_seconds: float = 0.0


@dataclass
class ProbeResult:
    task_queue: str
    index: int
    worker: str


class StackCheckActivities:
    """Proves that every task queue has a live worker that can write to Mongo."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @activity.defn
    def record_probe(self, probe: ProbeInput) -> ProbeResult:
        deadline = time.monotonic() + probe.hold_seconds
        while time.monotonic() < deadline:  # stands in for slow work
            activity.heartbeat()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        key = f"{probe.check_id}:{probe.task_queue}:{probe.index}"
        self.db.stack_checks.update_one(
            {"_id": key},
            {
                "$set": {"worker": WORKER_IDENTITY, "attempt": activity.info().attempt},
                "$setOnInsert": {
                    "check_id": probe.check_id,
                    "task_queue": probe.task_queue,
                    "index": probe.index,
                    "created_at": datetime.now(timezone.utc),
                },
            },
            upsert=True,
        )
        return ProbeResult(task_queue=probe.task_queue, index=probe.index, worker=WORKER_IDENTITY)
