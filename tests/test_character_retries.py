"""A character's activities retried after an infrastructure failure do not ask again for what failed for good in
an earlier attempt (issue 22, finding 16): neither an LLM item whose reply stayed invalid after its repairs (it
would be asked with the same seeds, and billed again) nor an image the media service refused. A resume still
asks again. Real Mongo-wire server, local LLM endpoint and media server, in Temporal's ActivityEnvironment."""

import asyncio
import dataclasses
import sys
import uuid

import grpc
import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from clients import mongo
from generation import documents, store
from generation.activities import LlmActivities, MediaActivities
from generation.contracts import CharacterTask, RunRef
from generation.llm import LlmClient
from generation.media import MediaClient, channel_options
from localllm import MODEL_ID
from localstack import servers
from tests.conftest import ROOT
from tests.test_cancel_points import run_input
from tests.test_generation import llm_control
from tests.test_live_day import chat_requests

pytestmark = pytest.mark.timeout(120)

INVALID = {"invalid_json": True}


def seeded_character(posts: int = 2, resume: int = 0) -> CharacterTask:
    """A run of one character in Mongo (bible and cast), and the task of its text or images."""
    world_id = 8000 + uuid.uuid4().int % 1000
    run = RunRef(run_id=world_id, world_id=world_id, number=1, workflow_id=f"world-{world_id}-run-1", resume=resume)
    db = mongo.get_db()
    store.delete_world_content(db, world_id)
    store.save_bible(db, run, {"title": "Lanternfall", "setting": "Tea houses drift on warm winds."}, 0, None)
    store.save_cast(db, run, [{"name": "Ada", "handle": "ada", "concept": "a tea pilot"}])
    world = dataclasses.replace(
        run_input("retries", characters=1, posts=posts).world, world_id=world_id, model=MODEL_ID
    )
    return CharacterTask(run, world, 0)


def attempt(activity, inp, number: int):
    """Run ``activity`` as its attempt ``number``; returns its result or the error it ended with."""
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, attempt=number)

    async def go():
        try:
            return await environment.run(activity, inp)
        except ApplicationError as err:
            return err

    return go()


@pytest.fixture
def llm(llm_server):
    llm_control(llm_server, {"reset": True})
    yield llm_server
    llm_control(llm_server, {"reset": True})


def test_a_retried_character_does_not_ask_again_for_a_post_that_failed_for_good(mongo_env, llm):
    task = seeded_character()
    # Attempt 1: the profile and the plan are written, post 0 stays invalid through its 2 repairs (3 calls),
    # then the provider is down for post 1: the attempt fails and Temporal retries it.
    llm_control(llm, {"queue": [{}, {}, INVALID, INVALID, INVALID, {"status": 503, "message": "upstream down"}]})

    async def both() -> tuple:
        async with httpx.AsyncClient(base_url=llm, timeout=30) as http:
            activities = LlmActivities(LlmClient(http, default_model=MODEL_ID), mongo.get_db())
            first = await attempt(activities.write_character, task, 1)
            calls = chat_requests(llm)
            second = await attempt(activities.write_character, task, 2)
            return first, calls, second

    first, calls_after_first, second = asyncio.run(both())
    assert isinstance(first, ApplicationError) and first.type == "LlmRetryable"
    assert calls_after_first == 6
    # Attempt 2 asks for post 1 only: post 0 is counted as failed again without a call (before: 3 more calls,
    # with the same seeds, billed again).
    assert chat_requests(llm) == 7
    assert (second.profile_made, second.post_indexes, second.failed) == (True, [1], 1)
    post_task = mongo.get_db().generation_tasks.find_one({"_id": documents.task_key(task.run, "post", "0.0")})
    assert [a["attempt"] for a in post_task["attempts"]] == [1]  # asked in attempt 1 only

    # A resume of the run (a new execution) asks again, with fresh seeds.
    resumed = dataclasses.replace(task, run=dataclasses.replace(task.run, resume=1))

    async def resume():
        async with httpx.AsyncClient(base_url=llm, timeout=30) as http:
            activities = LlmActivities(LlmClient(http, default_model=MODEL_ID), mongo.get_db())
            return await attempt(activities.write_character, resumed, 1)

    again = asyncio.run(resume())
    assert (again.post_indexes, again.failed) == ([0, 1], 0) and chat_requests(llm) == 8  # post 0, once


@pytest.fixture
def refusing_media(logs_dir):
    """A media server whose stand-in content policy refuses every avatar of ``seeded_character``."""
    port = servers.free_port()
    process = servers.start(
        "refusing media server",
        [sys.executable, "-m", "mediaserver", "--port", str(port), "--reject-prompts-with", "tea pilot"],
        log_path=logs_dir / "refusing-mediaserver.log",
        cwd=ROOT,
    )
    servers.wait_for_port(process, port)
    yield f"127.0.0.1:{port}"
    process.stop()


def test_a_retried_render_does_not_ask_again_for_an_image_refused_for_good(mongo_env, refusing_media):
    task = seeded_character(posts=0)
    db = mongo.get_db()
    db.characters.update_one({"_id": documents.character_key(task.run, 0)}, {"$set": {"appearance": "a tea pilot"}})

    async def twice():
        async with grpc.aio.insecure_channel(refusing_media, options=channel_options()) as channel:
            activities = MediaActivities(MediaClient(channel), db)
            return await attempt(activities.render_character, task, 1), await attempt(
                activities.render_character, task, 2
            )

    first, second = asyncio.run(twice())
    assert (first.rejected, second.rejected) == (1, 1)
    avatar = db.generation_tasks.find_one({"_id": documents.task_key(task.run, "avatar", f"{task.run.key}-c0")})
    assert avatar["attempt"] == 1  # refused in attempt 1, not asked again in attempt 2
    assert db.characters.find_one({"_id": documents.character_key(task.run, 0)})["image_status"] == "rejected"
