"""Generation services: writes and commands, called by admin, API and commands."""

import uuid
from datetime import timedelta

from django.conf import settings

from clients.temporal import temporal_call
from generation.workflows import MAX_STACK_CHECK_PROBES, StackCheckInput, StackCheckResult, StackCheckWorkflow


def stack_check_run(
    *, probes_per_queue: int = 1, task_queues: list[str] | None = None, timeout: float = 60.0
) -> StackCheckResult:
    """Run a probe activity on every task queue and wait for the result.

    Proves that Temporal, a worker on each queue and Mongo all work together.
    """
    queues = task_queues or [
        settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        settings.TEMPORAL_TASK_QUEUE_LLM,
        settings.TEMPORAL_TASK_QUEUE_MEDIA,
    ]
    if not 0 < probes_per_queue * len(queues) <= MAX_STACK_CHECK_PROBES:
        raise ValueError(f"a stack check runs 1 to {MAX_STACK_CHECK_PROBES} probes in all")
    check_id = f"stack-check-{uuid.uuid4().hex[:12]}"
    return temporal_call(
        lambda client: client.execute_workflow(
            StackCheckWorkflow.run,
            StackCheckInput(check_id=check_id, task_queues=queues, probes_per_queue=probes_per_queue),
            id=check_id,
            task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
            execution_timeout=timedelta(seconds=timeout),
        ),
        timeout=timeout + 5,
    )
