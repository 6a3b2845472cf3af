"""Staff commands on live worlds, regenerations and deletions either happen or are refused with a reason, and
nothing is guessed after a call whose answer was lost (issue 22, findings 1, 2, 3, 6, 18 and 19). On the real
Temporal dev server and Mongo-wire server; no worker runs, so each started workflow is terminated after."""

import dataclasses
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.utils import timezone
from temporalio.service import RPCError

from clients import mongo
from clients.temporal import temporal_call
from generation import documents, store
from generation.contracts import cleanup_workflow_id
from generation.living.contracts import DayReport, LiveReport, LiveState, LiveWorldInput
from tests.tcp_proxy import SlowReplyProxy
from tests.test_api import api, make_run, make_world
from tests.test_run_lifecycle import use_temporal_at
from worlds import reconciler, selectors, services
from worlds.models import AuditEvent, GenerationRun, LiveWorld, Regeneration, World
from worlds.staff_groups import grant_staff_groups

pytestmark = pytest.mark.django_db(transaction=True)


def terminate(*workflow_ids: str) -> None:
    async def stop(client):
        for workflow_id in workflow_ids:
            try:
                await client.get_workflow_handle(workflow_id).terminate(reason="test teardown: no worker")
            except RPCError:
                pass

    temporal_call(stop)


def started_input(workflow_id: str) -> LiveWorldInput:
    """The input Temporal holds for a live world's workflow (its first history event)."""

    async def read(client):
        handle = client.get_workflow_handle(workflow_id)
        async for event in handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [inp] = await client.data_converter.decode(payloads, [LiveWorldInput])
            return inp

    return temporal_call(read)


@pytest.fixture
def editor() -> User:
    grant_staff_groups(Group, Permission)
    user = User.objects.create_user("editor-live-services", is_staff=True)
    user.groups.add(Group.objects.get(name="Editors"))
    return user


def published(*, characters: int = 2, profiled: int | None = None, **world) -> GenerationRun:
    """A completed, published run with its bible and cast in Mongo, ``profiled`` of them with a profile."""
    run = make_run(make_world(character_count=characters, posts_per_character=1, **world), "completed")
    db = mongo.get_db()
    store.delete_world_content(db, run.world_id)
    store.save_bible(db, run.ref, {"title": "Lanternfall"}, 0, None)
    cast = [{"name": f"C{i}", "handle": f"c{i}", "concept": "a lamplighter"} for i in range(characters)]
    store.save_cast(db, run.ref, cast)
    for index in range(characters if profiled is None else profiled):
        store.save_profile(db, run.ref, index, {"bio": f"C{index} lights lamps."})
    run.world_snapshot = dataclasses.asdict(services.world_snapshot(run.world))
    run.save()
    World.objects.filter(pk=run.world_id).update(live_run=run)
    return run


def test_going_live_refuses_a_run_without_its_whole_cast_and_budgets_past_their_caps(temporal_env, mongo_env, editor):
    """Findings 1 and 3: a daily budget had no maximum (2,000,000,000 was taken, 202), and a run with a bible
    but no cast went live and retried its first day for ever."""
    run = published(characters=3, profiled=0)
    url = f"/api/worlds/{run.world_id}/live/"
    client = api(editor)
    body = {"day_seconds": 60, "posts_per_day": 2, "comments_per_day": 1, "daily_token_budget": 20_000}
    response = client.post(url, body, format="json")
    assert response.status_code == 400, response.content
    assert "has 0 of its 3 characters with a profile; resume the run" in response.json()["detail"]
    assert not LiveWorld.objects.exists()

    for index in range(3):
        store.save_profile(mongo.get_db(), run.ref, index, {"bio": "Lamps."})
    response = client.post(url, {**body, "daily_token_budget": 2_000_000_000}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "daily_token_budget": ["A live world's daily token budget may be at most 200000 (LIVE_MAX_DAILY_TOKEN_BUDGET)."]
    }
    response = client.post(url, {**body, "token_budget": 10_000_000}, format="json")
    assert response.json() == {
        "token_budget": ["The token budget may be at most 5000000 (GENERATION_MAX_TOKEN_BUDGET)."]
    }
    assert not LiveWorld.objects.exists()  # nothing was started

    response = client.post(url, body, format="json")
    assert response.status_code == 202, response.content
    live = response.json()
    try:
        assert (live["token_budget"], live["daily_token_budget"], live["first_day"]) == (500_000, 20_000, 0)
        inp = started_input(live["workflow_id"])
        assert (inp.settings.token_budget, inp.settings.daily_token_budget) == (500_000, 20_000)
        reply = client.post(f"{url}budget/", {"token_budget": 6_000_000}, format="json")
        assert reply.status_code == 400 and "at most 5000000" in str(reply.json())
    finally:
        terminate(live["workflow_id"])


def test_a_world_goes_live_again_from_its_last_day_and_shows_every_time_it_was_live(temporal_env, mongo_env, editor):
    """Finding 2: a second time live started at day 1 again, overwrote the first days' reports with 0 tokens
    and made nothing on them. It goes on from the last day and post slot now; times live from before post
    slots were kept count theirs as days × posts a day."""
    run = published(characters=3)
    fields = {"world_id": run.world_id, "run": run, "day_seconds": 60, "comments_per_day": 1, "status": "stopped"}
    LiveWorld.objects.create(number=1, days=3, posts_per_day=2, daily_token_budget=5000, tokens_used=900, **fields)
    LiveWorld.objects.create(number=2, days=2, posts_per_day=3, daily_token_budget=5000, tokens_used=400, **fields)
    live = services.world_go_live(world=run.world, day_seconds=60, posts_per_day=2, user=editor)
    try:
        assert (live.number, live.first_day, live.days, live.next_slot) == (3, 3, 3, 6)
        inp = started_input(live.workflow_id)
        assert (inp.state.days, inp.state.next_slot, inp.live_id) == (3, 6, live.pk)
        detail = api(editor).get(f"/api/worlds/{run.world_id}/live/").json()
        assert [life["number"] for life in detail["lives"]] == [3, 2, 1]
        assert detail["tokens_used_all_lives"] == 1300 and detail["first_day"] == 3
        audit = AuditEvent.objects.filter(action="world_live").get()
        assert audit.detail.endswith("20000 tokens a day, 500000 in all, from day 4")
    finally:
        terminate(live.workflow_id)


def test_a_days_report_keeps_what_it_spent_and_a_failed_day_counts_on_the_row(mongo_env):
    """Finding 1: the row and the day's record show every token billed, a day that failed included: a day's
    report is written from its ledger, keyed by its time live, and a day begun but not finished counts on the
    row with what its ledger holds."""
    run = published()
    live = LiveWorld.objects.create(
        world_id=run.world_id, run=run, number=1, day_seconds=60, posts_per_day=1, comments_per_day=0,
        daily_token_budget=5000, status="live",
    )  # fmt: skip
    db = mongo.get_db()
    ledger = documents.live_day_key(run.ref, live.pk, 2)
    store.reserve_tokens(db, run.ref, 5000, "event:2", 300, ledger)
    store.settle_tokens(db, run.ref, "event:2", 120, ledger)  # what the provider billed before day 2 failed
    state = LiveState(status="paused", days=1, tokens=700, started_day=2, error="Incorrect API key provided")
    day = DayReport(2, scheduled_at=100.0, started_at=101.0, live_id=live.pk, ledger=ledger, failed=state.error)
    services.live_report_record(report=LiveReport(live.pk, state, day, state.error))
    live.refresh_from_db()
    assert (live.status, live.tokens_used, live.error) == ("paused", 820, "Incorrect API key provided")
    report = db.live_days.find_one({"_id": ledger})
    assert (report["tokens"], report["failed"], report["live_number"]) == (120, state.error, 1)
    [timeline_day] = selectors.live_timeline(live=live)
    assert (timeline_day["day"], timeline_day["tokens"], timeline_day["failed"]) == (2, 120, state.error)


def test_a_live_days_missing_images_can_be_rendered_again(temporal_env, mongo_env, editor):
    """Finding 6: a live day marked its posts' images for a re-render but did not count them, so
    ``/rerender/`` answered 409 and they could never be rendered."""
    run = published()
    live = LiveWorld.objects.create(
        world_id=run.world_id, run=run, number=1, day_seconds=60, posts_per_day=1, comments_per_day=0,
        daily_token_budget=5000, status="live",
    )  # fmt: skip
    db = mongo.get_db()
    store.save_post(db, run.ref, 0, 1, {"caption": "Day one.", "day": 1, "slot": 0}, "c0")
    store.mark_image_for_rerender(db, run.ref, 0, 1)
    report = DayReport(1, scheduled_at=1.0, started_at=1.0, live_id=live.pk)
    services.live_report_record(report=LiveReport(live.pk, LiveState(days=1), report))
    run.refresh_from_db()
    assert run.degraded_items == 1
    response = api(editor).post(f"/api/runs/{run.pk}/rerender/")
    try:
        assert response.status_code == 202, response.content
    finally:
        terminate(f"{run.workflow_id}-rerender")


def test_a_go_live_whose_answer_is_lost_is_not_started_twice(stack_env, settings, monkeypatch, editor):
    """Finding 18: a live world whose start was not confirmed was marked failed at once when Temporal did
    not list it, so a second click started a second live workflow writing the same keys. Now the row waits
    for Temporal (describe now, the reconciler later, a grace of RECONCILE_START_GRACE_SECONDS)."""
    run = published()
    proxy = SlowReplyProxy(stack_env["TEMPORAL_ADDRESS"])
    use_temporal_at(proxy.address, settings, monkeypatch)
    try:
        temporal_call(lambda client: client.service_client.check_health())  # connect while answers are prompt
        proxy.reply_delay, settings.TEMPORAL_CALL_TIMEOUT_SECONDS = 3.0, 1.0
        with pytest.raises(services.ActionUnavailable, match="did not confirm that Lanternfall went live"):
            services.world_go_live(world=run.world, day_seconds=60, user=editor)
        live = LiveWorld.objects.get()
        assert live.status == "starting"
        proxy.reply_delay = 0.0
        time.sleep(3)  # the late answers drain
    finally:
        proxy.close()
        use_temporal_at(stack_env["TEMPORAL_ADDRESS"], settings, monkeypatch)
    # Were Temporal not to list it yet (MISSING), the row would stay within the grace, and a second start be
    # refused with the reason.
    assert services.live_settle(live=live, status="MISSING") is None
    with monkeypatch.context() as patched:
        patched.setattr(services, "_workflow_status", lambda workflow_id, what: "MISSING")
        with pytest.raises(services.ActionError, match="Temporal has not confirmed the start of"):
            services.world_go_live(world=run.world, day_seconds=60, user=editor)
    # Asked for real, Temporal has it: a second start is refused, and the row is live.
    with pytest.raises(services.ActionError, match="is already live; stop it first"):
        services.world_go_live(world=run.world, day_seconds=60, user=editor)
    live.refresh_from_db()
    assert live.status == "live" and LiveWorld.objects.count() == 1
    LiveWorld.objects.filter(pk=live.pk).update(status="starting", started_at=timezone.now() - timedelta(hours=1))
    live.refresh_from_db()
    assert services.live_settle(live=live, status="MISSING") == f"{live}: its workflow never started"
    terminate(live.workflow_id)


def test_a_regeneration_shown_running_waits_out_the_start_grace(mongo_env, monkeypatch):
    """Finding 18, regenerations: one Temporal does not have is taken as never started only past the grace,
    so a second click cannot start a second regeneration of the same item while the first may be landing."""
    run = published()
    store.save_post(mongo.get_db(), run.ref, 0, 0, {"caption": "A lamp."}, "c0")
    regeneration = Regeneration.objects.create(run=run, character_index=0, post_index=0)
    assert services.regeneration_settle(regeneration=regeneration, status="MISSING") is None
    assert Regeneration.objects.get().status == "running"
    monkeypatch.setattr(services, "_workflow_status", lambda workflow_id, what: "MISSING")  # Temporal: no such
    with pytest.raises(services.ActionError, match="post 0.0 of .* is already being regenerated"):
        services.item_regenerate(run=run, character_index=0, post_index=0)
    Regeneration.objects.update(started_at=timezone.now() - timedelta(hours=1))
    regeneration.refresh_from_db()
    assert services.regeneration_settle(regeneration=regeneration, status="MISSING").endswith("is MISSING")
    assert Regeneration.objects.get().status == "failed"


def test_a_deletion_whose_answer_is_lost_hides_the_world_until_its_cleanup_is_confirmed(
    stack_env, settings, monkeypatch, world_cleanups
):
    """Finding 19: when the cleanup's start got no answer, the world was kept (503) while its cleanup could
    run anyway and empty it. Now the world is hidden and takes no commands until Temporal confirms the cleanup;
    then its rows go too, and the audit keeps its name."""
    run = published()
    world = run.world
    cleanup_id = cleanup_workflow_id(world.pk)
    assert Client().get(f"/worlds/{world.pk}/").status_code == 200
    proxy = SlowReplyProxy(stack_env["TEMPORAL_ADDRESS"])
    use_temporal_at(proxy.address, settings, monkeypatch)
    try:
        temporal_call(lambda client: client.service_client.check_health())
        proxy.reply_delay, settings.TEMPORAL_CALL_TIMEOUT_SECONDS = 3.0, 1.0
        with pytest.raises(services.ActionUnavailable, match="did not confirm the cleanup of Lanternfall"):
            services.world_delete(world=world)
    finally:
        proxy.close()
        use_temporal_at(stack_env["TEMPORAL_ADDRESS"], settings, monkeypatch)
    world.refresh_from_db()
    assert world.deleting_since is not None
    assert Client().get(f"/worlds/{world.pk}/").status_code == 404  # hidden from viewers at once
    with pytest.raises(services.ActionError, match="the world is being deleted"):
        services.generation_start(world=world)
    time.sleep(3)  # the late answer drains; the cleanup's start had reached Temporal

    async def round_(client):
        return await reconciler._finish_deletions(client)

    assert temporal_call(round_) == [f"{world}: deleted ({cleanup_id})"]
    assert not World.objects.filter(pk=world.pk).exists()
    details = list(
        AuditEvent.objects.filter(action="world_deleted", world_pk=world.pk).values_list("detail", flat=True)
    )
    assert any("not confirmed" in detail for detail in details) and any(cleanup_id in d for d in details)
    assert all(detail.startswith("Lanternfall") for detail in details)
