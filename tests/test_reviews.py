"""Reviews and publishing do exactly what staff decided (issue 22, findings 11, 15 and 20): a second reviewer
deciding at once is refused with the reason; a resume after a cancel during a rejected bible's revision
writes it with the reviewer's feedback; staff's publishing choice stands until staff change it."""

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from temporalio.client import WorkflowUpdateFailedError

from clients import mongo
from generation import store
from generation.contracts import Decision, Progress, RunStatus, RunStatusUpdate, Stage
from generation.workflows import WorldRunWorkflow
from tests.test_api import make_run, make_world
from tests.test_cancel_points import StandIns, run_input, stand_in_workers
from tests.test_generation import FINISHED, llm_control, wait_for
from tests.test_generation import make_world as make_generated_world
from worlds import services
from worlds.models import GenerationRun, World


@pytest.mark.fast
@pytest.mark.timeout(60)
def test_two_reviewers_deciding_at_once_one_is_told_it_was_decided(env):
    """Finding 20: decisions were signals, so two reviewers deciding at once both saw success and the last one
    won silently. They are updates now: the second is refused, with who decided first."""
    loop, environment = env
    stand_ins = StandIns(last_report=("record_run_status", "cancelled"))
    inp = run_input(uuid.uuid4().hex[:8], approval=True)

    async def review() -> list:
        workers = stand_in_workers(environment, stand_ins, inp.config)
        async with workers[0], workers[1], workers[2]:
            handle = await environment.client.start_workflow(
                WorldRunWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
            )
            with pytest.raises(WorkflowUpdateFailedError) as early:  # before the bible waits for approval
                await handle.execute_update(WorldRunWorkflow.review, Decision(True, by="early"))
            while not (await handle.query(WorldRunWorkflow.progress)).awaiting_decision:
                await asyncio.sleep(0.05)
            outcomes = await asyncio.gather(
                handle.execute_update(WorldRunWorkflow.review, Decision(True, by="alice")),
                handle.execute_update(WorldRunWorkflow.review, Decision(False, by="bob", feedback="Darker.")),
                return_exceptions=True,
            )
            refused = early.value.cause.message
            await handle.cancel()
            return [refused, *outcomes]

    early, *outcomes = loop.run(review())
    assert early == "nothing is awaiting approval"
    taken = [o for o in outcomes if isinstance(o, str)]
    refusals = [o.cause.message for o in outcomes if isinstance(o, WorkflowUpdateFailedError)]
    assert len(taken) == 1 and len(refusals) == 1, outcomes
    first = "alice" if taken == ["approved"] else "bob"
    assert refusals[0] == f"revision 0 of the bible was {taken[0]} already by {first}"


@pytest.mark.django_db
def test_staffs_publishing_choice_stands_until_staff_change_it(mongo_env):
    """Finding 11: a run that completed after an unpublish or a rollback (a resumed run, say) published itself
    again. It does not now when it was started before staff's choice; a run started after it does."""
    world = make_world()
    first = make_run(world, "completed", number=1)
    store.delete_world_content(mongo.get_db(), world.pk)
    store.save_bible(mongo.get_db(), first.ref, {"title": "Lanternfall"}, 0, None)
    World.objects.filter(pk=world.pk).update(live_run=first)
    second = make_run(world, "running", number=2)  # resumed, say: started before what staff decide now

    def completes(run: GenerationRun) -> None:
        progress = Progress(status=RunStatus.COMPLETED, stage=Stage.DONE)
        services.run_status_record(update=RunStatusUpdate(run.pk, progress, finished=True))

    services.world_unpublish(world=world)
    completes(second)
    world.refresh_from_db()
    assert world.live_run is None  # staff unpublished it: it stays unpublished

    services.run_publish(run=first)  # staff roll back to run 1
    GenerationRun.objects.filter(pk=second.pk).update(status="running")
    completes(second)
    world.refresh_from_db()
    assert world.live_run_id == first.pk  # the rollback stands

    third = make_run(world, "running", number=3)
    GenerationRun.objects.filter(pk=third.pk).update(started_at=timezone.now() + timedelta(seconds=1))
    third.refresh_from_db()
    completes(third)
    world.refresh_from_db()
    assert world.live_run_id == third.pk  # started after staff's choice: it publishes itself


@pytest.mark.django_db(transaction=True)
def test_a_resume_after_a_cancel_during_a_rejected_bibles_revision_keeps_the_feedback(start_worker, llm_server):
    """Finding 15: the revision a reviewer asked for was cancelled while being written; the resumed run wrote
    it without the reviewer's feedback. It writes it with the feedback now, and waits for approval again."""
    start_worker()
    world = make_generated_world(requires_approval=True, character_count=1, posts_per_character=1)
    run = wait_for(services.generation_start(world=world), {"awaiting_approval"} | FINISHED)
    assert run.status == "awaiting_approval"
    llm_control(llm_server, {"latency_s": 5.0})  # the revision takes a while: the cancel lands during it
    try:
        services.generation_reject(run=run, feedback="More sky-whales, fewer tea houses.")
        deadline = time.monotonic() + 30
        while run.status == "awaiting_approval":  # it goes back to writing the bible
            assert time.monotonic() < deadline, run.status
            time.sleep(0.2)
            run.refresh_from_db()
        time.sleep(1)  # into the revision's LLM call (5 s)
        services.generation_cancel(run=run)
        wait_for(run, FINISHED)
    finally:
        llm_control(llm_server, {"reset": True})
    assert run.status == "cancelled"
    bible = mongo.get_db().bibles.find_one({"run_key": run.ref.key})
    assert bible["revision"] == 0  # revision 1 was never written

    resumed = wait_for(services.generation_resume(run=run), {"awaiting_approval"} | FINISHED)
    assert (resumed.status, resumed.bible_revision) == ("awaiting_approval", 1)
    bible = mongo.get_db().bibles.find_one({"run_key": run.ref.key})
    assert bible["revision"] == 1
    assert [entry["feedback"] for entry in bible["history"]] == [None, "More sky-whales, fewer tea houses."]
    task = mongo.get_db().generation_tasks.find_one({"run_key": run.ref.key, "stage": "bible", "index": 1})
    assert "More sky-whales, fewer tea houses." in task["prompt"][-1]["content"]
    services.generation_cancel(run=resumed)
