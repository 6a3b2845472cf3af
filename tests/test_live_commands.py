"""A live world does exactly what staff ask, at every point of its day: in process, on the time-skipping test
server, the real ``LiveWorldWorkflow`` with a stand-in ``live_day`` (registered under its real name) that
keeps each day's event as the real one does, bills what it is told, and can hold a day, fail it for good or
fail it after its event was stored. Issue 22, findings 1, 2 and 4."""

import asyncio
import uuid
from collections import Counter
from contextlib import asynccontextmanager

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from generation.contracts import RunRef
from generation.living import workflows as living
from generation.living.contracts import (
    DayInput,
    DayMade,
    DayPlan,
    LiveReport,
    LiveSettings,
    LiveState,
    LiveStatus,
    LiveWorldInput,
)
from generation.living.workflows import LiveWorldWorkflow, day_plan, plan_lived
from tests.test_cancel_points import run_input

pytestmark = [pytest.mark.fast, pytest.mark.timeout(90)]

DAY = 24 * 3600.0


class Days:
    """``live_day`` and ``record_live_state`` under their real names. ``script[day]``: "hold" (until
    ``release``), "fail" (for good), "fail_after_event" (its event is stored first, as a provider refusing
    its first post would leave it), or tokens the day bills (default 100)."""

    def __init__(self) -> None:
        self.script: dict[int, object] = {}
        self.plans: list[DayPlan] = []
        self.events: dict[int, str] = {}  # day: what it is about ("llm", or the injected text)
        self.reports: list[LiveReport] = []
        self.held = asyncio.Event()
        self.release: asyncio.Future | None = None

    @activity.defn(name="live_day")
    async def live_day(self, plan: DayPlan) -> DayMade:
        day = plan.day
        self.plans.append(plan)
        if day.day not in self.events:  # as ``write_event``: a day keeps the event it has
            self.events[day.day] = " ".join(day.injected) or "llm"
        step = self.script.get(day.day, 100)
        if step == "hold":
            self.release = asyncio.get_running_loop().create_future()
            self.held.set()
            while not self.release.done():
                activity.heartbeat()
                await asyncio.sleep(0.02)
            step = self.release.result()
            self.held.clear()
        if step in ("fail", "fail_after_event"):
            self.script[day.day] = 100  # lived again, it goes through
            raise ApplicationError("Incorrect API key provided", type="LlmFatal", non_retryable=True)
        tokens = int(step)  # type: ignore[call-overload]
        return DayMade(tokens=min(tokens, day.daily_token_budget), budget_reached=tokens >= day.daily_token_budget)

    @activity.defn(name="record_live_state")
    async def record_live_state(self, report: LiveReport) -> None:
        self.reports.append(report)

    def days(self) -> list[int]:
        return [plan.day.day for plan in self.plans]


def live_input(settings: LiveSettings, state: LiveState | None = None, *, characters: int = 3) -> LiveWorldInput:
    base = run_input(f"live-{uuid.uuid4().hex[:8]}", characters=characters, posts=2)
    run = RunRef(1, 1, 1, f"{base.run.workflow_id}-live")
    return LiveWorldInput(7, run, base.world, base.config, settings, state or LiveState())


@asynccontextmanager
async def living_world(environment, days: Days, inp: LiveWorldInput, *, unsandboxed: bool = False):
    queues = (inp.config.workflows_queue, inp.config.llm_queue)
    options = {"workflow_runner": UnsandboxedWorkflowRunner()} if unsandboxed else {}
    workers = [
        Worker(
            environment.client,
            task_queue=queue,
            activities=[days.live_day, days.record_live_state],
            workflows=[LiveWorldWorkflow] if queue == inp.config.workflows_queue else [],
            **(options if queue == inp.config.workflows_queue else {}),
        )
        for queue in queues
    ]
    async with workers[0], workers[1]:
        yield await environment.client.start_workflow(
            LiveWorldWorkflow.run, inp, id=inp.run.workflow_id, task_queue=inp.config.workflows_queue
        )


async def state_after(environment, handle, seconds: float) -> LiveState:
    await environment.sleep(seconds)
    return await handle.query(LiveWorldWorkflow.state)


async def refused(handle, update, *args) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update(update, *args)
    return failure.value.cause.message


def test_the_time_lives_budget_caps_its_spend_pauses_it_with_the_reason_and_a_raise_lets_it_resume(env):
    """Finding 1: a time live's whole spend is capped. Each day may spend its daily budget or what is left of
    the whole, whichever is less; past the whole, the world pauses and says why, refuses to resume, and goes on
    once staff raise the budget."""
    loop, environment = env
    days = Days()
    inp = live_input(LiveSettings(day_seconds=DAY, daily_token_budget=400, token_budget=1000))
    days.script = {day: 400 for day in range(1, 6)}  # each day would spend its whole daily budget

    async def live() -> None:
        async with living_world(environment, days, inp) as handle:
            state = await state_after(environment, handle, 2.5 * DAY)  # days 1, 2 and 3 (cut short at 200)
            assert (state.status, state.days, state.tokens) == (LiveStatus.PAUSED, 3, 1000)
            assert state.error == "its token budget of 1000 is spent (1000 used)"
            assert [p.day.daily_token_budget for p in days.plans] == [400, 400, 200]
            assert days.reports[-1].error == state.error
            reason = await refused(handle, LiveWorldWorkflow.resume)
            assert reason == "its token budget of 1000 is spent (1000 used): raise it first"
            assert await refused(handle, LiveWorldWorkflow.set_token_budget, 900) == (
                "it has spent 1000 tokens already: give it more than that"
            )
            assert (await state_after(environment, handle, 3 * DAY)).days == 3  # paused: no day
            await handle.execute_update(LiveWorldWorkflow.set_token_budget, 1500)
            await handle.execute_update(LiveWorldWorkflow.resume)
            state = await state_after(environment, handle, 1.5 * DAY)  # day 4 at once, day 5 cut, then paused
            assert (state.status, state.days, state.tokens, state.skipped_days) == (LiveStatus.PAUSED, 5, 1500, 0)
            assert [p.day.daily_token_budget for p in days.plans][3:] == [400, 100]

    loop.run(live())


def test_a_stop_sent_while_a_day_fails_for_good_stands(env):
    """Finding 4: a day that fails for good used to set *paused* over a *stop* staff sent during that day,
    and the world then waited, paused, for ever."""
    loop, environment = env
    days = Days()
    days.script = {1: "hold"}
    inp = live_input(LiveSettings(day_seconds=DAY))

    async def live() -> LiveState:
        async with living_world(environment, days, inp) as handle:
            await asyncio.wait_for(days.held.wait(), 10)
            await handle.execute_update(LiveWorldWorkflow.stop)
            days.release.set_result("fail")
            return await handle.result()

    state = loop.run(live())
    assert state.status == LiveStatus.STOPPED and "Incorrect API key provided" in state.error
    assert state.days == 0 and days.days() == [1]


def test_an_event_injected_during_a_day_is_answered_with_the_day_it_is_used_on(env):
    """Finding 4: ``inject_event`` answered with the day in progress, whose event was already fixed."""
    loop, environment = env
    days = Days()
    days.script = {1: "hold"}
    inp = live_input(LiveSettings(day_seconds=DAY))

    async def live() -> None:
        async with living_world(environment, days, inp) as handle:
            await asyncio.wait_for(days.held.wait(), 10)
            assert await handle.execute_update(LiveWorldWorkflow.inject_event, "A comet splits the sky.") == 2
            days.release.set_result(100)
            await state_after(environment, handle, 1.5 * DAY)
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(live())
    assert days.events == {1: "llm", 2: "A comet splits the sky."}


def test_an_event_injected_while_a_failed_day_waits_is_kept_for_the_next_day(env):
    """Finding 4: an event injected while the world was paused by a failed day was taken by that day when it
    was lived again, although the day had its event already, and was lost."""
    loop, environment = env
    days = Days()
    days.script = {2: "fail_after_event"}
    inp = live_input(LiveSettings(day_seconds=DAY))

    async def live() -> None:
        async with living_world(environment, days, inp) as handle:
            state = await state_after(environment, handle, 1.5 * DAY)  # day 2 fails for good: paused
            assert (state.status, state.days, state.started_day) == (LiveStatus.PAUSED, 1, 2)
            assert await handle.execute_update(LiveWorldWorkflow.inject_event, "The tide forgets to turn.") == 3
            await handle.execute_update(LiveWorldWorkflow.resume)
            state = await state_after(environment, handle, 1.5 * DAY)  # day 2 lived again, then day 3
            assert state.days == 3
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(live())
    assert days.days() == [1, 2, 2, 3]
    assert [plan.day.injected for plan in days.plans] == [[], [], [], ["The tide forgets to turn."]]
    assert days.events == {1: "llm", 2: "llm", 3: "The tide forgets to turn."}


def test_the_pause_reason_survives_continue_as_new(env, monkeypatch):
    """Finding 4: the reason a world paused lived in the workflow object, not its state, and was lost when
    it continued as new. Here it continues as new after every day (unsandboxed, so the limit can be set)."""
    loop, environment = env
    monkeypatch.setattr(living, "HISTORY_LIMIT", 5)
    days = Days()
    days.script = {2: "fail"}
    inp = live_input(LiveSettings(day_seconds=DAY))

    async def live() -> None:
        async with living_world(environment, days, inp, unsandboxed=True) as handle:
            state = await state_after(environment, handle, 1.5 * DAY)
            assert state.status == LiveStatus.PAUSED
            description = await environment.client.get_workflow_handle(inp.run.workflow_id).describe()
            first = await environment.client.get_workflow_handle(
                inp.run.workflow_id, run_id=handle.first_execution_run_id
            ).describe()
            assert description.run_id != first.run_id  # it continued as new since the day failed
            assert "Incorrect API key provided" in state.error
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(live())
    assert "Incorrect API key provided" in days.reports[-1].error  # the last report still says why


def test_a_cadence_changed_during_a_day_counts_from_that_day(env):
    """Finding 4: the cadence taken at the start of a day overwrote one changed during it."""
    loop, environment = env
    days = Days()
    days.script = {1: "hold"}
    inp = live_input(LiveSettings(day_seconds=DAY))

    async def live() -> None:
        async with living_world(environment, days, inp) as handle:
            await asyncio.wait_for(days.held.wait(), 10)
            await handle.execute_update(LiveWorldWorkflow.set_cadence, 2 * DAY)
            days.release.set_result(100)
            await asyncio.sleep(0.5)
            state = await handle.query(LiveWorldWorkflow.state)
            assert state.next_day_at == state.last_day_at + 2 * DAY
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(live())


def test_paused_time_and_a_shorter_cadence_are_not_skipped_days_and_a_failed_day_counts_them_once(env):
    """Finding 4: days while paused and the days a shortened cadence put behind counted as skipped (days
    missed while no worker ran), and a failed day counted its skipped days again when it was lived again."""
    loop, environment = env
    days = Days()
    inp = live_input(LiveSettings(day_seconds=DAY))

    async def live() -> None:
        async with living_world(environment, days, inp) as handle:
            await state_after(environment, handle, 0.5 * DAY)  # day 1
            await handle.execute_update(LiveWorldWorkflow.pause)
            await environment.sleep(10 * DAY)
            await handle.execute_update(LiveWorldWorkflow.resume)
            state = await state_after(environment, handle, 0.5 * DAY)  # day 2 at once
            assert (state.days, state.skipped_days) == (2, 0)
            await environment.sleep(0.25 * DAY)
            await handle.execute_update(LiveWorldWorkflow.set_cadence, 60.0)  # a day a minute: due at once
            state = await state_after(environment, handle, 30)
            assert (state.days, state.skipped_days) == (3, 0)
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(live())

    # A day that starts late and fails for good counts its skipped days once. The world's state is as a
    # workflow finds it when its worker comes back after 3.5 days away (the time-skipping server does not move
    # its clock past a workflow task no worker takes, so the downtime is in the state it starts with).
    days = Days()
    days.script = {2: "fail"}

    async def late_day() -> None:
        now = (await environment.get_current_time()).timestamp()
        away = LiveState(days=1, last_day_at=now - 4.5 * DAY, next_day_at=now - 3.5 * DAY, next_slot=3)
        inp = live_input(LiveSettings(day_seconds=DAY), away)
        async with living_world(environment, days, inp) as handle:
            state = await state_after(environment, handle, 60)
            assert (state.status, state.days, state.skipped_days) == (LiveStatus.PAUSED, 1, 3)
            await handle.execute_update(LiveWorldWorkflow.resume)
            state = await state_after(environment, handle, 60)
            assert (state.days, state.skipped_days) == (2, 3)  # not 6
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(late_day())
    assert days.days() == [2, 2]


def test_catch_up_never_starts_a_day_after_the_end(env):
    """Finding 4: back after days without a worker, the world lived a day in the latest slot, past its end
    (the state is as the workflow finds it then, as above)."""
    loop, environment = env
    days = Days()

    async def live() -> LiveState:
        now = (await environment.get_current_time()).timestamp()
        away = LiveState(days=1, last_day_at=now - 4 * DAY, next_day_at=now - 3 * DAY, next_slot=3)
        inp = live_input(LiveSettings(day_seconds=DAY, ends_at=now - 0.5 * DAY), away)
        async with living_world(environment, days, inp) as handle:
            return await handle.result()

    state = loop.run(live())
    assert state.status == LiveStatus.ENDED and days.days() == []


def test_a_world_live_again_goes_on_from_its_last_day_and_uses_an_event_injected_then(env):
    """Finding 2: the state a second time live starts with (``worlds.services.world_go_live`` hands it the
    story so far) makes it go on from day 3 with the rotation's next slots, and an event injected once it
    is live again is used (before, its days began at 1 again, whose events were stored: the event was lost)."""
    loop, environment = env
    days = Days()
    days.events = {1: "llm", 2: "llm"}  # what the first time live stored
    days.script = {3: "hold"}
    inp = live_input(LiveSettings(day_seconds=DAY, posts_per_day=3), LiveState(days=2, next_slot=6))

    async def live() -> None:
        async with living_world(environment, days, inp) as handle:
            await asyncio.wait_for(days.held.wait(), 10)
            assert await handle.execute_update(LiveWorldWorkflow.inject_event, "Lanterns rise at noon.") == 4
            days.release.set_result(100)
            await state_after(environment, handle, 1.5 * DAY)
            await handle.execute_update(LiveWorldWorkflow.stop)

    loop.run(live())
    assert days.days() == [3, 4]
    posts = [post.post_index for plan in days.plans for post in plan.posts]
    assert posts == [2 + 6, 2 + 7, 2 + 8, 2 + 9, 2 + 10, 2 + 11]  # the world's posts go on after slot 5
    assert days.events[4] == "Lanterns rise at noon."
    assert [r.day.day for r in days.reports if r.day] == [3, 4]
    assert all(r.day.ledger.endswith(f"-l7-d{r.day.day}") for r in days.reports if r.day)


def test_over_a_year_every_character_posts_comments_and_is_commented_on():
    """Finding 5: with as many posts a day as characters, the same characters always commented and were
    commented on (cast 3, 3 posts and 2 comments a day: character 2 never commented nor was commented on in
    365 days). The plan of each day as the workflow makes it, its slots going on from day to day. Stated
    spread: every character's count of each is within one of every other's."""
    inp = live_input(LiveSettings(day_seconds=DAY, posts_per_day=3, comments_per_day=2))
    posted, commented, commented_on = Counter(), Counter(), Counter()
    state = LiveState(next_slot=0)
    for number in range(1, 366):
        plan = day_plan(inp, DayInput(inp.run, inp.world, number, 20_000), state)
        plan_lived(state, plan, inp.world.character_count)
        posted.update(post.character_index for post in plan.posts)
        for comment in plan.comments:
            if comment.reply_to is None:
                assert comment.character_index != comment.post_character
                commented[comment.character_index] += 1
                commented_on[comment.post_character] += 1
    print("posts", dict(posted), "comments", dict(commented), "commented on", dict(commented_on))
    assert posted == Counter({0: 365, 1: 365, 2: 365})
    for counts in (commented, commented_on):
        assert sorted(counts) == [0, 1, 2] and sum(counts.values()) == 730
        assert max(counts.values()) - min(counts.values()) <= 1, counts
