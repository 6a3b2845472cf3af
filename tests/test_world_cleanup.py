"""A deleted world's cleanup, on real servers: store.delete_world_content against Mongo
(world 1 goes, world 12 stays, an interrupted cleanup finishes when run again), and
WorldCleanupWorkflow with the real CleanupActivities on the Temporal dev server."""

import asyncio
import uuid

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from clients import mongo
from generation import documents, store
from generation.activities import CleanupActivities
from generation.contracts import RunRef, WorldCleanupInput, WorldCleanupResult, WorldSnapshot
from generation.documents import CONTENT_COLLECTIONS
from generation.workflows import WorldCleanupWorkflow
from temporal_worker.heartbeat import HeartbeatInterceptor

pytestmark = pytest.mark.timeout(120)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(300_000)  # two GridFS chunks


def image_ids(world_id: int) -> dict:
    # Independent of documents.world_image_ids: "img-w1-" cannot match world 12 either.
    return {"$regex": f"^img-w{world_id}-"}


SNAPSHOT = WorldSnapshot(
    world_id=0,
    name="Dunes",
    premise="Dunes that sing.",
    genre="",
    tone="",
    language="en",
    visual_style="",
    character_count=2,
    posts_per_character=1,
    requires_approval=False,
    token_budget=10_000,
)


def seed(db, world_id: int, runs: int = 2) -> None:
    for number in range(1, runs + 1):
        run = RunRef(run_id=number, world_id=world_id, number=number, workflow_id=f"world-{world_id}-run-{number}")
        store.save_world_snapshot(db, run, SNAPSHOT)
        store.save_bible(db, run, {"title": f"World {world_id}"}, 0, None)
        store.save_cast(
            db,
            run,
            [
                {"name": "Ada", "handle": "ada", "concept": "a cartographer"},
                {"name": "Bo", "handle": "bo", "concept": "a lamplighter"},
            ],
        )
        store.save_post(db, run, 0, 0, {"caption": "Dawn over the dunes", "image_prompt": "dunes"}, "ada")
        store.record_task(db, run, "post", "0.0", {"status": "succeeded"})
        store.reserve_tokens(db, run, 10_000, "bible:0", 100)
        store.store_image_file(db, documents.character_key(run, 0), PNG, {})
        store.store_image_file(db, documents.post_key(run, 0, 0), PNG, {})
        store.archive_versions(db, run, 0, 0, 1, regeneration_id=number)  # post 0.0 was regenerated:
        store.store_image_file(db, documents.post_key(run, 0, 0), PNG, {}, version=2)  # its old version is kept
        store.save_event(db, run, 1, {"title": "A comet", "description": "It splits the sky."}, "staff")  # it lives
        store.save_comment(db, run, 1, 0, False, {"comment": "Wow", "character_index": 1, "post_key": "p"})
        store.save_day_report(db, run, {"day": 1, "posts": 1})


def content(db, world_id: int) -> dict[str, int]:
    counts = {name: db[name].count_documents({"world_id": world_id}) for name in CONTENT_COLLECTIONS}
    counts["images.files"] = db["images.files"].count_documents({"_id": image_ids(world_id)})
    counts["images.chunks"] = db["images.chunks"].count_documents({"files_id": image_ids(world_id)})
    return counts


def wipe(db, world_id: int) -> None:
    for name in CONTENT_COLLECTIONS:
        db[name].delete_many({"world_id": world_id})
    db["images.files"].delete_many({"_id": image_ids(world_id)})
    db["images.chunks"].delete_many({"files_id": image_ids(world_id)})


NOTHING = {name: 0 for name in (*CONTENT_COLLECTIONS, "images.files", "images.chunks")}


@pytest.fixture
def db(mongo_env):
    database = mongo.get_db()
    documents.ensure_indexes(database)
    for world_id in (1, 12, 31):
        wipe(database, world_id)
    yield database
    for world_id in (1, 12, 31):  # leave nothing for later tests that get these world IDs
        wipe(database, world_id)


def test_deleting_world_1_deletes_all_of_it_and_nothing_of_world_12(db):
    seed(db, 1)
    seed(db, 12)
    before_1, before_12 = content(db, 1), content(db, 12)
    assert all(before_1.values()) and before_1["images.chunks"] == 2 * before_1["images.files"]
    batches = []

    deleted, images = store.delete_world_content(db, 1, batch=1, on_batch=lambda: batches.append(1))

    assert deleted == sum(before_1[name] for name in CONTENT_COLLECTIONS)
    assert images == before_1["images.files"] == 6
    assert len(batches) >= images  # one image a batch, with a call between batches
    assert content(db, 1) == NOTHING
    assert content(db, 12) == before_12
    assert store.delete_world_content(db, 1) == (0, 0)  # idempotent
    assert content(db, 12) == before_12


def test_a_cleanup_cut_off_mid_way_is_finished_by_running_it_again(db):
    seed(db, 1)
    seed(db, 12)
    before_12 = content(db, 12)
    files = sorted(doc["_id"] for doc in db["images.files"].find({"_id": image_ids(1)}, {"_id": 1}))
    # States an interrupted cleanup (or an interrupted store_image_file) can leave behind:
    db["images.chunks"].delete_many({"files_id": files[0]})  # a file whose chunks are gone
    db["images.files"].delete_one({"_id": files[1]})  # chunks whose file is gone
    db["images.chunks"].insert_one({"files_id": "img-w1-r9-c0", "n": 0, "data": b"half a write"})

    class CutOff(Exception):
        pass

    def cut_off_after(batches: int):
        calls = []

        def on_batch() -> None:
            calls.append(1)
            if len(calls) == batches:
                raise CutOff()

        return on_batch

    with pytest.raises(CutOff):  # during the documents
        store.delete_world_content(db, 1, batch=1, on_batch=cut_off_after(2))
    with pytest.raises(CutOff):  # during the images
        store.delete_world_content(db, 1, batch=1, on_batch=cut_off_after(len(CONTENT_COLLECTIONS) + 1))
    assert content(db, 1)["images.files"] == 4

    deleted, images = store.delete_world_content(db, 1, batch=1)

    assert deleted == 0 and images == 4
    assert content(db, 1) == NOTHING
    assert content(db, 12) == before_12


def test_the_content_activity_heartbeats_between_batches(db):
    """The batches run on a thread; their heartbeats reach the activity's event loop."""
    seed(db, 31)
    env, beats = ActivityEnvironment(), []
    env.on_heartbeat = lambda *details: beats.append(details)

    async def delete() -> WorldCleanupResult:
        return await env.run(CleanupActivities(None, db).delete_world_content, 31)

    result = asyncio.run(delete())

    assert result.images == 6 and result.documents > 0
    assert len(beats) >= len(CONTENT_COLLECTIONS) + 1
    assert content(db, 31) == NOTHING


@workflow.defn(sandboxed=False)
class WaitsForCancel:
    """Stands in for a world's run that is still going."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


def test_the_cleanup_workflow_stops_the_world_s_workflows_then_deletes_its_content(db, temporal_server):
    seed(db, 31)
    seed(db, 12)
    before_31, before_12 = content(db, 31), content(db, 12)

    async def scenario() -> tuple[WorldCleanupResult, WorkflowExecutionStatus]:
        client = await Client.connect(temporal_server)
        queue = f"cleanup-{uuid.uuid4().hex[:8]}"
        cleanup = CleanupActivities(client, db)
        async with Worker(
            client,
            task_queue=queue,
            workflows=[WorldCleanupWorkflow, WaitsForCancel],
            activities=[cleanup.stop_workflows, cleanup.delete_world_content],
            interceptors=[HeartbeatInterceptor()],
        ):
            run = await client.start_workflow(WaitsForCancel.run, id=f"{queue}-world-31-run-1", task_queue=queue)
            result = await client.execute_workflow(
                WorldCleanupWorkflow.run,
                WorldCleanupInput(31, [run.id, f"{queue}-world-31-run-2"]),
                id=f"{queue}-world-31-cleanup",
                task_queue=queue,
            )
            return result, (await run.describe()).status

    result, status = asyncio.run(scenario())

    assert result.stopped_workflows == 1  # the unknown ID counts as stopped, not as running
    assert status == WorkflowExecutionStatus.CANCELED
    assert result.documents == sum(before_31[name] for name in CONTENT_COLLECTIONS)
    assert result.images == before_31["images.files"] == 6
    assert content(db, 31) == NOTHING
    assert content(db, 12) == before_12
