"""The admin for content staff: roles, buttons, bulk actions, messages, previews.
Real worker, Temporal, Mongo, LLM endpoint and media server behind it."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.test import Client

from tests.test_generation import FINISHED, make_world, wait_for
from worlds.models import AuditEvent, GenerationRun, World
from worlds.roles import grant_roles

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def roles():
    grant_roles(Group, Permission)  # transactional tests flush the groups the migration made


def staff(username: str, *groups: str) -> Client:
    user = User.objects.create_user(username, password="pw-for-tests-only", is_staff=True)
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
    response = editor.post("/admin/worlds/world/add/", {
        "name": "Mossmarket", "premise": "A bazaar grown inside a giant's moss-covered boot.", "genre": "fantasy",
        "tone": "playful", "language": "en", "visual_style": "ink", "character_count": 2, "posts_per_character": 1,
        "token_budget": 100000, "model_override": "",
        "runs-TOTAL_FORMS": 0, "runs-INITIAL_FORMS": 0, "runs-MIN_NUM_FORMS": 0, "runs-MAX_NUM_FORMS": 1000,
    }, follow=True)
    assert response.status_code == 200
    world = World.objects.get(name="Mossmarket")
    assert world.created_by.username == "editor"

    response = post_button(editor, world, "generate")
    assert "Mossmarket: run 1 started" in messages_of(response)
    response = post_button(editor, world, "generate")
    assert any("already being generated" in m for m in messages_of(response))
    run = wait_for(world.runs.get(), FINISHED)
    assert run.status == "completed", run.error

    page = editor.get(f"/admin/worlds/world/{world.pk}/change/").content.decode()
    assert 'data-action="generate"' in page and 'data-action="approve"' not in page  # editors do not review
    assert page.count('<img src="/images/img-') == 2 + 2  # two avatars and two post images
    assert "Completed" in page and "2/2 characters, 2/2 posts" in page
    listing = editor.get("/admin/worlds/world/").content.decode()
    assert 'class="wg-bar"' in listing and "Mossmarket" in listing

    run_page = editor.get(f"/admin/worlds/generationrun/{run.pk}/change/").content.decode()
    assert f"/workflows/{run.workflow_id}" in run_page and 'class="wg-timeline"' in run_page
    assert "Run started" in run_page
    assert list(AuditEvent.objects.filter(world=world).values_list("action", flat=True).order_by("at")) == [
        "world_created", "run_started"]


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

    import time
    deadline = time.monotonic() + 60
    while not (run.status == "awaiting_approval" and run.bible_revision == 1):
        assert time.monotonic() < deadline, run.status
        time.sleep(0.2)
        run.refresh_from_db()

    # Bulk approve from the list.
    response = reviewer.post("/admin/worlds/world/", {"action": "approve", "_selected_action": [world.pk]},
                             follow=True)
    assert any("approved; characters are being generated" in m for m in messages_of(response))
    run = wait_for(run, FINISHED)
    assert run.status == "completed" and run.approved_by.username == "reviewer"
    response = reviewer.post("/admin/worlds/world/", {"action": "approve", "_selected_action": [world.pk]},
                             follow=True)
    assert any("nothing is running" in m for m in messages_of(response))
    actions = list(AuditEvent.objects.filter(run=run).values_list("actor__username", "action").order_by("at"))
    assert actions == [("editor2", "run_started"), ("reviewer", "run_rejected"), ("reviewer", "run_approved")]


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
    running = GenerationRun.objects.create(world=world, number=1, workflow_id="world-glassmere-run-1",
                                           status="running", stage="posts", degraded_items=2)
    clean = GenerationRun.objects.create(world=world, number=2, workflow_id="world-glassmere-run-2",
                                         status="completed", stage="done")
    reviewer = staff("reviewer9", "Reviewers")
    assert "rerender_images" not in reviewer.get("/admin/worlds/generationrun/").content.decode()
    reviewer.post("/admin/worlds/generationrun/", {"action": "rerender_images", "_selected_action": [running.pk]})
    assert not AuditEvent.objects.filter(action="images_rerendered").exists()

    editor = staff("editor9", "Editors")
    assert "rerender_images" in editor.get("/admin/worlds/generationrun/").content.decode()
    response = editor.post("/admin/worlds/generationrun/", {"action": "rerender_images",
                                                             "_selected_action": [running.pk, clean.pk]}, follow=True)
    assert response.status_code == 200
    assert sorted(messages_of(response)) == [
        "Glassmere run 1 is still running; its images are retried as it goes",
        "Glassmere run 2 has no images waiting for a re-render",
    ]
    assert not AuditEvent.objects.filter(action="images_rerendered").exists()
