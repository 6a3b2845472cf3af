"""The admin for content staff: roles, buttons, bulk actions, messages, previews.
Real worker, Temporal, Mongo, LLM endpoint and media server behind it."""

import html
import io
import json
import re
import time

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.test import Client

from clients import mongo
from clients import temporal as temporal_client
from generation import documents, store
from localstack import servers
from tests.test_api import QUALITY_FLAGS, cleanup_status
from tests.test_generation import FINISHED, make_world, wait_for
from worlds.models import AuditEvent, GenerationRun, World
from worlds.staff_groups import grant_staff_groups

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def roles():
    grant_staff_groups(Group, Permission)  # transactional tests flush the groups the migration made


def staff(username: str, *groups: str, superuser: bool = False) -> Client:
    user = User.objects.create_user(username, password="pw-for-tests-only", is_staff=True, is_superuser=superuser)
    user.groups.add(*Group.objects.filter(name__in=groups))
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def post_button(client: Client, world: World, action: str):
    return client.post(f"/admin/worlds/world/{world.pk}/{action}/", follow=True)


def test_editor_defines_and_generates_a_world_and_sees_it_complete(start_worker):
    start_worker()
    editor = staff("editor", "Editors")
    response = editor.post(
        "/admin/worlds/world/add/",
        {
            "name": "Mossmarket",
            "premise": "A bazaar grown inside a giant's moss-covered boot.",
            "genre": "fantasy",
            "tone": "playful",
            "language": "en",
            "visual_style": "ink",
            "character_count": 2,
            "posts_per_character": 1,
            "token_budget": 100000,
            "model_override": "",
            "runs-TOTAL_FORMS": 0,
            "runs-INITIAL_FORMS": 0,
            "runs-MIN_NUM_FORMS": 0,
            "runs-MAX_NUM_FORMS": 1000,
        },
        follow=True,
    )
    assert response.status_code == 200
    world = World.objects.get(name="Mossmarket")
    assert world.created_by.username == "editor"

    response = post_button(editor, world, "generate")
    assert "Mossmarket: run 1 started" in messages_of(response)
    response = post_button(editor, world, "generate")
    assert any("already being generated" in m for m in messages_of(response)), messages_of(response)
    run = wait_for(world.runs.get(), FINISHED)
    assert run.status == "completed", run.error

    page = editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    assert 'data-action="generate"' in page and 'data-action="approve"' not in page  # editors do not review
    assert 'data-action="unpublish"' in page and "Run 1</a> (completed), published" in page  # it went live
    assert page.count('<img src="/images/img-') == 2 + 2  # two avatars and two post images
    # provenance: every character and post says which prompt version and model made it
    assert page.count('<small class="wg-muted">v1 · prompts v4 · worldgen-procedural-1</small>') == 2 + 2
    assert "Completed" in page and "2/2 characters, 2/2 posts" in page
    listing = editor.get("/admin/worlds/world/").content.decode()
    assert 'class="wg-bar"' in listing and "Mossmarket" in listing

    run_page = editor.get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode()
    assert f"/workflows/{run.workflow_id}" in run_page and 'class="wg-timeline"' in run_page
    assert "Run started" in run_page
    assert list(AuditEvent.objects.filter(world=world).values_list("action", flat=True).order_by("at", "pk")) == [
        "world_created",
        "run_started",
        "run_published",
    ]


def test_review_flow_four_eyes_and_permissions(start_worker):
    start_worker()
    editor, reviewer = staff("editor2", "Editors", "Reviewers"), staff("reviewer", "Reviewers")
    world = make_world(name="Glasswater", requires_approval=True, character_count=1, posts_per_character=1)

    response = post_button(reviewer, world, "generate")
    assert any("you do not have permission to start generation runs" in m for m in messages_of(response))
    assert not world.runs.exists()

    assert "run 1 started" in messages_of(post_button(editor, world, "generate"))[0]
    run = wait_for(world.runs.get(), {"awaiting_approval"} | FINISHED)
    assert run.status == "awaiting_approval"

    response = post_button(editor, world, "approve")
    assert any("you may not approve runs you started" in m for m in messages_of(response))

    form = reviewer.get(f"/admin/worlds/world/{world.pk}/reject/")
    assert form.status_code == 200 and "feedback" in form.content.decode()
    empty = reviewer.post(f"/admin/worlds/world/{world.pk}/reject/", {"feedback": ""})
    assert "This field is required" in empty.content.decode()
    response = reviewer.post(f"/admin/worlds/world/{world.pk}/reject/", {"feedback": "Darker, please."}, follow=True)
    assert any("rejected; a new revision is being written" in m for m in messages_of(response))
    run.refresh_from_db()
    assert run.rejected_by.username == "reviewer"

    deadline = time.monotonic() + 60
    while not (run.status == "awaiting_approval" and run.bible_revision == 1):
        assert time.monotonic() < deadline, run.status
        time.sleep(0.2)
        run.refresh_from_db()

    # Bulk approve from the list.
    response = reviewer.post("/admin/worlds/world/", {"action": "approve", "_selected_action": [world.pk]}, follow=True)
    assert any("approved; characters are being generated" in m for m in messages_of(response))
    run = wait_for(run, FINISHED)
    assert run.status == "completed" and run.approved_by.username == "reviewer"
    response = reviewer.post("/admin/worlds/world/", {"action": "approve", "_selected_action": [world.pk]}, follow=True)
    assert any("nothing is running" in m for m in messages_of(response))
    actions = list(AuditEvent.objects.filter(run=run).values_list("actor__username", "action").order_by("at", "pk"))
    assert actions == [
        ("editor2", "run_started"),
        ("reviewer", "run_rejected"),
        ("reviewer", "run_approved"),
        (None, "run_published"),
    ]


def test_bulk_reject_asks_for_feedback_and_cancel_needs_the_role(start_worker):
    start_worker()
    editor, reviewer = staff("editor3", "Editors"), staff("reviewer3", "Reviewers")
    world = make_world(name="Emberfen", requires_approval=True, character_count=1, posts_per_character=0)
    post_button(editor, world, "generate")
    run = wait_for(world.runs.get(), {"awaiting_approval"} | FINISHED)

    page = reviewer.post("/admin/worlds/world/", {"action": "reject", "_selected_action": [world.pk]})
    assert page.status_code == 200 and "Reject the world bible of" in page.content.decode()
    assert GenerationRun.objects.get(pk=run.pk).bible_revision == 0  # nothing happened yet

    response = post_button(reviewer, world, "cancel")
    assert any("you do not have permission to cancel" in m for m in messages_of(response))
    response = post_button(editor, world, "cancel")
    assert any("is being cancelled" in m for m in messages_of(response))
    assert wait_for(run, FINISHED).status == "cancelled"
    assert run.cancelled_by.username == "editor3"


def test_buttons_need_post_and_staff():
    anonymous = Client()
    world = make_world(name="Quietreach")
    assert anonymous.post(f"/admin/worlds/world/{world.pk}/generate/").status_code == 302  # to the login page
    editor = staff("editor4", "Editors")
    editor.get(f"/admin/worlds/world/{world.pk}/generate/")
    assert not world.runs.exists()  # a GET changes nothing
    assert editor.post("/admin/worlds/world/999999/generate/").status_code == 404


def test_rerender_action_needs_the_start_role_and_explains_refusals():
    world = make_world(name="Glassmere")
    running = GenerationRun.objects.create(
        world=world, number=1, workflow_id="world-glassmere-run-1", status="running", stage="posts", degraded_items=2
    )
    clean = GenerationRun.objects.create(
        world=world, number=2, workflow_id="world-glassmere-run-2", status="completed", stage="done"
    )
    reviewer = staff("reviewer9", "Reviewers")
    assert "rerender_images" not in reviewer.get("/admin/worlds/generationrun/").content.decode()
    reviewer.post("/admin/worlds/generationrun/", {"action": "rerender_images", "_selected_action": [running.pk]})
    assert not AuditEvent.objects.filter(action="images_rerendered").exists()

    editor = staff("editor9", "Editors")
    assert "rerender_images" in editor.get("/admin/worlds/generationrun/").content.decode()
    response = editor.post(
        "/admin/worlds/generationrun/",
        {"action": "rerender_images", "_selected_action": [running.pk, clean.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert sorted(messages_of(response)) == [
        "Glassmere run 1 is still running; its images are retried as it goes",
        "Glassmere run 2 has no images waiting for a re-render",
    ]
    assert not AuditEvent.objects.filter(action="images_rerendered").exists()


def test_an_editor_resumes_a_failed_run_from_the_run_list(start_worker, llm_server):
    from tests.test_generation import counts, llm_control

    start_worker()
    llm_control(llm_server, {"queue": [{"status": 401}]})  # the bible's call: the run fails at once
    world = make_world(name="Resumia", character_count=1, posts_per_character=1)
    editor = staff("editor-resume", "Editors")
    post_button(editor, world, "generate")
    run = wait_for(world.runs.get(), FINISHED)
    assert run.status == "failed" and counts(run)["bibles"] == 0
    reviewer = staff("reviewer-resume", "Reviewers")
    assert 'value="resume"' not in reviewer.get("/admin/worlds/generationrun/").content.decode()
    reviewer.post("/admin/worlds/generationrun/", {"action": "resume", "_selected_action": [run.pk]})
    assert not AuditEvent.objects.filter(action="run_resumed").exists()

    assert 'value="resume"' in editor.get("/admin/worlds/generationrun/").content.decode()
    response = editor.post(
        "/admin/worlds/generationrun/", {"action": "resume", "_selected_action": [run.pk]}, follow=True
    )
    assert messages_of(response) == ["Resumia run 1 is resumed: it makes only what is missing."]
    run = wait_for(run, FINISHED)
    assert (run.status, run.resumes, counts(run)["posts"]) == ("completed", 1, 1), run.error
    page = editor.get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode()
    assert f"world-{world.pk}-run-1-resume-1" in page and "Run resumed" in page


def test_an_editor_regenerates_a_post_from_the_preview_and_sees_both_versions(start_worker):
    from worlds.models import Regeneration

    start_worker()
    world = make_world(name="Versa", character_count=1, posts_per_character=1)
    editor = staff("editor-versions", "Editors")
    post_button(editor, world, "generate")
    run = wait_for(world.runs.get(), FINISHED)
    page = editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    url = f"/admin/worlds/world/{world.pk}/runs/{run.pk}/regenerate/0/0/"
    assert url in page and f"/admin/worlds/world/{world.pk}/runs/{run.pk}/regenerate/0/" in page
    old_caption = mongo.get_db().posts.find_one({"run_key": run.ref.key})["caption"]

    reviewer = staff("reviewer-versions", "Reviewers")
    assert "Regenerate" not in reviewer.get(url).content.decode().split("<h2>Regenerations</h2>")[1]
    response = reviewer.post(url, {"feedback": "Louder."}, follow=True)
    assert "permission to regenerate" in " ".join(messages_of(response))
    response = editor.post(url, {"feedback": "x" * 2001})
    assert response.status_code == 200 and "at most" in response.content.decode()  # the form says why
    assert not Regeneration.objects.exists()

    response = editor.post(url, {"feedback": "Louder."}, follow=True)
    assert messages_of(response) == [
        "Versa: post 0.0 of run 1 is being regenerated; the feed shows the new version once it is written."
    ]
    regeneration = Regeneration.objects.get()
    deadline = time.monotonic() + 60
    while regeneration.status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
        regeneration.refresh_from_db()
    assert regeneration.status == "completed", regeneration.error
    page = html.unescape(editor.get(url).content.decode())
    assert "Version 2</strong> (current: the feed shows it)" in page and "Made with the note: Louder." in page
    assert "Version 1</strong> (replaced" in page and old_caption in page
    assert 'editor-versions: post 0.0, completed ("Louder.")' in page
    assert "Item regenerated" in editor.get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode()
    assert editor.get(f"/admin/worlds/world/{world.pk}/runs/{run.pk}/regenerate/0/5/").status_code == 404


def test_an_editor_takes_a_world_live_from_its_page_and_controls_it(start_worker):
    start_worker()
    world = make_world(name="Livia", character_count=2, posts_per_character=1)
    editor = staff("editor-live-admin", "Editors")
    url = f"/admin/worlds/world/{world.pk}/live/"
    assert "Publish a run of this world before it goes live." in editor.get(url).content.decode()
    post_button(editor, world, "generate")
    wait_for(world.runs.get(), FINISHED)
    assert f'href="{url}"' in editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()

    response = editor.post(url, {"command": "go_live", "day_seconds": 10, "posts_per_day": 1}, follow=True)
    assert "Ensure this value is greater than or equal to 60" in response.content.decode()  # nothing started
    form = {"command": "go_live", "day_seconds": 3600, "posts_per_day": 1, "comments_per_day": 1}
    response = editor.post(url, {**form, "daily_token_budget": 20000}, follow=True)
    assert messages_of(response) == ["Livia: live: its first day starts now, then one every 3600 s"]
    live = world.lives.get()
    deadline = time.monotonic() + 60
    while live.days < 1:
        assert time.monotonic() < deadline, "the first day never came"
        time.sleep(0.3)
        live.refresh_from_db()
    page = html.unescape(editor.get(url).content.decode())
    assert "Livia live 1: live" in page and "<td>1</td>" in page and 'data-action="pause"' in page

    response = editor.post(url, {"command": "pause"}, follow=True)
    assert messages_of(response) == ["Livia: paused: no day starts until it is resumed"]
    response = editor.post(url, {"command": "pause"}, follow=True)
    assert messages_of(response) == [
        "Livia: Livia live 1 refused to pause: the world is paused: only a live world can pause"
    ]
    response = editor.post(url, {"command": "inject_event", "text": "The tide forgets to turn."}, follow=True)
    assert messages_of(response) == ["Livia: the event happens on day 2"]
    response = editor.post(url, {"command": "stop"}, follow=True)
    assert messages_of(response)[0].startswith("Livia: stopped")
    reviewer = staff("reviewer-live-admin", "Reviewers")
    page = reviewer.get(url).content.decode()
    assert "Timeline" in page and 'data-action="pause"' not in page and "Go live" not in page


# --- deleting worlds (through worlds.services.world_delete) ------------------------------------------


def with_runs(name: str, *statuses: str) -> World:
    world = make_world(name=name)
    for number, status in enumerate(statuses, start=1):
        GenerationRun.objects.create(
            world=world, number=number, workflow_id=f"admin-{world.pk}-{number}", status=status, stage="done"
        )
    return world


def test_a_superuser_deletes_a_world_with_runs_from_its_page(world_cleanups):
    admin_client = staff("root", superuser=True)
    world = with_runs("Lanternfall", "completed", "running")
    world_pk = world.pk
    assert (
        f'href="/admin/worlds/world/{world_pk}/delete/"'
        in admin_client.get(f"/admin/worlds/world/{world_pk}/change/").content.decode()
    )
    confirm = admin_client.get(f"/admin/worlds/world/{world_pk}/delete/")
    assert confirm.status_code == 200
    assert "Lanternfall (2 runs, with every document and image they made)" in confirm.content.decode()
    assert World.objects.filter(pk=world_pk).exists()  # the page deletes nothing
    assert staff("reviewer-d", "Reviewers").get(f"/admin/worlds/world/{world_pk}/delete/").status_code == 403

    response = admin_client.post(f"/admin/worlds/world/{world_pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and response["Location"] == "/admin/worlds/world/"
    assert any("was deleted successfully" in m for m in messages_of(admin_client.get(response["Location"])))
    assert not World.objects.filter(pk=world_pk).exists() and not GenerationRun.objects.exists()
    assert cleanup_status(world_pk) == "RUNNING"  # started (no worker runs it here)
    deleted = AuditEvent.objects.get(action="world_deleted")
    assert (deleted.actor.username, deleted.world_pk, deleted.world_name) == ("root", world_pk, "Lanternfall")
    assert deleted.detail.startswith("Lanternfall; 2 runs;")


def test_bulk_delete_asks_first_then_deletes_each_world_through_the_service(world_cleanups):
    editor = staff("editor-d", "Editors")
    worlds = [with_runs("Emberfen", "completed"), with_runs("Glassmere", "awaiting_approval", "failed")]
    pks = [world.pk for world in worlds]
    assert 'value="delete_selected"' in editor.get("/admin/worlds/world/").content.decode()
    reviewer = staff("reviewer-b", "Reviewers")
    assert 'value="delete_selected"' not in reviewer.get("/admin/worlds/world/").content.decode()

    confirm = editor.post("/admin/worlds/world/", {"action": "delete_selected", "_selected_action": pks})
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Emberfen (1 run, with every document and image they made)" in page
    assert "Glassmere (2 runs, with every document and image they made)" in page
    assert World.objects.count() == 2 and not AuditEvent.objects.filter(action="world_deleted").exists()

    response = editor.post(
        "/admin/worlds/world/", {"action": "delete_selected", "_selected_action": pks, "post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert sorted(messages_of(response)) == [
        "Emberfen: deleted; its runs are stopped and their content is being removed",
        "Glassmere: deleted; its runs are stopped and their content is being removed",
    ]
    assert not World.objects.exists() and not GenerationRun.objects.exists()
    deleted = AuditEvent.objects.filter(action="world_deleted").order_by("world_pk")
    assert [(e.actor.username, e.world_pk, e.world_name) for e in deleted] == [
        ("editor-d", pks[0], "Emberfen"),
        ("editor-d", pks[1], "Glassmere"),
    ]
    assert sorted(LogEntry.objects.filter(action_flag=DELETION).values_list("object_repr", flat=True)) == [
        "Emberfen",
        "Glassmere",
    ]
    assert [cleanup_status(pk) for pk in pks] == ["RUNNING", "RUNNING"]


def test_deleting_without_temporal_is_an_error_message_and_keeps_the_world(mongo_env, settings, monkeypatch):
    admin_client = staff("root2", superuser=True)
    world = with_runs("Quietreach", "completed")
    address = f"127.0.0.1:{servers.free_port()}"  # nothing listens there
    settings.TEMPORAL_ADDRESS = address  # restored after the test, as is the client below
    monkeypatch.setattr(temporal_client, "_thread", None)

    response = admin_client.post(f"/admin/worlds/world/{world.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain == [(f"/admin/worlds/world/{world.pk}/change/", 302)]
    assert messages_of(response)[0].startswith(
        f"Quietreach was not deleted: could not start the cleanup of Quietreach: Temporal is not reachable at {address}"
    )
    response = admin_client.post(
        "/admin/worlds/world/",
        {"action": "delete_selected", "_selected_action": [world.pk], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    assert messages_of(response)[0].startswith(
        "Quietreach: could not start the cleanup of Quietreach: Temporal is not reachable"
    )
    assert World.objects.filter(pk=world.pk).exists() and world.runs.count() == 1
    assert not AuditEvent.objects.filter(action="world_deleted").exists()
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()  # the admin log does not say deleted


# --- publishing ------------------------------------------------------------------------------------


@pytest.fixture
def bibles(mongo_env):
    """Writes a run's world bible into Mongo (what publishing needs); removes the worlds' content after."""
    db, worlds = mongo.get_db(), set()

    def write(run: GenerationRun) -> None:
        if run.world_id not in worlds:
            worlds.add(run.world_id)
            store.delete_world_content(db, run.world_id)
        store.save_bible(db, run.ref, {"title": f"Bible of {run}"}, 0, None)

    yield write
    for world_id in worlds:
        store.delete_world_content(db, world_id)


def run_action(client: Client, action: str, *runs: GenerationRun):
    return client.post(
        "/admin/worlds/generationrun/", {"action": action, "_selected_action": [r.pk for r in runs]}, follow=True
    )


def test_publishing_and_unpublishing_need_the_permission(bibles):
    world = with_runs("Saltmere", "completed", "failed")
    first, second = world.runs.order_by("number")
    bibles(first)  # run 2 failed before its bible
    editor, reviewer = staff("editor-p", "Editors"), staff("reviewer-p", "Reviewers")
    assert 'value="publish"' in editor.get("/admin/worlds/generationrun/").content.decode()
    assert 'value="publish"' not in reviewer.get("/admin/worlds/generationrun/").content.decode()
    run_action(reviewer, "publish", first)  # not an action of theirs: nothing happens
    world.refresh_from_db()
    assert world.live_run is None
    page = editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    assert "Not published: viewers do not see this world." in page and 'data-action="unpublish"' not in page

    response = run_action(editor, "publish", first, second)
    assert sorted(messages_of(response)) == [
        "Saltmere run 1 is live.",
        "Saltmere run 2 has nothing to show: it stopped before its world bible was written",
    ]
    world.refresh_from_db()
    assert world.live_run == first
    listing = editor.get("/admin/worlds/generationrun/").content.decode()
    assert listing.count('<td class="field-live">live</td>') == 1
    page = editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    assert f'/admin/worlds/generationrun/{first.pk}/change/">Run 1</a> (completed), published' in page
    assert 'data-action="unpublish"' in page
    assert re.findall(r'<td class="field-live">\s*<p>(.*?)</p>', page) == ["", "live"]  # the inline: runs 2 and 1
    assert 'data-action="unpublish"' not in reviewer.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()

    response = post_button(reviewer, world, "unpublish")
    assert messages_of(response) == ["Saltmere: you do not have permission to unpublish worlds"]
    world.refresh_from_db()
    assert world.live_run == first
    response = post_button(editor, world, "unpublish")
    assert messages_of(response) == ["Saltmere: unpublished: viewers no longer see it"]
    world.refresh_from_db()
    assert world.live_run is None
    response = post_button(editor, world, "unpublish")
    assert messages_of(response) == ["Saltmere: Saltmere is not published"]
    actions = AuditEvent.objects.filter(world=world).order_by("at", "pk").values_list("actor__username", "action")
    assert list(actions) == [("editor-p", "run_published"), ("editor-p", "run_unpublished")]


def test_the_reconcile_action_corrects_stale_rows_from_temporal(temporal_env):
    world = with_runs("Driftwood", "running")
    run = world.runs.get()  # its workflow never existed in Temporal
    assert (
        'value="reconcile"' not in staff("reviewer-r", "Reviewers").get("/admin/worlds/generationrun/").content.decode()
    )
    response = run_action(staff("editor-r", "Editors"), "reconcile", run)
    assert messages_of(response) == [
        "Driftwood run 1: Temporal no longer has this workflow",
        "1 of 1 runs corrected from Temporal.",
    ]
    run.refresh_from_db()
    assert (run.status, run.error) == ("failed", "Temporal no longer has this workflow")
    assert AuditEvent.objects.filter(run=run, action="run_reconciled", actor__username="editor-r").exists()


# --- content quality --------------------------------------------------------------------------------


def test_the_run_page_shows_the_content_quality_and_its_flags(quality_content):
    world = with_runs("Lanternfall", "completed")
    run = world.runs.get()
    quality_content(run)
    reviewer = staff("reviewer-q", "Reviewers")
    page = html.unescape(reviewer.get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode())
    assert "Content quality" in page and 'class="wg-quality"' in page
    assert re.search(r"<td>distinct-2 of captions</td><td>0.54</td><td>≥ 0.6</td><td><span class=\"wg-miss\">✗", page)
    assert re.search(r"<td>hashtag variety</td><td>0.50</td><td>≥ 0.5</td><td><span class=\"wg-ok\">✓", page)
    assert "<td>LLM calls</td><td>11</td><td></td><td></td>" in page  # no target
    for flag in QUALITY_FLAGS["run"] + QUALITY_FLAGS["echo"] + QUALITY_FLAGS["wren"]:
        assert flag in page, flag
    assert "<td>#1 @echo</td><td>3</td><td>0.09</td><td>2</td>" in page
    assert "Prompt versions: v2" in page
    listing = reviewer.get("/admin/worlds/generationrun/").content.decode()
    assert "Content quality" not in listing and "distinct-2" not in listing  # computed on the run page only


def test_the_quality_panel_of_a_run_without_content_has_no_flags(mongo_env):
    run = with_runs("Quietreach", "running").runs.get()
    store.delete_world_content(mongo.get_db(), run.world_id)
    page = html.unescape(
        staff("editor-q", "Editors").get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode()
    )
    assert "✓ No run figure misses its target." in page and "✗" not in page
    assert "Prompt versions: not recorded" in page


def quality_report(*args: str) -> str:
    out = io.StringIO()
    call_command("quality_report", *args, stdout=out)
    return out.getvalue()


def test_the_quality_report_command(quality_content):
    world = with_runs("Lanternfall", "completed", "cancelled", "running")
    first, second, active = world.runs.order_by("number")
    quality_content(first)
    text = quality_report("--run", str(first.pk))
    assert text.startswith(f"Lanternfall run 1 (ID {first.pk}, completed)") and "prompt versions: v2" in text
    assert re.search(r"distinct-2 of captions +0\.54 +≥ 0\.6 +MISSED", text)
    assert re.search(r"hashtag variety +0\.50 +≥ 0\.5 +ok", text)
    for flag in QUALITY_FLAGS["run"]:
        assert f"flag: {flag}" in text
    assert "character #1 @echo:\n    " + QUALITY_FLAGS["echo"][0] in text
    assert "character #2 @wren:" in text and "@mira" not in text  # only flagged characters

    body = json.loads(quality_report("--run", str(first.pk), "--json"))
    assert [entry["run_id"] for entry in body] == [first.pk]
    assert body[0]["run"] == "Lanternfall run 1" and body[0]["report"]["run"]["flags"] == QUALITY_FLAGS["run"]
    assert [c["flags"] for c in body[0]["report"]["characters"]] == [QUALITY_FLAGS[h] for h in ("mira", "echo", "wren")]

    assert quality_report("--world", str(world.pk)).startswith(f"Lanternfall run 3 (ID {active.pk}, running)")
    assert "no flags" in quality_report("--world", str(world.pk))  # nothing made yet
    latest = json.loads(quality_report("--json"))  # finished runs only
    assert sorted(entry["run_id"] for entry in latest) == [first.pk, second.pk]

    with pytest.raises(CommandError, match="no run with ID 987654"):
        quality_report("--run", "987654")
    with pytest.raises(CommandError, match="no world with ID 987654"):
        quality_report("--world", "987654")
    with pytest.raises(CommandError, match="Emptyworld \\(ID [0-9]+\\) has no runs yet"):
        quality_report("--world", str(make_world(name="Emptyworld").pk))


# --- limits in the forms ------------------------------------------------------------------------------


def test_the_feedback_forms_refuse_over_long_feedback():
    world = make_world(name="Glasswater", requires_approval=True)
    reviewer = staff("reviewer-f", "Reviewers")
    too_long = "x" * 2001
    expected = "Keep the feedback to at most 2000 characters (it has 2001)."
    response = reviewer.post(f"/admin/worlds/world/{world.pk}/reject/", {"feedback": too_long})
    assert response.status_code == 200 and response.context["form"].errors == {"feedback": [expected]}
    response = reviewer.post(
        "/admin/worlds/world/", {"action": "reject", "_selected_action": [world.pk], "feedback": too_long}
    )
    assert response.status_code == 200 and response.context["form"].errors == {"feedback": [expected]}
    assert expected in html.unescape(response.content.decode())
    assert not AuditEvent.objects.filter(action="run_rejected").exists()


def test_the_world_form_refuses_an_over_long_premise_and_a_disallowed_model():
    editor = staff("editor-f", "Editors")
    fields = {
        "name": "Mossmarket",
        "premise": "p" * 4001,
        "genre": "fantasy",
        "tone": "playful",
        "language": "en",
        "visual_style": "ink",
        "character_count": 2,
        "posts_per_character": 1,
        "token_budget": 5_000_001,
        "model_override": "gpt-9",
        "runs-TOTAL_FORMS": 0,
        "runs-INITIAL_FORMS": 0,
        "runs-MIN_NUM_FORMS": 0,
        "runs-MAX_NUM_FORMS": 1000,
    }
    expected = {
        "premise": ["Keep the premise to at most 4000 characters (it has 4001)."],
        "token_budget": ["The token budget may be at most 5000000 (GENERATION_MAX_TOKEN_BUDGET)."],
        "model_override": [
            "'gpt-9' is not an allowed model; choose one of: worldgen-procedural-1 "
            "(LLM_ALLOWED_MODELS), or leave it blank."
        ],
    }
    response = editor.post("/admin/worlds/world/add/", fields)
    assert response.status_code == 200 and response.context["adminform"].form.errors == expected
    page = html.unescape(response.content.decode())
    assert all(message in page for messages in expected.values() for message in messages)
    assert not World.objects.exists()

    world = make_world(name="Mossmarket")
    response = editor.post(f"/admin/worlds/world/{world.pk}/change/", {**fields, "premise": "A short premise."})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {k: v for k, v in expected.items() if k != "premise"}
    world.refresh_from_db()
    assert (world.token_budget, world.model_override) == (500_000, "")


def test_the_run_page_shows_what_a_running_run_waits_for(quality_content):
    world = with_runs("Lanternfall", "running")
    run = world.runs.get()
    quality_content(run)  # for the world's clean-up afterwards
    attempt = {"attempt": 4, "status": "retrying", "error": "LLM unavailable (503): upstream down"}
    store.record_task(
        mongo.get_db(), run.ref, "bible", 0, {"status": "retrying"}, attempt={**attempt, "at": documents.now()}
    )
    reviewer = staff("reviewer-w", "Reviewers")
    page = html.unescape(reviewer.get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode())
    assert re.search(
        r"<p>the LLM, for bible 0, since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; "
        r"failed attempts in a row: 1; last error: LLM unavailable \(503\)",
        page,
    )


def test_the_run_page_lists_the_failed_items(quality_content):
    world = with_runs("Lanternfall", "completed")
    run = world.runs.get()
    GenerationRun.objects.filter(pk=run.pk).update(failed_items=1)
    quality_content(run)  # for the world's clean-up afterwards
    error = "LLM output for 'post' is not valid JSON: Expecting value"
    store.record_task(
        mongo.get_db(), run.ref, "post", "1.2", {"status": "failed", "schema_name": "post", "error": error}
    )
    page = html.unescape(
        staff("reviewer-f", "Reviewers").get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode()
    )
    assert f"<p>post 1.2: {error}</p>" in page
