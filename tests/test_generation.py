"""The generation pipeline end to end: real dev server, worker process, local LLM
endpoint, media server and Mongo. Content is procedural; transports are real."""

import os
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from clients import mongo
from clients.temporal import temporal_call
from generation import documents
from tests.conftest import ROOT
from worlds.models import GenerationRun, World
from worlds.selectors import run_live_progress
from worlds.services import (
    ActionError,
    generation_approve,
    generation_cancel,
    generation_reject,
    generation_rerender,
    generation_start,
)

pytestmark = pytest.mark.django_db(transaction=True)

FINISHED = {"completed", "failed", "cancelled", "expired", "budget_exceeded"}


def make_world(**overrides) -> World:
    fields = {
        "name": "Lanternfall",
        "premise": "A floating archipelago of lantern-lit tea houses where sky-whales carry letters between islands.",
        "character_count": 3,
        "posts_per_character": 2,
    }
    return World.objects.create(**{**fields, **overrides})


def wait_for(run: GenerationRun, statuses: set[str], timeout: float = 180) -> GenerationRun:
    deadline = time.monotonic() + timeout
    while True:
        run.refresh_from_db()
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run stuck at {run.status}/{run.stage}: {run.error}"
        time.sleep(0.3)


def counts(run: GenerationRun) -> dict:
    db, key = mongo.get_db(), run.ref.key
    return {
        "bibles": db.bibles.count_documents({"run_key": key}),
        "characters": db.characters.count_documents({"run_key": key}),
        "posts": db.posts.count_documents({"run_key": key}),
        "images": db["images.files"].count_documents({"_id": documents.run_images(run.ref)}),
        "tasks": db.generation_tasks.count_documents({"run_key": key}),
    }


HISTORIES = Path(__file__).parent / "histories"


def record_history(workflow_id: str, name: str) -> None:
    """`RECORD_HISTORIES=1 make test` refreshes the histories that test_replay.py replays."""
    if os.environ.get("RECORD_HISTORIES") == "1":
        history = temporal_call(lambda client: client.get_workflow_handle(workflow_id).fetch_history())
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())


def llm_control(llm_server: str, body: dict) -> None:
    httpx.post(llm_server.removesuffix("/v1") + "/_control", json=body, timeout=5).raise_for_status()


def test_a_world_is_generated_completely_and_exactly_once(start_worker):
    start_worker()
    run = generation_start(world=make_world())
    assert run.workflow_id == f"world-{run.world_id}-run-1"
    wait_for(run, FINISHED)
    assert run.status == "completed", run.error
    assert (run.characters_done, run.posts_done, run.degraded_items) == (3, 6, 0)
    assert run.tokens_used > 0 and run.finished_at is not None
    # bible, cast, 3 profiles, 3 plans, 6 posts, 3 avatars, 6 post images
    assert counts(run) == {"bibles": 1, "characters": 3, "posts": 6, "images": 9, "tasks": 1 + 1 + 3 + 3 + 6 + 3 + 6}

    db, key = mongo.get_db(), run.ref.key
    handles = [c["handle"] for c in db.characters.find({"run_key": key})]
    assert len(set(handles)) == 3
    assert all(
        c["image_status"] == documents.ImageStatus.RENDERED and c["bio"] for c in db.characters.find({"run_key": key})
    )
    task = db.generation_tasks.find_one({"_id": f"{key}:post:0.1"})
    assert task["status"] == "succeeded" and task["usage"]["completion_tokens"] > 0
    prompt = task["prompt"][1]["content"]
    character = db.characters.find_one({"run_key": key, "index": 0})
    assert len(character["plan"]) == 2 and character["diction"] and character["never_says"]
    assert f"Where: {character['plan'][1]['place']}" in prompt  # the post writes its planned moment
    first_caption = db.posts.find_one({"run_key": key, "character_index": 0, "index": 0})["caption"]
    assert first_caption not in prompt and "Premise:" not in prompt  # nothing to copy from
    assert task["prompt_version"] == "4" and task["sampling"]["frequency_penalty"] > 0
    assert (
        isinstance(task["seed"], int)
        and task["seed"] != db.generation_tasks.find_one({"_id": f"{key}:post:0.0"})["seed"]
    )
    assert task["raw_response"] and task["output"]["caption"] and task["attempt"] == 1
    plan = db.generation_tasks.find_one({"_id": f"{key}:plan:0"})["prompt"][1]["content"]
    assert "Moment 1: something you ate or drank\nMoment 2: a small problem at work" in plan
    # The world travels once per workflow: a character's activities get the run, and read the snapshot.
    assert db.run_snapshots.find_one({"_id": f"{key}/resume-0"})["world"]["premise"] == run.world.premise

    async def activity_inputs(client) -> list[tuple[str, str]]:
        history = await client.get_workflow_handle(run.workflow_id).fetch_history()
        scheduled = [
            event.activity_task_scheduled_event_attributes
            for event in history.events
            if event.HasField("activity_task_scheduled_event_attributes")
        ]
        assert {a.heartbeat_timeout.seconds for a in scheduled if a.activity_type.name != "record_run_status"} == {10}
        return [(a.activity_type.name, b"".join(p.data for p in a.input.payloads).decode()) for a in scheduled]

    inputs = temporal_call(activity_inputs)  # heartbeat timeouts: GENERATION_HEARTBEAT_TIMEOUT_SECONDS
    # One workflow for the world: each character is two activities, its text and its images.
    assert (
        sorted(name for name, _ in inputs if "character" in name) == ["render_character"] * 3 + ["write_character"] * 3
    )
    character_inputs = [data for name, data in inputs if "character" in name]
    assert all('"world":null' in data.replace(" ", "") and run.world.premise not in data for data in character_inputs)
    record_history(run.workflow_id, "world_completed")


def test_an_invalid_world_is_refused_and_nothing_starts():
    world = make_world(character_count=0, posts_per_character=51)
    with pytest.raises(ActionError, match="character_count: .*greater than or equal to 1.*posts_per_character"):
        generation_start(world=world)
    assert not world.runs.exists()


def test_a_second_start_while_running_is_refused_then_approval_completes(start_worker):
    start_worker()
    world = make_world(requires_approval=True, character_count=1, posts_per_character=1)
    run = wait_for(generation_start(world=world), {"awaiting_approval"} | FINISHED)
    assert run.status == "awaiting_approval" and run.stage == "approval"
    with pytest.raises(ActionError, match="already being generated"):
        generation_start(world=world)
    with pytest.raises(ActionError, match="feedback is required"):
        generation_reject(run=run, feedback="  ")

    generation_reject(run=run, feedback="More sky-whales, fewer tea houses.")
    deadline = time.monotonic() + 60
    while not (run.status == "awaiting_approval" and run.bible_revision == 1):
        assert time.monotonic() < deadline and run.status not in FINISHED, run.status
        time.sleep(0.2)
        run.refresh_from_db()
    bible = mongo.get_db().bibles.find_one({"run_key": run.ref.key})
    assert bible["revision"] == 1
    assert [h["feedback"] for h in bible["history"]] == [None, "More sky-whales, fewer tea houses."]

    generation_approve(run=run)
    wait_for(run, FINISHED)
    assert run.status == "completed", run.error
    with pytest.raises(ActionError, match="nothing is awaiting approval"):
        generation_approve(run=run)
    record_history(run.workflow_id, "world_rejected_then_approved")
    second = generation_start(world=world)  # a finished world can run again
    assert second.number == 2
    generation_cancel(run=second)
    assert wait_for(second, FINISHED).status == "cancelled", (second.status, second.error)


def test_cancel_stops_the_run_and_keeps_what_was_made(start_worker, llm_server):
    start_worker()
    llm_control(llm_server, {"latency_s": 1.0})
    try:
        run = generation_start(world=make_world(character_count=4, posts_per_character=10))
        deadline = time.monotonic() + 60
        while not mongo.get_db().posts.count_documents({"run_key": run.ref.key}):  # characters write posts
            assert time.monotonic() < deadline
            time.sleep(0.2)
        live = run_live_progress(run=run)  # the workflow's own query, no mirror involved
        assert (live.status, live.stage) == ("running", "characters")
        assert live.posts_total == 40 and live.tokens_used > 0
        generation_cancel(run=run)
        wait_for(run, FINISHED, timeout=60)
    finally:
        llm_control(llm_server, {"reset": True})
    assert run.status == "cancelled" and run.finished_at is not None
    made = counts(run)
    assert made["bibles"] == 1 and 0 < made["posts"] < 40
    with pytest.raises(ActionError, match="is not running"):
        generation_cancel(run=run)
    record_history(run.workflow_id, "world_cancelled")


def test_llm_faults_are_retried_and_invalid_json_is_repaired(start_worker, llm_server):
    start_worker(env={"LLM_TIMEOUT_SECONDS": "2"})
    llm_control(
        llm_server,
        {
            "queue": [
                {"status": 429, "retry_after": 1},
                {"status": 500},
                {"status": 503},
                {"hang": True},
                {"invalid_json": True},
            ]
        },
    )
    run = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=1)), FINISHED)
    assert run.status == "completed", run.error
    assert counts(run)["posts"] == 1
    task = mongo.get_db().generation_tasks.find_one({"_id": documents.task_key(run.ref, "bible", 0)})
    assert task["status"] == "succeeded" and task["attempt"] == 5 and task["repairs"] == 1
    # every attempt is kept, not only the last one
    attempts = task["attempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "retrying"),
        (4, "retrying"),
        (5, "succeeded"),
    ]
    assert ["429" in attempts[0]["error"], "500" in attempts[1]["error"], "503" in attempts[2]["error"]] == [True] * 3
    assert "timed out" in attempts[3]["error"] and attempts[3]["latency_s"] >= 2
    assert attempts[4]["repairs"] == 1 and attempts[4]["billed_tokens"] == task["billed_tokens"] > 0


def test_an_llm_outage_longer_than_the_old_retry_budget_waits_and_says_what_for(start_worker, llm_server):
    """12 failed attempts in a row (the old policy gave up after 8): the run waits, shows what for and since
    when, and completes when the provider answers again. Retries back off to 1 s here (the default is 300)."""
    from django.test import override_settings

    from worlds.selectors import run_waiting

    start_worker()
    llm_control(llm_server, {"queue": [{"status": 503, "message": "upstream down"}] * 12})
    with override_settings(LLM_RETRY_MAX_INTERVAL_SECONDS=1.0):
        run = generation_start(world=make_world(character_count=1, posts_per_character=1))
    deadline = time.monotonic() + 60
    while not (waiting := run_waiting(run=run)):
        assert time.monotonic() < deadline, "the run never showed what it waits for"
        time.sleep(0.1)
    [call] = waiting
    assert (call["stage"], call["index"], call["attempts"]) == ("bible", "0", 1) and "503" in call["error"]
    while (waiting := run_waiting(run=run)) and waiting[0]["attempts"] < 8:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run.refresh_from_db()
    assert run.status == "running" and waiting[0]["since"] == call["since"]  # past the old budget, still waiting
    wait_for(run, FINISHED)
    assert run.status == "completed", run.error
    assert run_waiting(run=run) == [] and counts(run)["posts"] == 1
    task = mongo.get_db().generation_tasks.find_one({"_id": documents.task_key(run.ref, "bible", 0)})
    assert [a["status"] for a in task["attempts"]] == ["retrying"] * 12 + ["succeeded"]


def test_a_post_still_invalid_after_repairs_is_a_failed_item_and_the_run_completes(start_worker, llm_server):
    """The stand-in answers the second post's call, and both repairs, with invalid JSON: that post fails for
    good, the run goes on and completes with 1 failed item, listed with its error in the API."""
    from django.contrib.auth.models import Group, Permission, User
    from django.test import override_settings
    from rest_framework.test import APIClient

    from worlds.staff_groups import grant_staff_groups

    start_worker()
    llm_control(llm_server, {"queue": [{}] * 5 + [{"invalid_json": True}] * 3})  # bible, cast, profile, plan, post 0
    with override_settings(GENERATION_MAX_FAILED_SHARE=0.5):  # 1 of 3 items
        run = generation_start(world=make_world(character_count=1, posts_per_character=2))
    wait_for(run, FINISHED)
    assert (run.status, run.failed_items, counts(run)["posts"]) == ("completed", 1, 1), run.error
    grant_staff_groups(Group, Permission)
    reviewer = User.objects.create_user("reviewer-failed-items", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="Reviewers"))
    client = APIClient()
    client.force_login(reviewer)
    body = client.get(f"/api/runs/{run.pk}/").json()
    assert body["failed_items"] == 1
    [failed] = body["failed"]
    assert (failed["stage"], failed["index"]) == ("post", "0.1") and "is not valid JSON" in failed["error"]
    record_history(run.workflow_id, "world_with_a_failed_post")


def test_exhausted_quota_fails_the_run_with_a_readable_error(start_worker, llm_server):
    start_worker()
    llm_control(llm_server, {"queue": [{"status": 429, "code": "insufficient_quota"}]})
    run = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=0)), FINISHED)
    assert run.status == "failed" and run.stage == "bible"
    assert "quota" in run.error.lower() and "Traceback" not in run.error


def test_media_down_degrades_gracefully_and_a_rerender_fills_the_gaps(start_worker):
    from localstack import servers

    degraded_worker = start_worker(env={"MEDIA_GRPC_TARGET": f"127.0.0.1:{servers.free_port()}"})
    run = wait_for(generation_start(world=make_world(character_count=2, posts_per_character=1)), FINISHED)
    assert run.status == "completed", run.error
    assert run.degraded_items == 4
    db, key = mongo.get_db(), run.ref.key
    assert db.posts.count_documents({"run_key": key, "image_status": documents.ImageStatus.NEEDS_RENDER}) == 2
    assert db.characters.count_documents({"run_key": key, "image_status": documents.ImageStatus.NEEDS_RENDER}) == 2
    assert counts(run)["images"] == 0

    degraded_worker.process.stop()
    start_worker()  # the media service is back
    workflow_id = generation_rerender(run=run)
    with pytest.raises(ActionError, match="already being re-rendered"):
        generation_rerender(run=run)
    still_missing = temporal_call(lambda client: client.get_workflow_handle(workflow_id).result(), timeout=120)
    record_history(workflow_id, "render_missing_images_completed")
    run.refresh_from_db()
    assert still_missing == 0 and run.degraded_items == 0 and run.status == "completed"
    assert counts(run) == {"bibles": 1, "characters": 2, "posts": 2, "images": 4, "tasks": 1 + 1 + 2 + 2 + 2 + 4}
    assert db.posts.count_documents({"run_key": key, "image_status": documents.ImageStatus.RENDERED}) == 2
    with pytest.raises(ActionError, match="no images waiting for a re-render"):
        generation_rerender(run=run)


def llm_stats(llm_server: str) -> dict:
    return httpx.get(llm_server.removesuffix("/v1") + "/_stats", timeout=5).json()


def test_token_budget_is_a_hard_cap(start_worker, llm_server):
    """One character, so calls are strictly sequential: the run stops before the call that could
    pass the budget, and what it counted is exactly what the provider billed."""
    start_worker()
    llm_control(llm_server, {"reset": True})
    run = wait_for(
        generation_start(world=make_world(token_budget=6000, character_count=1, posts_per_character=12)), FINISHED
    )
    assert run.status == "budget_exceeded", run.error
    assert "token budget of 6000 reached" in run.error
    stats = llm_stats(llm_server)
    assert 0 < run.tokens_used == stats["billed_tokens"] <= 6000
    assert stats["without_max_tokens"] == 0  # every call set max_tokens
    assert 0 < run.posts_done < 12
    record_history(run.workflow_id, "world_budget_exceeded")


def test_every_billed_token_is_counted_repairs_and_failed_attempts_included(start_worker, llm_server):
    """The bible's first reply is invalid JSON (repaired), the repair call fails with a 500 that is
    billed anyway (the attempt is retried): all of it counts."""
    start_worker()
    llm_control(
        llm_server,
        {
            "reset": True,
            "queue": [
                {"invalid_json": True, "usage": {"prompt_tokens": 30000, "completion_tokens": 10}},
                {"status": 500, "usage": {"prompt_tokens": 20000, "completion_tokens": 0}},
            ],
        },
    )
    run = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=1)), FINISHED)
    assert run.status == "completed", run.error
    billed = llm_stats(llm_server)["billed_tokens"]
    assert billed > 50_010 and run.tokens_used == billed
    task = mongo.get_db().generation_tasks.find_one({"_id": documents.task_key(run.ref, "bible", 0)})
    assert task["status"] == "succeeded" and task["attempt"] == 2 and task["max_tokens"] > 0


def test_cancel_during_a_slow_render_stops_the_run_before_any_post(start_worker, logs_dir):
    """Each image takes 8 s: cancelled while the first character's avatar renders, the run writes no image
    and no post afterwards (it used to write every post and image, then report cancelled)."""
    from localstack import servers

    port = servers.free_port()
    slow = servers.start(
        "slow media server",
        [sys.executable, "-m", "mediaserver", "--port", str(port), "--delay", "8"],
        log_path=logs_dir / "slow-mediaserver.log",
        cwd=ROOT,
    )
    try:
        servers.wait_for_port(slow, port)
        start_worker(env={"MEDIA_GRPC_TARGET": f"127.0.0.1:{port}"})
        run = generation_start(world=make_world(character_count=2, posts_per_character=6))
        db, key = mongo.get_db(), run.ref.key
        deadline = time.monotonic() + 60
        while db.posts.count_documents({"run_key": key, "character_index": 0}) < 6:
            assert time.monotonic() < deadline, "the first character's posts were not written"
            time.sleep(0.1)
        time.sleep(1)  # its images are rendering (the avatar takes 8 s)
        generation_cancel(run=run)
        wait_for(run, FINISHED, timeout=60)
        assert run.status == "cancelled", (run.status, run.error)
        made = counts(run)
        time.sleep(10)  # longer than a render: anything still going would land now
        assert counts(run) == made
        assert made["posts"] <= 12 and made["images"] == 0, made
        assert db.characters.count_documents({"run_key": key, "image_status": documents.ImageStatus.NEEDS_RENDER}) == 0
    finally:
        slow.stop()


def test_killed_worker_is_restarted_and_the_world_completes_without_duplicates(start_worker, llm_server):
    first = start_worker()
    llm_control(llm_server, {"latency_s": 0.2})
    try:
        run = generation_start(world=make_world(character_count=3, posts_per_character=4))
        deadline = time.monotonic() + 60
        while counts(run)["posts"] < 2:  # in Mongo: the run row's counts are mirrored at most every 2 s
            assert time.monotonic() < deadline
            time.sleep(0.1)
        run.refresh_from_db()
        assert run.status == "running", "the world finished before the kill: nothing was tested"
        first.process.kill()
        start_worker()
        wait_for(run, FINISHED)
    finally:
        llm_control(llm_server, {"reset": True})
    assert run.status == "completed", run.error
    assert counts(run) == {"bibles": 1, "characters": 3, "posts": 12, "images": 15, "tasks": 1 + 1 + 3 + 3 + 12 + 15}


def test_repeat_guard_and_quality_report_on_repetitive_echoing_and_varied_content(start_worker, llm_server):
    """The stand-in writes the same caption over and over on request: the guard asks once more, in vain, and the
    run's quality report flags it (low distinct-2, repeated sentences, overlap between characters). Captions
    that only start alike lose the repeated sentence. Varied content passes untouched."""
    from worlds.selectors import run_quality

    start_worker()
    llm_control(llm_server, {"content_style": "repetitive"})
    try:
        repetitive = wait_for(generation_start(world=make_world(character_count=2, posts_per_character=3)), FINISHED)
    finally:
        llm_control(llm_server, {"reset": True})
    # the guard dropped each repeated caption's only sentence and asked once more, in vain; the caption is
    # then the moment as planned, which the stand-in repeats too, for the report to flag
    retries = list(mongo.get_db().generation_tasks.find({"run_key": repetitive.ref.key, "index": {"$regex": "retry"}}))
    assert sorted(task["index"] for task in retries) == ["0.1.retry", "0.2.retry", "1.1.retry", "1.2.retry"]
    assert all("copy the lines above):\n- Another ordinary day" in task["prompt"][-1]["content"] for task in retries)
    db = mongo.get_db()
    plans = {c["index"]: c["plan"] for c in db.characters.find({"run_key": repetitive.ref.key})}
    for post in db.posts.find({"run_key": repetitive.ref.key, "index": {"$gt": 0}}):
        assert post["caption"] == plans[post["character_index"]][post["index"]]["event"]
    llm_control(llm_server, {"content_style": "echoing"})
    try:
        echoing = wait_for(
            generation_start(world=make_world(name="Echo", character_count=2, posts_per_character=3)), FINISHED
        )
    finally:
        llm_control(llm_server, {"reset": True})
    varied = wait_for(
        generation_start(world=make_world(name="Varied", character_count=2, posts_per_character=3)), FINISHED
    )
    assert (repetitive.status, echoing.status, varied.status) == ("completed", "completed", "completed")

    bad = run_quality(run=repetitive)
    assert bad.run.distinct_2 < 0.6 and not bad.run.checks["distinct_2"]
    assert all(c.repeated_sentences > 0 and c.overlap > 0.1 and c.flags for c in bad.characters)
    assert bad.run.flags and bad.prompt_versions == ["4"]
    # every caption began with the same sentence: the guard kept it in each character's first post only
    echoes = run_quality(run=echoing)
    assert echoes.run.sentences_dropped == 4 and all(c.repeated_sentences == 0 for c in echoes.characters)
    captions = {
        (p["character_index"], p["index"]): p["caption"]
        for p in mongo.get_db().posts.find({"run_key": echoing.ref.key})
    }
    assert [caption.startswith("Another ordinary day") for _, caption in sorted(captions.items())] == [
        True,
        False,
        False,
    ] * 2
    assert echoes.run.llm_calls == 1 + 1 + 2 + 2 + 6  # nothing was asked again: enough was left
    good = run_quality(run=varied)
    assert good.run.distinct_2 >= 0.6 and good.run.checks["distinct_2"]
    assert all(c.repeated_sentences == 0 for c in good.characters) and good.run.sentences_dropped == 0
    assert good.run.tokens_per_post and good.run.llm_calls == 1 + 1 + 2 + 2 + 6  # no retries: exact counts


@pytest.mark.skipif(os.environ.get("WORLDGEN_TEST_DATABASE") != "postgresql", reason="reads PostgreSQL's log")
def test_the_worker_keeps_its_few_sql_connections_for_its_django_writes(start_worker, logs_dir, sql_env):
    """The worker's Django-side activities (run status, degraded items, ...) reuse the connections of its
    WORKER_DJANGO_THREADS write threads (and the reconciler's one)."""
    name = f"worker-{os.getpid()}-{time.monotonic_ns()}"
    start_worker(env={"DATABASE_URL": f"{sql_env['DATABASE_URL']}?application_name={name}"})
    runs = [generation_start(world=make_world(name=f"Connections {i}")) for i in range(3)]
    for run in runs:
        assert wait_for(run, FINISHED).status == "completed", run.error

    async def django_writes(client) -> int:
        writes = 0
        for run in runs:
            async for event in client.get_workflow_handle(run.workflow_id).fetch_history_events():
                scheduled = event.activity_task_scheduled_event_attributes
                writes += event.HasField("activity_task_scheduled_event_attributes") and (
                    scheduled.activity_type.name.startswith("record_")
                )
        return writes

    log = (logs_dir / "postgresql.log").read_text(errors="replace")
    opened = log.count(f"application_name={name}")
    assert temporal_call(django_writes) >= 3 * len(runs)
    assert 1 <= opened <= settings.WORKER_DJANGO_THREADS + 1, f"the worker opened {opened} SQL connections"
