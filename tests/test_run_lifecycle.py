"""Run rows never drift from their workflows, publishing decides what is public, and deleting a
world deletes its content. Real Temporal dev server, worker processes, Mongo, LLM and media."""

import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from clients import mongo
from clients import temporal as temporal_client
from clients.temporal import temporal_call
from generation import documents
from generation.contracts import WorldCleanupResult, cleanup_workflow_id
from localstack import servers
from tests.tcp_proxy import SlowReplyProxy
from tests.test_generation import FINISHED, counts, make_world, wait_for
from worlds.models import AuditEvent, GenerationRun, World
from worlds.services import (
    ActionError,
    ActionInvalid,
    ActionUnavailable,
    generation_approve,
    generation_cancel,
    generation_start,
    run_publish,
    runs_reconcile,
    world_delete,
    world_unpublish,
)

pytestmark = pytest.mark.django_db(transaction=True)


def describe_status(workflow_id: str) -> str:
    return temporal_call(lambda client: client.get_workflow_handle(workflow_id).describe()).status.name


def use_temporal_at(address: str, settings, monkeypatch) -> None:
    settings.TEMPORAL_ADDRESS = address  # restored after the test
    monkeypatch.setattr(temporal_client, "_thread", None)  # a fresh web client, restored after the test


# --- starts and drift -------------------------------------------------------------------------


def test_a_start_whose_answer_is_lost_is_confirmed_by_asking_temporal(start_worker, stack_env, settings, monkeypatch):
    """The server accepts the start but its answer comes too late: the row is kept as
    start_unconfirmed (never deleted), then Temporal's own description settles it; the run can be
    cancelled and the next run gets a new number."""
    proxy = SlowReplyProxy(stack_env["TEMPORAL_ADDRESS"])
    use_temporal_at(proxy.address, settings, monkeypatch)
    world = make_world(requires_approval=True, character_count=1, posts_per_character=1)
    try:
        temporal_call(lambda client: client.service_client.check_health())  # connect while answers are prompt
        proxy.reply_delay, settings.TEMPORAL_CALL_TIMEOUT_SECONDS = 3.0, 1.0
        with pytest.raises(ActionUnavailable, match="did not confirm the start of Lanternfall run 1"):
            generation_start(world=world)
        run = world.runs.get()
        assert run.status == "start_unconfirmed" and run.workflow_id == f"world-{world.pk}-run-1"
        with pytest.raises(ActionUnavailable, match="did not answer while trying to look up Lanternfall run 1"):
            generation_start(world=world)  # run 1 may exist: no second run until Temporal says
        proxy.reply_delay = 0.0
        time.sleep(3)  # the late answers drain
        assert runs_reconcile() == [f"{run}: the workflow is running"]
    finally:
        proxy.close()
    run.refresh_from_db()
    assert run.status == "running" and describe_status(run.workflow_id) == "RUNNING"
    use_temporal_at(stack_env["TEMPORAL_ADDRESS"], settings, monkeypatch)
    start_worker()
    assert wait_for(run, {"awaiting_approval"} | FINISHED).status == "awaiting_approval"
    generation_cancel(run=run)  # the workflow is reachable from worldgen: no orphan
    assert wait_for(run, FINISHED).status == "cancelled"
    assert generation_start(world=world).number == 2


def test_temporal_down_before_the_start_fails_the_row_and_blocks_nothing(temporal_env, settings, monkeypatch):
    world = make_world()
    use_temporal_at(f"127.0.0.1:{servers.free_port()}", settings, monkeypatch)  # nothing listens there
    with pytest.raises(ActionUnavailable, match="nothing was started: Temporal is not reachable"):
        generation_start(world=world)
    run = world.runs.get()
    assert (run.status, run.number, run.finished_at is not None) == ("failed", 1, True)
    assert "nothing was started" in run.error
    use_temporal_at(temporal_env["TEMPORAL_ADDRESS"], settings, monkeypatch)
    second = generation_start(world=world)
    assert second.number == 2  # run numbers and workflow IDs are never reused
    generation_cancel(run=second)


def test_an_oversized_start_is_refused_with_a_message_and_blocks_nothing(temporal_env, settings):
    """Temporal refuses a workflow input over its blob limit (2 MB): a clear error, a failed row."""
    settings.WORLD_PREMISE_MAX_CHARS = 3_000_000
    world = make_world(premise="sky-whales " * 260_000)  # 2.6 MB
    with pytest.raises(ActionError) as refused:
        generation_start(world=world)
    assert "Temporal refused the start" in str(refused.value) and "Traceback" not in str(refused.value)
    run = world.runs.get()
    assert run.status == "failed" and "Temporal refused the start" in run.error
    world.premise = "A short premise."
    world.save()
    second = generation_start(world=world)
    assert second.number == 2
    generation_cancel(run=second)


def test_a_workflow_terminated_in_temporal_is_reconciled_and_the_world_unblocked(start_worker):
    start_worker()
    world = make_world(requires_approval=True, character_count=1, posts_per_character=1)
    run = wait_for(generation_start(world=world), {"awaiting_approval"} | FINISHED)
    temporal_call(lambda client: client.get_workflow_handle(run.workflow_id).terminate("by hand in the UI"))
    run.refresh_from_db()
    assert run.status == "awaiting_approval"  # the workflow could not say so itself
    call_command("reconcile_runs")
    run.refresh_from_db()
    assert run.status == "failed" and "terminated in Temporal" in run.error and run.finished_at
    assert AuditEvent.objects.filter(run=run, action="run_reconciled").exists()
    assert generation_start(world=world).number == 2


def test_a_completed_workflow_whose_report_was_lost_is_read_from_its_result(start_worker):
    """The row says running but the workflow completed: its result (the final report) settles the row."""
    start_worker()
    run = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=1)), FINISHED)
    assert run.status == "completed"
    GenerationRun.objects.filter(pk=run.pk).update(status="running", posts_done=0, finished_at=None)
    assert runs_reconcile(run_ids=[run.pk]) == [f"{run}: the workflow completed (completed)"]
    run.refresh_from_db()
    assert (run.status, run.posts_done, run.finished_at is not None) == ("completed", 1, True)


def test_a_vanished_workflow_is_found_by_the_workers_reconciler_and_by_a_command(start_worker):
    start_worker(env={"RECONCILE_INTERVAL_SECONDS": "1"})
    world = make_world()
    run = GenerationRun.objects.create(world=world, number=1, workflow_id=f"vanished-{world.pk}", status="running")
    GenerationRun.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    assert wait_for(run, FINISHED, timeout=60).status == "failed"
    assert run.error == "Temporal no longer has this workflow"

    stuck = GenerationRun.objects.create(world=world, number=2, workflow_id=f"vanished-{world.pk}-2", status="running")
    with pytest.raises(ActionError, match="Temporal has no running workflow .*now failed"):
        generation_cancel(run=stuck)  # a command on a stale row corrects it, never a 500
    stuck.refresh_from_db()
    assert stuck.status == "failed"


# --- publishing ----------------------------------------------------------------------------------


def viewer_status(world: World) -> int:
    return Client().get(f"/worlds/{world.pk}/").status_code


def test_only_published_runs_are_public_and_approval_is_respected(start_worker, django_user_model):
    start_worker()
    reviewer = django_user_model.objects.create_user("reviewer-publishing", is_staff=True, is_superuser=True)
    world = make_world(requires_approval=True, character_count=1, posts_per_character=1)
    first = wait_for(generation_start(world=world), {"awaiting_approval"} | FINISHED)
    assert first.status == "awaiting_approval" and viewer_status(world) == 404  # an unapproved bible is not public
    with pytest.raises(ActionError, match="still awaiting approval"):
        run_publish(run=first)
    generation_approve(run=first, user=reviewer)
    assert wait_for(first, FINISHED).status == "completed"
    world.refresh_from_db()
    assert world.live_run == first and first.bible_approved and viewer_status(world) == 200

    second = wait_for(generation_start(world=world), {"awaiting_approval"} | FINISHED)
    page = Client().get(f"/worlds/{world.pk}/").content.decode()
    bible = mongo.get_db().bibles.find_one({"run_key": first.ref.key})["bible"]
    assert bible["title"] in page  # still run 1: a new run replaces it only once published
    generation_cancel(run=second)
    wait_for(second, FINISHED)
    with pytest.raises(ActionError, match="its world bible was never approved"):
        run_publish(run=second)

    world_unpublish(world=world)
    assert viewer_status(world) == 404
    image = mongo.get_db().characters.find_one({"run_key": first.ref.key})["image_id"]
    assert Client().get(f"/images/{image}.png").status_code == 404  # anonymous: unpublished is gone
    staff = Client()
    staff.force_login(reviewer)
    assert staff.get(f"/images/{image}.png")["Cache-Control"] == "private, no-store"  # staff still preview it
    run_publish(run=first)  # roll back / publish again
    assert viewer_status(world) == 200
    response = Client().get(f"/images/{image}.png")
    assert response.status_code == 200 and response["Cache-Control"] == "public, max-age=300"


def test_a_failed_run_is_public_only_if_staff_publish_it(start_worker, llm_server):
    from tests.test_generation import llm_control

    start_worker()
    world = make_world(character_count=1, posts_per_character=2)
    completed = wait_for(generation_start(world=world), FINISHED)
    assert completed.status == "completed"
    llm_control(llm_server, {"queue": [{"status": 401}]})  # the next run fails at its bible...
    failed = wait_for(generation_start(world=world), FINISHED)
    assert failed.status == "failed"
    with pytest.raises(ActionError, match="stopped before its world bible was written"):
        run_publish(run=failed)
    world.refresh_from_db()
    assert world.live_run == completed


# --- deletion --------------------------------------------------------------------------------


def cleanup_result(world_pk: int) -> WorldCleanupResult:
    return temporal_call(
        lambda client: client.get_workflow_handle(
            cleanup_workflow_id(world_pk), result_type=WorldCleanupResult
        ).result(),
        timeout=120,
    )


def test_deleting_a_world_stops_its_runs_and_removes_every_document_and_image(start_worker, llm_server):
    from tests.test_generation import llm_control

    start_worker()
    world = make_world(character_count=2, posts_per_character=1)
    done = wait_for(generation_start(world=world), FINISHED)
    assert done.status == "completed" and counts(done)["images"] == 4
    image = mongo.get_db().characters.find_one({"run_key": done.ref.key})["image_id"]
    assert Client().get(f"/images/{image}.png").status_code == 200
    llm_control(llm_server, {"latency_s": 1.0})
    try:
        active = generation_start(world=world)
        while not counts(active)["bibles"]:
            time.sleep(0.2)
        world_pk, name = world.pk, world.name
        world_delete(world=world)
    finally:
        llm_control(llm_server, {"reset": True})
    assert not World.objects.filter(pk=world_pk).exists()
    assert Client().get(f"/images/{image}.png").status_code == 404  # at once, before the cleanup ends
    result = cleanup_result(world_pk)
    assert result.stopped_workflows >= 1 and describe_status(active.workflow_id) == "CANCELED"
    db = mongo.get_db()
    for collection in ("bibles", "characters", "posts", "generation_tasks", "token_ledgers"):
        assert db[collection].count_documents({"world_id": world_pk}) == 0, collection
    assert db["images.files"].count_documents({"_id": documents.world_image_ids(world_pk)}) == 0
    assert db["images.chunks"].count_documents({"files_id": documents.world_image_ids(world_pk)}) == 0
    deleted = AuditEvent.objects.get(action="world_deleted", world_pk=world_pk)
    assert deleted.world_name == name and deleted.world is None
    assert AuditEvent.objects.filter(world_pk=world_pk, action="run_started").count() == 2  # history keeps the ID


def test_deleting_needs_temporal_and_changes_nothing_without_it(settings, monkeypatch):
    world = make_world()
    use_temporal_at(f"127.0.0.1:{servers.free_port()}", settings, monkeypatch)
    with pytest.raises(ActionUnavailable, match="could not start the cleanup"):
        world_delete(world=world)
    assert World.objects.filter(pk=world.pk).exists()


def test_limits_are_enforced_by_the_services(settings):
    world = make_world()
    settings.WORLD_PREMISE_MAX_CHARS = 100
    world.premise = "x" * 101
    with pytest.raises(ActionInvalid, match="at most 100 characters"):
        generation_start(world=world)
    assert not world.runs.exists()


def test_the_reconciler_learns_which_workflows_run_from_a_visibility_list(start_worker):
    """Its first question, one list call for many rows: which of these workflows are running. A completed
    workflow and one Temporal never had are not listed, so the reconciler describes only those; a row still
    shown pending whose workflow is listed is moved to running without one."""
    start_worker(env={"RECONCILE_INTERVAL_SECONDS": "1"})
    waiting_world = make_world(requires_approval=True, character_count=1, posts_per_character=0)
    waiting = wait_for(generation_start(world=waiting_world), {"awaiting_approval"} | FINISHED)
    done = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=0)), FINISHED)
    ids = [waiting.workflow_id, done.workflow_id, f"never-started-{done.pk}"]
    deadline = time.monotonic() + 30
    while (listed := temporal_call(lambda client: temporal_client.listed_running(client, ids))) != {
        waiting.workflow_id
    }:
        assert time.monotonic() < deadline, listed  # visibility catches up within seconds
        time.sleep(0.5)
    GenerationRun.objects.filter(pk=waiting.pk).update(
        status="pending", updated_at=timezone.now() - timedelta(minutes=5)
    )
    assert wait_for(waiting, {"running"}, timeout=30).status == "running"
    generation_cancel(run=waiting)
