"""Regenerating one character or one post of a finished run, end to end on the real servers: a new
version with the editor's feedback, the old one kept and audited, the feed showing the new one, and a
second request for the same item while one runs refused with 409."""

import dataclasses
import time

import pytest
from django.contrib.auth.models import Group, Permission, User
from rest_framework.test import APIClient

from clients import mongo
from clients.temporal import temporal_call
from generation import documents
from tests.test_generation import FINISHED, llm_control, make_world, record_history, wait_for
from worlds.models import AuditEvent, GenerationRun, Regeneration
from worlds.services import generation_start, item_regenerate
from worlds.staff_groups import grant_staff_groups

pytestmark = pytest.mark.django_db(transaction=True)


def finished(regeneration: Regeneration, timeout: float = 120) -> Regeneration:
    deadline = time.monotonic() + timeout
    while True:
        regeneration.refresh_from_db()
        if regeneration.status != "running":
            return regeneration
        assert time.monotonic() < deadline, f"{regeneration} is still running"
        time.sleep(0.3)


def staff(username: str, group: str) -> APIClient:
    grant_staff_groups(Group, Permission)
    user = User.objects.create_user(username, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = APIClient()
    client.force_login(user)
    return client


def completed_run(**world) -> GenerationRun:
    run = wait_for(generation_start(world=make_world(**world)), FINISHED)
    assert run.status == "completed", run.error
    return run


def test_a_post_is_regenerated_with_feedback_and_the_feed_shows_the_new_version(start_worker):
    start_worker()
    run = completed_run(character_count=1, posts_per_character=2)
    db, key = mongo.get_db(), documents.post_key(run.ref, 0, 1)
    before, tokens_before = db.posts.find_one({"_id": key}), run.tokens_used
    editor = staff("editor-regen", "Editors")

    body = {"character": 0, "post": 1, "feedback": "Grumpier."}
    response = editor.post(f"/api/runs/{run.pk}/regenerate/", body, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["item"], body["status"], body["requested_by"]) == ("post 0.1", "running", "editor-regen")
    assert body["workflow_id"] == f"world-{run.world_id}-run-1-regenerate-{body['id']}"
    regeneration = finished(Regeneration.objects.get(pk=body["id"]))
    assert regeneration.status == "completed" and regeneration.tokens_used > 0, regeneration.error
    assert editor.get(f"/api/regenerations/{regeneration.pk}/").json()["status"] == "completed"

    after = db.posts.find_one({"_id": key})
    assert (after["version"], after["feedback"], after["image_status"]) == (2, "Grumpier.", "rendered")
    draft = dataclasses.replace(run.ref, draft=regeneration.pk)  # where it was written until whole
    new_image = f"img-{documents.post_key(draft, 0, 1)}-v2"
    assert after["image_id"] == new_image and before["image_id"] == f"img-{key}"
    task = db.generation_tasks.find_one({"_id": documents.task_key(draft, "post", "0.1@v2")})
    prompt = task["prompt"][-1]["content"]
    assert "Their note: Grumpier." in prompt and before["caption"] in prompt  # told what to change, and from what
    assert db.posts.find_one({"_id": documents.post_key(run.ref, 0, 0)}).get("version", 1) == 1  # only that post
    assert db.posts.count_documents({"run_key": run.ref.key}) == 2

    versions = editor.get(f"/api/runs/{run.pk}/versions/?character=0&post=1").json()
    assert versions["current"]["version"] == 2 and versions["current"]["image_url"] == f"/images/{new_image}.png"
    [earlier] = versions["earlier"]
    assert (earlier["version"], earlier["text"], earlier["image_url"]) == (
        1,
        before["caption"],
        f"/images/img-{key}.png",
    )
    assert [r["id"] for r in versions["regenerations"]] == [regeneration.pk]
    feed = editor.get(f"/api/worlds/{run.world_id}/posts/").json()["results"]
    [shown] = [p for p in feed if (p["character_index"], p["index"]) == (0, 1)]
    assert (shown["version"], shown["caption"], shown["image_url"]) == (
        2,
        after["caption"],
        f"/images/{new_image}.png",
    )
    assert APIClient().get(f"/images/{new_image}.png").status_code == 200  # the live run's new image is public
    # Finding 10: the version it replaced is not current any more, so its image is not public (staff see it).
    assert APIClient().get(f"/images/img-{key}.png").status_code == 404
    assert editor.get(f"/images/img-{key}.png").status_code == 200

    run.refresh_from_db()
    assert run.tokens_used == tokens_before + regeneration.tokens_used  # billed to the run's ledger
    event = AuditEvent.objects.get(action=AuditEvent.Action.ITEM_REGENERATED)
    assert (
        event.actor.username == "editor-regen" and event.detail.startswith("post 0.1 (") and "Grumpier." in event.detail
    )
    record_history(regeneration.workflow_id, "regenerate_post")


def test_a_character_is_regenerated_with_its_avatar_and_posts_and_the_old_versions_are_kept(start_worker):
    start_worker()
    run = completed_run(character_count=2, posts_per_character=2)
    db = mongo.get_db()
    old_bio = db.characters.find_one({"_id": documents.character_key(run.ref, 1)})["bio"]
    regeneration = finished(item_regenerate(run=run, character_index=1, feedback="Make her grumpier."))
    assert regeneration.status == "completed", regeneration.error
    character = db.characters.find_one({"_id": documents.character_key(run.ref, 1)})
    assert (character["version"], character["plan_version"], character["image_status"]) == (2, 2, "rendered")
    assert character["image_id"].endswith("-c1-v2")
    posts = list(db.posts.find({"run_key": run.ref.key, "character_index": 1}))
    assert [(p["version"], p["image_status"]) for p in posts] == [(2, "rendered")] * 2
    assert db.posts.count_documents({"run_key": run.ref.key}) == 4  # replaced in place: no duplicates
    assert db.characters.find_one({"_id": documents.character_key(run.ref, 0)}).get("version", 1) == 1
    archived = list(db.item_versions.find({"run_key": run.ref.key}))
    assert sorted((v["kind"], v["version"]) for v in archived) == [("characters", 1), ("posts", 1), ("posts", 1)]
    [old_character] = [v for v in archived if v["kind"] == "characters"]
    assert old_character["content"]["bio"] == old_bio and old_character["content"]["image_id"].endswith("-c1")
    new_images = {"$regex": f"^img-{run.ref.key}~r{regeneration.pk}-c1"}
    assert db["images.files"].count_documents({"_id": {"$regex": f"^img-{run.ref.key}-c1"}}) == 3  # the old ones
    assert db["images.files"].count_documents({"_id": new_images}) == 3  # and the new

    again = finished(item_regenerate(run=run, character_index=1, post_index=0))
    assert again.status == "completed", again.error
    assert db.posts.find_one({"_id": documents.post_key(run.ref, 1, 0)})["version"] == 3
    assert db.item_versions.count_documents({"item": documents.post_key(run.ref, 1, 0)}) == 2
    record_history(regeneration.workflow_id, "regenerate_character")


def test_a_second_regeneration_of_the_same_item_while_one_runs_is_a_409(start_worker, llm_server):
    start_worker()
    run = completed_run(character_count=1, posts_per_character=2)
    editor = staff("editor-409", "Editors")
    llm_control(llm_server, {"latency_s": 2.0})
    try:
        first = editor.post(f"/api/runs/{run.pk}/regenerate/", {"character": 0, "post": 0}, format="json")
        assert first.status_code == 202
        for body in ({"character": 0, "post": 0}, {"character": 0}):
            response = editor.post(f"/api/runs/{run.pk}/regenerate/", body, format="json")
            assert response.status_code == 409, body
            assert response.json() == {
                "detail": "post 0.0 of Lanternfall run 1 is already being regenerated; wait for it to finish"
            }
        other = editor.post(f"/api/runs/{run.pk}/regenerate/", {"character": 0, "post": 1}, format="json")
        assert other.status_code == 202  # another post of the character may go at the same time
        response = editor.post(f"/api/runs/{run.pk}/resume/")
        assert response.status_code == 409  # nothing to resume: completed with every item made
        for regeneration in Regeneration.objects.all():
            assert finished(regeneration).status == "completed", regeneration.error
    finally:
        llm_control(llm_server, {"reset": True})
    assert Regeneration.objects.count() == 2
    assert editor.post(f"/api/runs/{run.pk}/regenerate/", {"character": 0, "post": 0}, format="json").status_code == 202
    finished(Regeneration.objects.order_by("-pk").first())


def test_bad_regeneration_requests_are_refused_and_change_nothing(start_worker):
    start_worker()
    run = completed_run(character_count=1, posts_per_character=1)
    editor, reviewer = staff("editor-bad", "Editors"), staff("reviewer-bad", "Reviewers")
    url = f"/api/runs/{run.pk}/regenerate/"
    cases = [
        ({"post": 0}, 400, "character"),
        ({"character": "0"}, 400, "character"),
        ({"character": -1}, 400, "character"),
        ({"character": 0, "feedback": "x" * 2001}, 400, "feedback"),
    ]
    for body, code, field in cases:
        response = editor.post(url, body, format="json")
        assert response.status_code == code and field in response.json(), (body, response.content)
    response = editor.post(url, {"character": 3}, format="json")
    assert response.status_code == 400 and "has no character 3" in response.json()["detail"]
    assert reviewer.post(url, {"character": 0}, format="json").status_code == 403
    assert editor.get(f"/api/runs/{run.pk}/versions/?character=0&post=7").status_code == 404
    assert editor.get(f"/api/runs/{run.pk}/versions/?character=x").status_code == 400
    assert editor.get("/api/regenerations/999/").status_code == 404
    GenerationRun.objects.filter(pk=run.pk).update(status="running")
    response = editor.post(url, {"character": 0}, format="json")
    assert response.status_code == 409 and "regenerate its items once it has finished" in response.json()["detail"]
    GenerationRun.objects.filter(pk=run.pk).update(status="completed")
    mongo.get_db().posts.delete_one({"_id": documents.post_key(run.ref, 0, 0)})  # as if it had failed for good
    response = editor.post(url, {"character": 0, "post": 0}, format="json")
    assert response.status_code == 409 and "was never made; resume the run" in response.json()["detail"]
    assert not Regeneration.objects.exists() and not AuditEvent.objects.filter(action="item_regenerated").exists()


def test_a_regeneration_that_fails_keeps_the_current_version(start_worker, llm_server):
    start_worker()
    run = completed_run(character_count=1, posts_per_character=1)
    db, key = mongo.get_db(), documents.post_key(run.ref, 0, 0)
    before = db.posts.find_one({"_id": key})
    llm_control(llm_server, {"queue": [{"status": 401}]})
    regeneration = finished(item_regenerate(run=run, character_index=0, post_index=0, feedback="Sunnier."))
    assert regeneration.status == "failed" and "credentials (401)" in regeneration.error
    assert regeneration.error.endswith("the published item is unchanged")
    published = db.posts.find_one({"_id": key})
    assert {k: v for k, v in published.items() if k != "drafted_version"} == before  # as it was
    assert db.item_versions.count_documents({"item": key}) == 0  # nothing replaced, nothing archived
    versions = staff("editor-failed", "Editors").get(f"/api/runs/{run.pk}/versions/?character=0&post=0").json()
    assert versions["current"]["version"] == 1 and versions["earlier"] == []  # listed once (before: twice)
    retried = finished(item_regenerate(run=run, character_index=0, post_index=0, feedback="Sunnier."))
    assert retried.status == "completed", retried.error
    # The failed draft's version number (2) is not given again: its image ID is never reused.
    assert db.posts.find_one({"_id": key})["version"] == 3 and db.item_versions.count_documents({"item": key}) == 1
    record_history(regeneration.workflow_id, "regenerate_failed")


def test_deleting_a_world_stops_its_regenerations_and_removes_every_version(start_worker, llm_server):
    from tests.test_api import cleanup_result, world_content
    from worlds.services import world_delete

    start_worker()
    run = completed_run(character_count=1, posts_per_character=2)
    finished(item_regenerate(run=run, character_index=0, post_index=1))  # an archived version to delete
    llm_control(llm_server, {"latency_s": 3.0})
    try:
        regeneration = item_regenerate(run=run, character_index=0)
        world_pk, workflow_id = run.world_id, regeneration.workflow_id
        world_delete(world=run.world)
        result = cleanup_result(world_pk)
    finally:
        llm_control(llm_server, {"reset": True})
    assert result.stopped_workflows == 1
    status = temporal_call(lambda client: client.get_workflow_handle(workflow_id).describe()).status.name
    assert status == "CANCELED"
    assert world_content(world_pk) == dict.fromkeys(world_content(world_pk), 0)


def test_a_character_regeneration_that_fails_after_its_profile_leaves_the_character_as_it_was(start_worker, llm_server):
    """Finding 8: a failure after the profile left a new profile over the old posts. The new version is a
    draft until it is whole: the character and its posts stay exactly as they were."""
    start_worker()
    run = completed_run(character_count=1, posts_per_character=2)
    db = mongo.get_db()
    before = {
        "character": db.characters.find_one({"_id": documents.character_key(run.ref, 0)}),
        "posts": list(db.posts.find({"run_key": run.ref.key}).sort("index")),
    }
    llm_control(llm_server, {"queue": [{}, {"status": 401}]})  # the profile is written, the plan is refused
    try:
        regeneration = finished(item_regenerate(run=run, character_index=0, feedback="Older."))
    finally:
        llm_control(llm_server, {"reset": True})
    assert regeneration.status == "failed" and "credentials (401)" in regeneration.error
    character = db.characters.find_one({"_id": documents.character_key(run.ref, 0)})
    assert {k: v for k, v in character.items() if k != "drafted_version"} == before["character"]
    posts = [
        {k: v for k, v in p.items() if k != "drafted_version"}
        for p in db.posts.find({"run_key": run.ref.key}).sort("index")
    ]
    assert posts == before["posts"]
    draft = db.characters.find_one(
        {"_id": documents.character_key(dataclasses.replace(run.ref, draft=regeneration.pk), 0)}
    )
    assert draft["version"] == 2 and draft["bio"] != before["character"]["bio"]  # the draft kept what it made
    assert db.item_versions.count_documents({"run_key": run.ref.key}) == 0


def test_a_cancelled_regeneration_leaves_the_published_post_with_its_image(start_worker, stack_env, logs_dir):
    """Finding 8: cancelled between its text and its image, a regeneration left the live post showing "image
    pending" for good (the new text was written in place with no image). The media server here takes 4 s a
    render, so the cancel lands during it."""
    import sys

    from localstack import servers
    from tests.conftest import ROOT

    port = servers.free_port()
    slow_media = servers.start(
        "slow media server",
        [sys.executable, "-m", "mediaserver", "--port", str(port), "--delay", "4"],
        log_path=logs_dir / "slow-mediaserver.log",
        cwd=ROOT,
    )
    try:
        servers.wait_for_port(slow_media, port)
        start_worker()
        run = completed_run(character_count=1, posts_per_character=1)
        start_worker(env={"MEDIA_GRPC_TARGET": f"127.0.0.1:{port}"})
        db, key = mongo.get_db(), documents.post_key(run.ref, 0, 0)
        before = db.posts.find_one({"_id": key})
        regeneration = item_regenerate(run=run, character_index=0, post_index=0, feedback="Rainier.")
        draft = dataclasses.replace(run.ref, draft=regeneration.pk)
        deadline = time.monotonic() + 60
        while not db.posts.find_one({"_id": documents.post_key(draft, 0, 0), "version": 2}):
            assert time.monotonic() < deadline, "the new caption was never written"
            time.sleep(0.1)
        temporal_call(lambda client: client.get_workflow_handle(regeneration.workflow_id).cancel())
        regeneration = finished(regeneration)
    finally:
        slow_media.stop()
    assert regeneration.status == "cancelled"
    published = db.posts.find_one({"_id": key})
    assert {k: v for k, v in published.items() if k != "drafted_version"} == before
    assert (
        published["image_status"] == "rendered"
        and APIClient().get(f"/images/{published['image_id']}.png").status_code == 200
    )
