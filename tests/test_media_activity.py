"""The render activity against the real media server and Mongo, run in Temporal's ActivityEnvironment."""

import asyncio

import grpc
import pytest
from temporalio.testing import ActivityEnvironment

from clients import mongo
from generation import documents, store
from generation.activities import MediaActivities
from generation.contracts import ItemInput, RunRef, WorldSnapshot
from generation.media import MediaClient, channel_options

pytestmark = pytest.mark.timeout(60)

WORLD = WorldSnapshot(
    world_id=9001,
    name="Render",
    premise="Glass deserts under two moons.",
    genre="",
    tone="",
    language="en",
    visual_style="ink",
    character_count=1,
    posts_per_character=0,
    requires_approval=False,
    token_budget=0,
)


class WriteInterrupted(Exception):
    pass


def test_a_render_interrupted_after_storing_the_image_still_records_its_task(mongo_env, media_env, monkeypatch):
    """A worker killed between storing the image and recording the task must not lose the task record:
    the retried activity renders again instead of skipping an item that looks finished."""
    db = mongo.get_db()
    run = RunRef(run_id=1, world_id=WORLD.world_id, number=1, workflow_id="world-9001-run-1")
    for collection in ("characters", "generation_tasks", "images.files"):
        db[collection].delete_many({"_id": {"$regex": f"^(img-)?{run.key}"}})
    db["images.chunks"].delete_many({"files_id": documents.image_id(documents.character_key(run, 0))})
    store.save_cast(db, run, [{"name": "Ada", "handle": "ada", "concept": "a cartographer of dunes"}])
    item = ItemInput(run=run, world=WORLD, character_index=0)

    real_record_task = store.record_task
    calls = {"n": 0}

    def record_task_interrupted_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise WriteInterrupted("worker killed here")
        return real_record_task(*args, **kwargs)

    monkeypatch.setattr(store, "record_task", record_task_interrupted_once)

    async def attempt_twice() -> None:
        async with grpc.aio.insecure_channel(media_env["MEDIA_GRPC_TARGET"], options=channel_options()) as channel:
            activities = MediaActivities(MediaClient(channel), db)
            with pytest.raises(WriteInterrupted):
                await ActivityEnvironment().run(activities.render_image, item)
            await ActivityEnvironment().run(activities.render_image, item)  # the retry

    asyncio.run(attempt_twice())

    key = documents.character_key(run, 0)
    task = db.generation_tasks.find_one({"_id": documents.task_key(run, "avatar", key)})
    assert task is not None and task["status"] == "succeeded"
    assert db.characters.find_one({"_id": key})["image_status"] == documents.ImageStatus.RENDERED
    assert db["images.files"].count_documents({"_id": documents.image_id(key)}) == 1


def test_chunks_left_by_an_interrupted_image_write_are_replaced(mongo_env):
    """A write killed after its first chunk leaves chunks without a file document: the next write of that
    image finds them (the chunks' unique index refuses a second chunk 0), deletes them and writes whole;
    gridfs reads it back."""
    import gridfs

    db, key = mongo.get_db(), "w9002-r1-c0"
    image = documents.image_id(key)
    fs = gridfs.GridFS(db, collection="images")
    fs.delete(image)
    db["images.chunks"].insert_one({"files_id": image, "n": 0, "data": b"half of an interrupted write"})
    png = bytes(range(256)) * 1200  # two chunks

    assert store.store_image_file(db, key, png, {"renderer": "test"}) == image
    assert fs.get(image).read() == png
    assert sorted(c["n"] for c in db["images.chunks"].find({"files_id": image})) == [0, 1]
    assert store.store_image_file(db, key, b"other bytes", {}) == image  # stored already: nothing is written
    assert fs.get(image).read() == png and fs.get(image).metadata == {"renderer": "test"}
    fs.delete(image)
