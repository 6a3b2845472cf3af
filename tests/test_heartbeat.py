"""HeartbeatInterceptor on a real Temporal dev server: an async activity that waits
(here on a thread, as activities wait for a pooled Mongo connection under load) keeps
its heartbeat; without the interceptor the same activity times out."""

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import TimeoutError, TimeoutType
from temporalio.worker import Worker

from temporal_worker.heartbeat import HeartbeatInterceptor

pytestmark = pytest.mark.timeout(60)

WAIT_S = 5.0
HEARTBEAT_TIMEOUT = timedelta(seconds=2)


@activity.defn
async def waits_without_heartbeating(seconds: float) -> int:
    await asyncio.to_thread(time.sleep, seconds)
    return activity.info().attempt


@workflow.defn(sandboxed=False)
class OneWaitingActivity:
    @workflow.run
    async def run(self, seconds: float) -> int:
        return await workflow.execute_activity(
            waits_without_heartbeating,
            seconds,
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


def run_one(temporal_server: str, interceptors: list) -> int:
    async def scenario() -> int:
        client = await Client.connect(temporal_server)
        queue = f"heartbeat-{uuid.uuid4().hex[:8]}"
        async with Worker(
            client,
            task_queue=queue,
            workflows=[OneWaitingActivity],
            activities=[waits_without_heartbeating],
            interceptors=interceptors,
        ):
            return await client.execute_workflow(OneWaitingActivity.run, WAIT_S, id=queue, task_queue=queue)

    return asyncio.run(scenario())


def test_the_interceptor_heartbeats_for_the_whole_activity(temporal_server):
    assert run_one(temporal_server, [HeartbeatInterceptor()]) == 1  # first attempt, no timeout


def test_without_it_the_same_activity_times_out(temporal_server):
    with pytest.raises(WorkflowFailureError) as failure:
        run_one(temporal_server, [])
    timeout = failure.value.cause.cause
    assert isinstance(timeout, TimeoutError) and timeout.type == TimeoutType.HEARTBEAT
