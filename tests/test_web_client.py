"""The web process's Temporal client: one per process, usable from sync Django code."""

import asyncio
import threading
import uuid

import pytest
from django.conf import settings
from temporalio.client import WorkflowFailureError

from clients import mongo
from clients import temporal as web_client
from clients.temporal import TemporalUnavailable, temporal_call
from generation.workflows import StackCheckInput, StackCheckWorkflow
from localstack import servers
from temporal_worker.stack_check import stack_check_run


def current_client():
    return temporal_call(lambda client: asyncio.sleep(0, result=client))


def test_one_long_lived_client_is_shared_across_calls_and_threads(temporal_env):
    first = current_client()
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(current_client())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(other is first for other in seen)
    assert current_client() is first


@pytest.mark.django_db
def test_workflow_round_trip_from_sync_django_code(start_worker):
    start_worker()
    result = stack_check_run(probes_per_queue=2)
    queues = {
        settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
        settings.TEMPORAL_TASK_QUEUE_LLM,
        settings.TEMPORAL_TASK_QUEUE_MEDIA,
    }
    assert result.probes == 6 and set(result.task_queues) == queues
    docs = list(mongo.get_db().stack_checks.find({"check_id": result.check_id}))
    assert sorted((d["task_queue"], d["index"]) for d in docs) == sorted((q, i) for q in queues for i in range(2))


def test_stack_check_input_is_validated_before_anything_starts():
    with pytest.raises(ValueError, match="1 to 1000 probes"):
        stack_check_run(probes_per_queue=0)
    with pytest.raises(ValueError, match="1 to 1000 probes"):
        stack_check_run(probes_per_queue=400)


def test_unreachable_temporal_raises_a_clear_error(monkeypatch):
    address = f"127.0.0.1:{servers.free_port()}"
    monkeypatch.setattr(settings, "TEMPORAL_ADDRESS", address)
    monkeypatch.setattr(web_client, "_thread", None)
    with pytest.raises(TemporalUnavailable, match=f"Temporal is not reachable at {address}"):
        current_client()
    monkeypatch.setattr(web_client, "_thread", None)  # the next test reconnects to the real server


def test_stack_check_names_a_task_queue_that_no_worker_serves(start_worker):
    start_worker("--queues", "workflows")
    with pytest.raises(Exception) as failure:
        temporal_call(
            lambda client: client.execute_workflow(
                StackCheckWorkflow.run,
                StackCheckInput(
                    "unserved-check",
                    [settings.TEMPORAL_TASK_QUEUE_WORKFLOWS, "worldgen-nobody-serves"],
                    queue_wait_seconds=2,
                ),
                id=f"unserved-{uuid.uuid4().hex[:8]}",
                task_queue=settings.TEMPORAL_TASK_QUEUE_WORKFLOWS,
            )
        )
    assert isinstance(failure.value, WorkflowFailureError)
    assert "no worker picked up a probe on task queue 'worldgen-nobody-serves' within 2s" in str(failure.value.cause)
