"""The ``live_day`` activity against the real Mongo-wire server, the local LLM endpoint and the media server,
run in Temporal's ActivityEnvironment: a whole day is made once; a day cut by an outage is retried and
makes only what it lacked; a failed item is left out; the daily budget cuts a day short; a media outage
keeps the post for a re-render."""

import asyncio
import dataclasses
import uuid
from collections import Counter

import grpc
import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from clients import mongo
from generation import documents, store
from generation.activities import MediaActivities
from generation.contracts import RunRef
from generation.living.activities import LivingActivities
from generation.living.contracts import DayInput, LiveSettings, LiveState, LiveWorldInput
from generation.living.workflows import day_plan
from generation.llm import LlmClient
from generation.media import MediaClient, channel_options
from localllm import MODEL_ID
from tests.test_cancel_points import run_input
from tests.test_generation import llm_control

pytestmark = pytest.mark.timeout(120)

CAST = 3
POSTS, COMMENTS = 2, 1  # day 1: 1 event, posts by C0 and C1, a comment and its reply, the actors' memories


def seeded_day(budget: int = 20_000, day: int = 1) -> DayInput:
    """A published run of a 3-character world in Mongo (bible and cast), and the DayInput of its ``day``."""
    world_id = 7000 + uuid.uuid4().int % 1000
    run = RunRef(run_id=world_id, world_id=world_id, number=1, workflow_id=f"world-{world_id}-run-1")
    db = mongo.get_db()
    store.delete_world_content(db, world_id)
    store.save_bible(db, run, {"title": "Lanternfall", "setting": "Tea houses drift on warm winds."}, 0, None)
    store.save_cast(db, run, [{"name": f"C{i}", "handle": f"c{i}", "concept": "a tea pilot"} for i in range(CAST)])
    base = run_input("live-day", characters=CAST, posts=0).world
    world = dataclasses.replace(base, world_id=world_id, model=MODEL_ID)
    return DayInput(run, world, day, budget)


def plan_of(day: DayInput):
    settings = LiveSettings(day_seconds=60, posts_per_day=POSTS, comments_per_day=COMMENTS)
    return day_plan(LiveWorldInput(1, day.run, day.world, run_input("x").config, settings), day, LiveState(next_slot=0))


def actors(day: DayInput) -> int:
    """The characters who post or comment on the day (the commenter is drawn from the day's seed)."""
    plan = plan_of(day)
    return len({p.character_index for p in plan.posts} | {c.character_index for c in plan.comments})


def calls(day: DayInput) -> int:
    """The day's LLM calls: its event, posts, comments and replies, and each actor's memory."""
    return 1 + POSTS + 2 * COMMENTS + actors(day)


def live(day: DayInput, llm_server: str, media_target: str, attempts: int = 1):
    """Run ``live_day`` as its activity attempts 1..``attempts`` would; returns (DayMade or the last error)."""

    async def go():
        async with (
            httpx.AsyncClient(base_url=llm_server, timeout=30) as http,
            grpc.aio.insecure_channel(media_target, options=channel_options()) as channel,
        ):
            db = mongo.get_db()
            activities = LivingActivities(
                LlmClient(http, default_model=MODEL_ID), db, MediaActivities(MediaClient(channel), db)
            )
            outcome = None
            for attempt in range(1, attempts + 1):
                environment = ActivityEnvironment()
                environment.info = dataclasses.replace(environment.info, attempt=attempt)
                try:
                    return await environment.run(activities.live_day, plan_of(day))
                except ApplicationError as err:
                    outcome = err
            return outcome

    return asyncio.run(go())


def made(day: DayInput) -> dict:
    db, key = mongo.get_db(), day.run.key
    return {
        "events": db.world_events.count_documents({"run_key": key, "day": day.day}),
        "posts": db.posts.count_documents({"run_key": key, "day": day.day}),
        "comments": db.comments.count_documents({"run_key": key, "day": day.day}),
        "memories": db.characters.count_documents({"run_key": key, "memory_day": day.day}),
        "rendered": db.posts.count_documents({"run_key": key, "day": day.day, "image_status": "rendered"}),
    }


def chat_requests(llm_server: str) -> int:
    return httpx.get(llm_server.removesuffix("/v1") + "/_stats", timeout=5).json()["chat_requests"]


@pytest.fixture
def llm(llm_server):
    llm_control(llm_server, {"reset": True})
    yield llm_server
    llm_control(llm_server, {"reset": True})


def test_a_day_is_made_whole_once_and_a_second_run_of_it_makes_nothing(mongo_env, media_env, llm):
    day = seeded_day()
    result = live(day, llm, media_env["MEDIA_GRPC_TARGET"])
    whole = {"events": 1, "posts": POSTS, "comments": 2 * COMMENTS, "memories": actors(day), "rendered": POSTS}
    assert made(day) == whole
    assert result.tokens > 0 and not result.budget_reached
    assert chat_requests(llm) == calls(day)
    ledger = mongo.get_db().token_ledgers.find_one({"_id": documents.day_key(day.run, 1)})
    assert ledger["used"] == result.tokens and not ledger["reserved"]
    assert all(p["liked_by"] for p in mongo.get_db().posts.find({"run_key": day.run.key, "day": 1}))

    again = live(day, llm, media_env["MEDIA_GRPC_TARGET"])  # a retry after the day was stored whole
    # It makes and bills nothing more, and says what the day spent in all (its ledger).
    assert (again.tokens, made(day), chat_requests(llm)) == (result.tokens, whole, calls(day))


def test_a_day_cut_by_an_outage_is_retried_and_makes_only_what_it_lacked(mongo_env, media_env, llm):
    day = seeded_day()
    # The event and both posts are written; then the provider is down for the comment (attempt 1 fails).
    llm_control(llm, {"queue": [{}, {}, {}, {"status": 503, "message": "upstream down"}]})
    result = live(day, llm, media_env["MEDIA_GRPC_TARGET"], attempts=2)
    assert made(day) == {"events": 1, "posts": POSTS, "comments": 2, "memories": actors(day), "rendered": POSTS}
    assert chat_requests(llm) == calls(day) + 1  # every item, and the one call the outage refused
    tasks = mongo.get_db().generation_tasks.find({"run_key": day.run.key})
    attempts = {(t["stage"], t["index"]): [a["status"] for a in t["attempts"]] for t in tasks if "attempts" in t}
    assert attempts.pop(("comment", "1.0")) == [
        "retrying",
        "succeeded",
    ]  # the comment: refused, then written on the retry
    others = calls(day) - 1  # each other item: made once, on the first attempt
    assert list(attempts.values()) == [["succeeded"]] * others
    # What the day spent counts both attempts (before, only the last one's): every token billed, as the ledger.
    tasks = mongo.get_db().generation_tasks.find({"run_key": day.run.key})
    billed = Counter()  # by activity attempt
    for attempt in (a for task in tasks for a in task.get("attempts", [])):
        billed[attempt["attempt"]] += attempt["billed_tokens"]
    ledger = mongo.get_db().token_ledgers.find_one({"_id": documents.day_key(day.run, 1)})
    assert billed[1] > 0 and billed[2] > 0  # the event and both posts on attempt 1, the rest on attempt 2
    assert result.tokens == ledger["used"] == billed[1] + billed[2]


def test_an_item_that_stays_invalid_is_left_out_and_the_day_goes_on(mongo_env, media_env, llm):
    day = seeded_day()
    # event, post 0, post 1, then the comment's call and its 3 repairs all invalid.
    llm_control(llm, {"queue": [{}, {}, {}] + [{"invalid_json": True}] * 4})
    result = live(day, llm, media_env["MEDIA_GRPC_TARGET"])
    # No comment, so no reply (nothing to answer); the memories of the posters only.
    assert made(day) == {"events": 1, "posts": POSTS, "comments": 0, "memories": actors(day), "rendered": POSTS}
    assert not result.budget_reached


def test_the_daily_budget_cuts_the_day_short(mongo_env, media_env, llm):
    day = seeded_day(budget=1_500)  # room for the event and a post or so, not for the whole day
    result = live(day, llm, media_env["MEDIA_GRPC_TARGET"])
    assert result.budget_reached
    ledger = mongo.get_db().token_ledgers.find_one({"_id": documents.day_key(day.run, 1)})
    assert ledger["used"] == result.tokens <= 1_500 and not ledger["reserved"]
    assert made(day)["events"] == 1 and made(day)["memories"] < actors(day)


def test_a_media_outage_keeps_the_post_for_a_re_render(mongo_env, llm):
    day = seeded_day()
    result = live(day, llm, f"127.0.0.1:{_closed_port()}")  # nothing listens there
    assert made(day) == {"events": 1, "posts": POSTS, "comments": 2, "memories": actors(day), "rendered": 0}
    statuses = [p["image_status"] for p in mongo.get_db().posts.find({"run_key": day.run.key, "day": 1})]
    assert statuses == [documents.ImageStatus.NEEDS_RENDER] * POSTS
    assert result.tokens > 0


def _closed_port() -> int:
    from localstack import servers

    return servers.free_port()


def test_a_day_about_an_injected_event_makes_its_ledger_from_two_posts_at_once(mongo_env, media_env, llm):
    """Found while testing issue 22: with an injected event a day makes no LLM call before its posts, so both
    posts make the day's ledger at once; the losing upsert got no document back from the Mongo-wire server
    (KeyError 'reserved'), which the day took for missing content and paused the world."""
    for _ in range(5):  # the race does not come every time
        day = dataclasses.replace(seeded_day(), injected=["A comet splits the sky."])
        result = live(day, llm, media_env["MEDIA_GRPC_TARGET"])
        assert not isinstance(result, ApplicationError), result
        assert made(day)["posts"] == POSTS and result.tokens > 0


def test_two_calls_making_a_ledger_at_once_both_get_it(mongo_env):
    from concurrent.futures import ThreadPoolExecutor

    day = seeded_day()
    db = mongo.get_db()
    for attempt in range(50):
        ledger = f"{day.run.key}-race-{attempt}"
        with ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(store.reserve_tokens, db, day.run, 10_000, f"c{n}", 100, ledger) for n in range(2)]
            assert [call.result()[0] for call in calls] == [True, True]
        assert db.token_ledgers.find_one({"_id": ledger})["reserved"] == {"c0": 100, "c1": 100}
