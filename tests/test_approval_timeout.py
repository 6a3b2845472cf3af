"""The approval gate times out after 7 days of workflow time: on the time-skipping
test server, with the real activities (LLM endpoint, media server, Mongo, SQL)."""

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from clients import mongo
from generation import media
from generation.contracts import RunRef, WorldRunInput
from generation.workflows import WorldRunWorkflow
from temporal_worker.resources import SharedClients
from temporal_worker.worker import QUEUE_KINDS, WorkerOptions, build_workers
from worlds.models import GenerationRun, World
from worlds.services import run_config, world_snapshot

pytestmark = pytest.mark.django_db(transaction=True)


def test_unapproved_bible_expires_the_run_after_the_timeout(time_skipping_server, mongo_env, llm_env, media_env):
    from temporalio.testing import WorkflowEnvironment

    world = World.objects.create(
        name="Tideglass",
        premise="A city of glass towers that flood at every full moon.",
        requires_approval=True,
        character_count=2,
        posts_per_character=1,
    )
    workflow_id = f"timeout-{uuid.uuid4().hex[:8]}"
    run = GenerationRun.objects.create(world=world, number=1, workflow_id=workflow_id)
    config = run_config()
    assert config.approval_timeout_s == 7 * 24 * 3600
    run_input = WorldRunInput(RunRef(run.pk, world.pk, 1, workflow_id), world_snapshot(world), config)
    options = WorkerOptions(
        queues=list(QUEUE_KINDS),
        max_concurrent_activities=10,
        max_concurrent_workflow_tasks=10,
        llm_rate_limit=100,
        max_activities_per_second=None,
        graceful_shutdown_seconds=1,
        connect_timeout=10,
    )

    async def scenario():
        env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=time_skipping_server)
        clients = SharedClients(
            mongo=mongo.get_client(),
            llm_http=httpx.AsyncClient(base_url=llm_env["LLM_BASE_URL"]),
            media_channel=grpc.aio.insecure_channel(media_env["MEDIA_GRPC_TARGET"], options=media.channel_options()),
        )
        async with env, contextlib.AsyncExitStack() as running:
            executor = running.enter_context(ThreadPoolExecutor(10))
            for worker in build_workers(env.client, clients, options, executor):
                await running.enter_async_context(worker)
            progress = await env.client.execute_workflow(
                WorldRunWorkflow.run, run_input, id=workflow_id, task_queue=config.workflows_queue
            )
            skipped = (
                await env.get_current_time() - (await env.client.get_workflow_handle(workflow_id).describe()).start_time
            )
        await clients.llm_http.aclose()
        await clients.media_channel.close()
        return progress, skipped

    progress, skipped = asyncio.run(scenario())
    assert progress.status == "expired" and progress.stage == "approval"
    assert skipped.total_seconds() >= 7 * 24 * 3600  # a week of workflow time went by
    run.refresh_from_db()
    assert run.status == "expired" and "nobody approved the world bible in time" in run.error
    assert run.finished_at is not None
    key = run.ref.key
    assert mongo.get_db().bibles.count_documents({"run_key": key}) == 1  # the bible is kept
    assert mongo.get_db().characters.count_documents({"run_key": key}) == 0
