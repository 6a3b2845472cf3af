"""A live world on the real servers, at a one-minute cadence: it lives its first day at once (event, posts
with images, comments and replies, likes, memories, the day's report), is paused, gets an injected event,
refuses what it cannot do with the reason, is resumed, lives the injected event on day 2, and stops."""

import html
import time

import pytest
from rest_framework.test import APIClient

from clients import mongo
from generation import documents
from tests.test_generation import FINISHED, make_world, record_history, wait_for
from tests.test_regenerate import staff
from worlds.models import AuditEvent, LiveWorld
from worlds.services import generation_start

pytestmark = pytest.mark.django_db(transaction=True)


def live_until(client: APIClient, world_id: int, until, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        live = client.get(f"/api/worlds/{world_id}/live/").json()
        if until(live):
            return live
        assert time.monotonic() < deadline, f"the live world is stuck: {live}"
        time.sleep(0.5)


def test_a_world_lives_at_a_one_minute_cadence_through_pause_an_injected_event_and_resume(start_worker):
    start_worker()
    run = wait_for(generation_start(world=make_world(character_count=3, posts_per_character=1)), FINISHED)
    assert run.status == "completed", run.error
    editor, reviewer = staff("editor-live", "Editors"), staff("reviewer-live", "Reviewers")
    url = f"/api/worlds/{run.world_id}/live/"
    body = {"day_seconds": 60, "posts_per_day": 2, "comments_per_day": 1, "daily_token_budget": 20000}
    assert reviewer.post(url, body, format="json").status_code == 403
    assert editor.post(url, {**body, "day_seconds": 30}, format="json").status_code == 400  # under a minute
    response = editor.post(url, body, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["workflow_id"] == f"world-{run.world_id}-live-1"
    assert editor.post(url, body, format="json").status_code == 409  # already live

    live = live_until(reviewer, run.world_id, lambda live: live["days"] == 1)
    assert live["status"] == "live" and live["tokens_used"] > 0 and live["next_day_at"]
    [day1] = live["timeline"]
    assert (day1["day"], day1["posts"], day1["comments"]) == (1, 2, 2) and day1["event"]
    assert day1["likes"] >= 2 and 0 <= day1["lag_s"] < 30
    db, key = mongo.get_db(), run.ref.key
    posts = list(db.posts.find({"run_key": key, "day": 1}).sort("slot"))  # written at once: in any order
    assert sorted(p["character_index"] for p in posts) == [0, 1]  # the rotation starts at the first character
    assert all(p["image_status"] == documents.ImageStatus.RENDERED and p["liked_by"] for p in posts)
    comment, reply = db.comments.find_one({"run_key": key, "reply": False}), db.comments.find_one({"reply": True})
    assert comment["character_index"] != posts[0]["character_index"] and reply["post_key"] == comment["post_key"]
    acted = {p["character_index"] for p in posts} | {comment["character_index"], reply["character_index"]}
    remembered = {c["index"] for c in db.characters.find({"run_key": key, "memory_day": 1})}
    assert remembered == acted and all(len(c.get("memory", "")) <= 600 for c in db.characters.find({"run_key": key}))
    assert db.world_events.find_one({"_id": documents.event_key(run.ref, 1)})["source"] == "llm"

    page = html.unescape(APIClient().get(f"/worlds/{run.world_id}/feed/?page=1").content.decode())
    page += html.unescape(APIClient().get(f"/worlds/{run.world_id}/").content.decode())
    title = db.world_events.find_one({"_id": documents.event_key(run.ref, 1)})["title"]
    assert "World timeline" in page and title in page  # the world's events, for anyone
    assert f"@{comment['handle']}</a> {comment['comment']}" in page and reply["comment"] in page
    assert f"♥ {len(posts[0]['liked_by'])} like" in page and "day 1" in page
    followed = db.characters.find_one({"run_key": key, "followers": {"$exists": True}})
    profile = APIClient().get(f"/worlds/{run.world_id}/characters/{followed['index']}/").content.decode()
    assert f"{len(followed['followers'])} follower" in profile

    commands = f"{url}pause/"
    response = editor.post(commands)
    assert response.status_code == 200 and response.json()["live"]["status"] == "paused"
    response = editor.post(commands)
    assert response.status_code == 409
    assert response.json()["detail"].endswith("refused to pause: the world is paused: only a live world can pause")
    response = editor.post(f"{url}events/", {"text": "A comet splits the sky."}, format="json")
    assert response.status_code == 200 and response.json()["detail"] == "the event happens on day 2"
    assert editor.post(f"{url}events/", {"text": "  "}, format="json").status_code == 400
    assert editor.post(f"{url}cadence/", {"day_seconds": 59}, format="json").status_code == 400
    response = editor.post(f"{url}cadence/", {"day_seconds": 120}, format="json")
    assert response.json()["detail"] == "a world day now comes every 120 s"
    assert response.json()["live"]["day_seconds"] == 120
    assert editor.post(f"{url}cadence/", {"day_seconds": 60}, format="json").status_code == 200  # and back
    assert reviewer.post(f"{url}resume/").status_code == 403
    assert editor.post(f"{url}resume/").status_code == 200

    live = live_until(reviewer, run.world_id, lambda live: live["days"] == 2, timeout=150)
    event = db.world_events.find_one({"_id": documents.event_key(run.ref, 2)})
    assert (event["source"], event["description"]) == ("staff", "A comet splits the sky.")
    assert db.posts.count_documents({"run_key": key, "day": 2}) == 2
    day2 = sorted(db.posts.find({"run_key": key, "day": 2}), key=lambda p: p["slot"])
    assert [p["character_index"] for p in day2] == [2, 0]  # the rotation goes on round the cast
    assert [d["day"] for d in live["timeline"]] == [2, 1]

    response = editor.post(f"{url}stop/")
    assert response.status_code == 200
    live = live_until(reviewer, run.world_id, lambda live: live["status"] == "stopped", timeout=30)
    assert LiveWorld.objects.get().status == "stopped" and live["days"] == 2
    assert editor.post(f"{url}pause/").status_code == 409  # it takes no commands any more
    actions = list(
        AuditEvent.objects.filter(action__in=["world_live", "live_command"]).values_list("detail", flat=True)
    )
    assert len(actions) == 7  # went live, pause, event, 2 cadences, resume, stop (not the refused commands)
    record_history(f"world-{run.world_id}-live-1", "live_world_commands")

    # Finding 2: live again, it goes on from day 3; days 1 and 2 keep their reports and what they spent.
    reports = {d["day"]: d for d in db.live_days.find({"run_key": key})}
    assert sorted(reports) == [1, 2] and all(reports[d]["tokens"] > 0 for d in (1, 2))
    posts_before = db.posts.count_documents({"run_key": key})
    response = editor.post(url, body, format="json")
    assert response.status_code == 202 and response.json()["first_day"] == 2
    live = live_until(reviewer, run.world_id, lambda live: live["number"] == 2 and live["days"] == 3)
    assert [life["number"] for life in live["lives"]] == [2, 1] and live["days_lived"] == 1
    assert live["tokens_used_all_lives"] == sum(life["tokens_used"] for life in live["lives"])
    after = {(d["day"], d.get("live_number")): d for d in db.live_days.find({"run_key": key})}
    assert sorted(after) == [(1, 1), (2, 1), (3, 2)]  # days 1 and 2 untouched, day 3 lived by time live 2
    assert all(after[(d, 1)]["tokens"] == reports[d]["tokens"] for d in (1, 2))
    day3 = sorted(db.posts.find({"run_key": key, "day": 3}), key=lambda p: p["slot"])
    assert [p["character_index"] for p in day3] == [1, 2]  # the rotation goes on from day 2's slots
    assert db.posts.count_documents({"run_key": key}) == posts_before + 2
    assert editor.post(f"{url}stop/").status_code == 200


def test_the_go_live_command_takes_a_published_world_live_and_says_why_not_otherwise(start_worker):
    import io

    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="run generate_world --sample --wait first"):
        call_command("go_live", "--sample")
    with pytest.raises(CommandError, match="is not published: publish a run before it goes live"):
        call_command("go_live", "--world", str(make_world().pk))
    start_worker()
    other = make_world(name="Demo", character_count=2, posts_per_character=1)
    wait_for(generation_start(world=other), FINISHED)
    out = io.StringIO()
    call_command("go_live", "--world", str(other.pk), "--day-seconds", "90", stdout=out)
    assert f"Demo is live (world-{other.pk}-live-1): its first day starts now, then one every 90 s" in out.getvalue()
    live = LiveWorld.objects.get(world=other)
    from worlds.services import live_command

    assert live_command(live=live, command="stop").startswith("stopped")


def test_days_missed_while_the_worker_was_down_are_skipped_not_replayed(start_worker):
    """The catch-up policy on the real servers. The world lives a day every 4 s (the services' floor is 60 s,
    so the test starts the workflow itself; the rule does not depend on the length of a day). The worker is
    stopped for 13 s; back, the world lives one day at once, counts the missed ones as skipped, and keeps to
    its schedule: no burst of days."""
    from clients.temporal import temporal_call
    from generation.living.contracts import LiveSettings, LiveWorldInput
    from generation.living.workflows import LiveWorldWorkflow
    from worlds import services

    worker = start_worker()
    run = wait_for(generation_start(world=make_world(character_count=2, posts_per_character=1)), FINISHED)
    live = LiveWorld.objects.create(
        world_id=run.world_id,
        run=run,
        number=1,
        day_seconds=4,
        posts_per_day=1,
        comments_per_day=0,
        daily_token_budget=20000,
        status="live",
    )
    settings = LiveSettings(day_seconds=4, posts_per_day=1, comments_per_day=0)
    inp = LiveWorldInput(live.pk, run.ref, services._resume_snapshot(run), services.run_config(), settings)
    temporal_call(services._first_start(LiveWorldWorkflow.run, inp, live.workflow_id))

    def lived(days: int, timeout: float = 60) -> LiveWorld:
        deadline = time.monotonic() + timeout
        while live.days < days:
            assert time.monotonic() < deadline, f"day {days} never came: {live.days} days, {live.error}"
            time.sleep(0.1)
            live.refresh_from_db()
        return live

    lived(1)
    worker.process.stop()
    time.sleep(13)
    start_worker()
    lived(2)
    time.sleep(4.5)  # room for one more day: a burst would show here
    live.refresh_from_db()
    days = sorted(mongo.get_db().live_days.find({"run_key": run.ref.key}), key=lambda d: d["day"])
    assert live.skipped_days >= 2, live.skipped_days
    assert days[1]["scheduled_at"] == days[0]["scheduled_at"] + 4 * (1 + live.skipped_days)  # on the grid
    after = zip(days[1:-1], days[2:], strict=True)
    assert all(b["scheduled_at"] == a["scheduled_at"] + 4 for a, b in after)  # then every 4 s
    # No burst: every day started within a day of its slot (replaying the missed days would start them late).
    assert all(0 <= day["lag_s"] < 4 for day in days), [(d["day"], d["lag_s"]) for d in days]
    services.live_command(live=live, command="stop")


def test_the_workers_reconciler_settles_live_worlds_and_regenerations_whose_workflows_are_gone(start_worker):
    """Rows shown running whose workflow Temporal does not have (here: never started) are corrected by the
    worker's periodic reconciler, without anyone acting on them; a live world only once its day is late."""
    from datetime import timedelta

    from django.utils import timezone

    from worlds.models import GenerationRun, Regeneration

    world = make_world(character_count=2, posts_per_character=1)
    run = GenerationRun.objects.create(world=world, number=1, workflow_id=f"gone-{world.pk}", status="completed")
    long_ago = timezone.now() - timedelta(minutes=20)
    fields = {"world": world, "run": run, "day_seconds": 60, "posts_per_day": 1, "comments_per_day": 0}
    late = LiveWorld.objects.create(number=1, status="live", next_day_at=long_ago, daily_token_budget=5000, **fields)
    on_time = LiveWorld.objects.create(
        number=2, status="live", next_day_at=timezone.now() + timedelta(hours=1), daily_token_budget=5000, **fields
    )
    regeneration = Regeneration.objects.create(run=run, character_index=0, post_index=0)
    Regeneration.objects.filter(pk=regeneration.pk).update(started_at=long_ago)

    start_worker(env={"RECONCILE_INTERVAL_SECONDS": "1"})
    deadline = time.monotonic() + 60
    while (
        LiveWorld.objects.get(pk=late.pk).status == "live"
        or Regeneration.objects.get(pk=regeneration.pk).status == "running"
    ):
        assert time.monotonic() < deadline, "the reconciler did not settle the rows"
        time.sleep(0.5)
    late.refresh_from_db(), regeneration.refresh_from_db(), on_time.refresh_from_db()
    assert (late.status, late.error, late.next_day_at) == ("failed", "its workflow never started", None)
    assert (regeneration.status, regeneration.error) == ("failed", "its workflow never started")
    assert on_time.status == "live"  # its day is not due: not looked up
