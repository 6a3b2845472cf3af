"""Workflows. Deterministic; they hold IDs and counters, never content.

Imports nothing from Django: the sandbox re-imports this module.
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from generation.activities import ProbeInput, ProbeResult, StackCheckActivities

MAX_STACK_CHECK_PROBES = 1000


@dataclass
class StackCheckInput:
    check_id: str
    task_queues: list[str]
    probes_per_queue: int = 1
    hold_seconds: float = 0.0
    queue_wait_seconds: float = 30.0  # how long a probe may wait for a worker


@dataclass
class StackCheckResult:
    check_id: str
    probes: int
    workers: list[str]
    task_queues: list[str]


@workflow.defn
class StackCheckWorkflow:
    """Runs probe activities on each task queue; proves the stack end to end."""

    @workflow.run
    async def run(self, check: StackCheckInput) -> StackCheckResult:
        total = check.probes_per_queue * len(check.task_queues)
        if not 0 < total <= MAX_STACK_CHECK_PROBES:
            raise ApplicationError(
                f"a stack check runs 1 to {MAX_STACK_CHECK_PROBES} probes, not {total}", non_retryable=True
            )
        probes = [
            self._probe(check, queue, index) for queue in check.task_queues for index in range(check.probes_per_queue)
        ]
        results = await asyncio.gather(*probes)
        return StackCheckResult(
            check_id=check.check_id,
            probes=len(results),
            workers=sorted({r.worker for r in results}),
            task_queues=sorted({r.task_queue for r in results}),
        )

    async def _probe(self, check: StackCheckInput, queue: str, index: int) -> ProbeResult:
        try:
            return await workflow.execute_activity_method(
                StackCheckActivities.record_probe,
                ProbeInput(check.check_id, queue, index, check.hold_seconds),
                task_queue=queue,
                schedule_to_start_timeout=timedelta(seconds=check.queue_wait_seconds),
                start_to_close_timeout=timedelta(seconds=30 + check.hold_seconds),
                heartbeat_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=5),
            )
        except ActivityError as err:
            if isinstance(err.cause, TimeoutError) and err.cause.type == TimeoutType.SCHEDULE_TO_START:
                raise ApplicationError(
                    f"no worker picked up a probe on task queue {queue!r} within {check.queue_wait_seconds:g}s",
                    non_retryable=True,
                ) from err
            raise
