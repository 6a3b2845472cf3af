"""Resuming a run that finished short, end to end on the real servers: it goes on as the same run, skips
every item already stored without calling the LLM, and makes only what is missing, exactly once."""

import pytest

from clients import mongo
from generation import documents
from tests.test_generation import FINISHED, counts, llm_control, llm_stats, make_world, record_history, wait_for
from worlds.models import AuditEvent
from worlds.services import ActionError, generation_approve, generation_cancel, generation_resume, generation_start

pytestmark = pytest.mark.django_db(transaction=True)


def llm_tasks(run) -> dict[str, list]:
    """Each LLM task of the run (renders left out): its attempts."""
    query = {"run_key": run.ref.key, "prompt_version": {"$exists": True}}
    return {doc["_id"]: doc.get("attempts", []) for doc in mongo.get_db().generation_tasks.find(query)}


def succeeded(tasks: dict[str, list]) -> set[str]:
    return {key for key, attempts in tasks.items() if attempts and attempts[-1]["status"] == "succeeded"}


def assert_made_exactly_once(run, characters: int, posts: int) -> None:
    db, key = mongo.get_db(), run.ref.key
    assert counts(run) | {"tasks": 0} == {
        "bibles": 1,
        "characters": characters,
        "posts": characters * posts,
        "images": characters * (1 + posts),
        "tasks": 0,
    }
    keys = [(p["character_index"], p["index"]) for p in db.posts.find({"run_key": key})]
    assert sorted(keys) == [(c, p) for c in range(characters) for p in range(posts)]
    assert db.characters.count_documents({"run_key": key, "status": documents.CharacterStatus.PROFILED}) == characters


def test_a_failed_run_resumes_as_the_same_run_and_calls_the_llm_only_for_what_is_missing(start_worker, llm_server):
    """The provider refuses the credentials partway through the posts: the run fails. Resumed, it goes on
    as the same run (same number, same documents), skips the approval its bible already had, and makes only
    the items that were missing: no stored item gets a second LLM call."""
    start_worker()
    world = make_world(character_count=2, posts_per_character=3, requires_approval=True)
    run = generation_start(world=world)
    wait_for(run, {"awaiting_approval"})
    # cast, 2 profiles, 2 plans, then 2 posts; the next call meets a 401
    llm_control(llm_server, {"queue": [{}] * 7 + [{"status": 401}]})
    generation_approve(run=run)
    wait_for(run, FINISHED)
    assert run.status == "failed" and "credentials (401)" in run.error, run.error
    before, tokens_before = llm_tasks(run), run.tokens_used
    done_before = succeeded(before)
    posts_before = counts(run)["posts"]
    assert 2 <= posts_before < 6, "the run should have stopped partway through its posts"
    requests_before = llm_stats(llm_server)["chat_requests"]

    resumed = generation_resume(run=run)
    assert (resumed.pk, resumed.number, resumed.resumes) == (run.pk, run.number, 1)
    assert resumed.workflow_id == f"world-{world.pk}-run-1-resume-1"
    wait_for(resumed, FINISHED)
    assert resumed.status == "completed" and resumed.failed_items == 0, resumed.error
    assert resumed.bible_approved and resumed.posts_done == 6
    assert_made_exactly_once(resumed, characters=2, posts=3)

    after = llm_tasks(resumed)
    assert {key: after[key] for key in done_before} == {key: before[key] for key in done_before}  # not called again
    new_attempts = sum(len(after[key]) - len(before.get(key, [])) for key in after)
    assert new_attempts == llm_stats(llm_server)["chat_requests"] - requests_before  # every call is on a task
    missing = {key for key in after if key not in done_before}
    print(
        f"resumed after {posts_before} of 6 posts: {len(done_before)} LLM tasks kept as they were, "
        f"{new_attempts} new LLM calls, all for the {len(missing)} tasks that were missing"
    )
    assert len(missing) >= 6 - posts_before and all(after[key][-1]["status"] == "succeeded" for key in missing)
    assert resumed.tokens_used > tokens_before  # the same ledger: the resume's tokens add to the run's
    assert AuditEvent.objects.filter(run=resumed, action=AuditEvent.Action.RUN_RESUMED).count() == 1
    record_history(resumed.workflow_id, "world_resumed")


def test_a_cancelled_run_resumes_and_ends_with_every_item_once(start_worker, llm_server):
    start_worker()
    llm_control(llm_server, {"latency_s": 0.3})
    try:
        run = generation_start(world=make_world(character_count=2, posts_per_character=3))
        while counts(run)["posts"] < 1:
            wait_for(run, {"running"})
        generation_cancel(run=run)
        wait_for(run, FINISHED)
        assert run.status == "cancelled"
        done_before = succeeded(llm_tasks(run))
        resumed = wait_for(generation_resume(run=run), FINISHED)
    finally:
        llm_control(llm_server, {"reset": True})
    assert resumed.status == "completed", resumed.error
    assert_made_exactly_once(resumed, characters=2, posts=3)
    after = llm_tasks(resumed)
    assert all(len(after[key]) == 1 for key in done_before)  # one attempt each: none was called again


def test_resuming_a_completed_run_retries_its_failed_items_only(start_worker, llm_server):
    from django.test import override_settings

    start_worker()
    llm_control(llm_server, {"queue": [{}] * 5 + [{"invalid_json": True}] * 3})  # the second post fails for good
    with override_settings(GENERATION_MAX_FAILED_SHARE=0.5):
        run = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=2)), FINISHED)
    assert (run.status, run.failed_items, counts(run)["posts"]) == ("completed", 1, 1), run.error
    requests_before = llm_stats(llm_server)["chat_requests"]
    resumed = wait_for(generation_resume(run=run), FINISHED)
    assert (resumed.status, resumed.failed_items, resumed.posts_done) == ("completed", 0, 2), resumed.error
    assert_made_exactly_once(resumed, characters=1, posts=2)
    post = mongo.get_db().generation_tasks.find_one({"_id": documents.task_key(run.ref, "post", "0.1")})
    assert [a["status"] for a in post["attempts"]] == ["failed", "succeeded"]
    assert llm_stats(llm_server)["chat_requests"] - requests_before == len(post["attempts"][-1:])  # that post only
    with pytest.raises(ActionError, match="nothing to resume: it is completed with every item made"):
        generation_resume(run=resumed)


def test_an_image_the_media_service_refuses_is_a_failed_item_that_a_resume_makes(start_worker, logs_dir):
    import sys

    from django.test import override_settings

    from localstack import servers
    from tests.conftest import ROOT
    from worlds.selectors import run_failed_items

    port = servers.free_port()
    strict = servers.start(
        "strict media server",  # a content policy that refuses every avatar prompt of the local LLM
        [sys.executable, "-m", "mediaserver", "--port", str(port), "--reject-prompts-with", "charm shaped like"],
        log_path=logs_dir / "strict-mediaserver.log",
        cwd=ROOT,
    )
    try:
        servers.wait_for_port(strict, port)
        worker = start_worker(env={"MEDIA_GRPC_TARGET": f"127.0.0.1:{port}"})
        with override_settings(GENERATION_MAX_FAILED_SHARE=0.5):  # 1 of its 3 items
            run = wait_for(generation_start(world=make_world(character_count=1, posts_per_character=2)), FINISHED)
        worker.process.stop()
    finally:
        strict.stop()
    assert (run.status, run.failed_items, run.degraded_items, run.posts_done) == ("completed", 1, 0, 2), run.error
    [failed] = run_failed_items(run=run)
    assert (failed["stage"], failed["index"]) == ("avatar image", "0") and "content policy" in failed["error"]
    character = mongo.get_db().characters.find_one({"run_key": run.ref.key})
    assert character["image_status"] == documents.ImageStatus.REJECTED and counts(run)["images"] == 2
    record_history(run.workflow_id, "world_with_a_rejected_avatar")

    start_worker()  # the bundled media server, without that policy
    resumed = wait_for(generation_resume(run=run), FINISHED)
    assert (resumed.status, resumed.failed_items) == ("completed", 0), resumed.error
    assert_made_exactly_once(resumed, characters=1, posts=2)
