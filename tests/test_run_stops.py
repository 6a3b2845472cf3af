"""A world run that stops does exactly what it says (issue 22, findings 12, 13 and 14): after a budget stop no
character starts its images; cancels are sent in character order, so a run cancelled with two characters in
flight replays the same way; a render that cannot finish keeps only the images not made for a re-render. In
process on the time-skipping test server (stand-ins under the real activity names), and the store step on the
real Mongo-wire server."""

import asyncio
import json
import os
import uuid

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from clients import mongo
from generation import documents, store
from generation.activities import StoreActivities
from generation.contracts import CharacterImages, CharacterTask, CharacterText, RunRef
from generation.workflows import WorldRunWorkflow
from tests.test_cancel_points import StandIns, run_input, stand_in_workers
from tests.test_generation import HISTORIES


class SlowSecondCharacter(StandIns):
    """Character 0's text costs more than the budget; character 1's text ends only once it is cancelled, and
    then completes anyway (as an activity finishing while its cancel arrives)."""

    def __init__(self) -> None:
        super().__init__(last_report=("record_run_status", "budget_exceeded"))
        self.cancelled_text = asyncio.Event()

    @activity.defn(name="write_character")
    async def write_character(self, inp: CharacterTask) -> CharacterText:
        self.log.append(("start", len(self.log), "write_character", str(inp.character_index)))
        if inp.character_index == 0:
            return CharacterText(5_000, profile_made=True, post_indexes=[0, 1])
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled_text.set()
        return CharacterText(30, profile_made=True, post_indexes=[0, 1])  # completed despite the cancel


@pytest.mark.fast
@pytest.mark.timeout(60)
def test_after_a_budget_stop_no_character_starts_its_images(env):
    """Finding 13: a character whose text completed while the budget stop cancelled it went on to render."""
    loop, environment = env
    stand_ins = SlowSecondCharacter()
    inp = run_input(uuid.uuid4().hex[:8], characters=2)
    inp.world.token_budget = 1_000

    async def run() -> str:
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            handle = await environment.client.start_workflow(
                WorldRunWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )
            return (await handle.result()).status

    assert loop.run(run()) == "budget_exceeded"
    assert stand_ins.cancelled_text.is_set()  # character 1's text was being cancelled when it completed
    renders = [detail for event, _, name, detail in stand_ins.log if event == "start" and name == "render_character"]
    assert renders == ["0:[0, 1]"]  # character 0's images only, made before the stop


@pytest.mark.fast
@pytest.mark.timeout(60)
def test_a_run_cancelled_with_two_characters_in_flight_cancels_them_in_order_and_replays(env):
    """Finding 14: the run kept its character tasks in a set, so their cancels went out in memory-address
    order, which another process need not repeat: its history would not replay. Recorded here, and kept in
    tests/histories (``RECORD_HISTORIES=1``) for test_replay."""
    loop, environment = env
    stand_ins = StandIns(block_at=("write_character", 2))  # both characters' texts are in flight
    inp = run_input(uuid.uuid4().hex[:8], characters=3)

    async def run():
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            handle = await environment.client.start_workflow(
                WorldRunWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )
            for _ in range(400):
                started = [d for e, _, n, d in stand_ins.log if e == "start" and n == "write_character"]
                if stand_ins.blocked.is_set() and len(started) == 2:
                    break
                await asyncio.sleep(0.05)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            return await handle.fetch_history()

    history = loop.run(run())
    scheduled = {}  # scheduled event ID: (activity, character index)
    cancels = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            task = json.loads(attributes.input.payloads[0].data)
            scheduled[event.event_id] = (attributes.activity_type.name, task.get("character_index"))
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED:
            cancels.append(scheduled[event.activity_task_cancel_requested_event_attributes.scheduled_event_id])
    # Both characters' activities in flight (character 0 may be writing or rendering by then) are cancelled, in
    # character order.
    assert [character for _, character in cancels] == [0, 1], cancels
    for _ in range(20):  # a fresh replay each time: new tasks, new memory addresses
        asyncio.run(Replayer(workflows=[WorldRunWorkflow]).replay_workflow(history))
    if os.environ.get("RECORD_HISTORIES") == "1":
        (HISTORIES / "world_cancelled_two_characters.json").write_text(history.to_json())


def test_a_render_that_cannot_finish_keeps_only_the_images_not_made(mongo_env):
    """Finding 12: after a render ran out of time, every image of the character was marked for a re-render,
    the rendered and refused ones too (hiding them), and all were counted as degraded."""
    db = mongo.get_db()
    run = RunRef(run_id=1, world_id=9301, number=1, workflow_id="world-9301-run-1")
    store.delete_world_content(db, run.world_id)
    store.save_cast(db, run, [{"name": "Ada", "handle": "ada", "concept": "a cartographer"}])
    for index in range(3):
        store.save_post(db, run, 0, index, {"caption": f"post {index}"}, "ada")
    store.mark_image_rendered(db, documents.CHARACTERS, documents.character_key(run, 0), "img-avatar")
    store.mark_image(db, documents.POSTS, documents.post_key(run, 0, 0), documents.ImageStatus.REJECTED, "policy")
    store.mark_image_rendered(db, documents.POSTS, documents.post_key(run, 0, 1), "img-post-1")

    task = CharacterTask(run, None, 0, profile_made=True, post_indexes=[0, 1, 2])
    images = ActivityEnvironment().run(StoreActivities(db).mark_character_for_rerender, task)
    assert images == CharacterImages(degraded=1, rejected=1)  # post 2 only is missing; post 0 was refused
    statuses = [db.posts.find_one({"_id": documents.post_key(run, 0, i)})["image_status"] for i in range(3)]
    assert statuses == ["rejected", "rendered", "needs_render"]
    avatar = db.characters.find_one({"_id": documents.character_key(run, 0)})
    assert (avatar["image_status"], avatar["image_id"]) == ("rendered", "img-avatar")
    store.delete_world_content(db, run.world_id)


@pytest.mark.fast
@pytest.mark.timeout(90)
def test_a_re_render_of_thousands_of_images_stays_bounded(env):
    """Finding 17: RerenderImagesWorkflow listed every missing image in one payload and ran an activity per
    image in one history, so a live world's thousands of missing images would pass Temporal's payload and
    history limits. RenderMissingImagesWorkflow lists and renders a page at a time and continues as new."""
    from generation.contracts import RerenderInput
    from generation.workflows import RERENDER_BATCH, RERENDER_PAGES_PER_EXECUTION, RenderMissingImagesWorkflow

    loop, environment = env
    stand_ins = StandIns(last_report=("record_degraded_items", "0"))
    stand_ins.needs_render = {(c, p) for c in range(30) for p in range(80)} | {(c, None) for c in range(30)}
    total = len(stand_ins.needs_render)  # 2,430
    base = run_input(uuid.uuid4().hex[:8], characters=30)
    inp = RerenderInput(base.run, base.world, base.config)

    async def run() -> tuple[int, list[int]]:
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            handle = await environment.client.start_workflow(
                RenderMissingImagesWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )
            missing = await handle.result()
            lengths, run_id = [], handle.first_execution_run_id
            while run_id:
                history = await environment.client.get_workflow_handle(
                    inp.run.workflow_id, run_id=run_id
                ).fetch_history()
                lengths.append(len(history.events))
                last = history.events[-1].workflow_execution_continued_as_new_event_attributes
                run_id = last.new_execution_run_id or None
            return missing, lengths

    missing, lengths = loop.run(run())
    per_execution = RERENDER_BATCH * RERENDER_PAGES_PER_EXECUTION
    assert missing == 0 and not stand_ins.needs_render
    assert sum(stand_ins.renders.values()) == total and set(stand_ins.renders.values()) == {1}  # each once
    assert len(lengths) == -(-total // per_execution)  # 3 executions of at most 1,000 images each
    print("history events per execution:", lengths)
    assert max(lengths) < 600  # 40 listings and 40 renders an execution: far from Temporal's 51,200 limit
