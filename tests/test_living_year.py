"""A live world lives a whole year, in process on the time-skipping test server: the real workflow and the
real ``live_day`` activity, whose steps are stand-ins that build the real prompts from what they keep in
memory. It makes exactly the expected posts, comments and events, every execution's history stays under
2,000 events (it continues as new), and prompts are as long on day 365 as on day 2."""

import os
import uuid
from collections import Counter, defaultdict

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from generation.contracts import ItemInput, RunRef, TokenUsage
from generation.living import prompts
from generation.living.activities import LivingActivities
from generation.living.contracts import (
    CommentInput,
    DayInput,
    DayMade,
    DayPlan,
    DayPostInput,
    LiveReport,
    LiveSettings,
    LiveStatus,
    LiveWorldInput,
    MemoryInput,
)
from generation.living.workflows import LiveWorldWorkflow, catch_up
from tests.test_cancel_points import run_input
from tests.test_generation import HISTORIES

pytestmark = [pytest.mark.fast, pytest.mark.timeout(120)]

DAY = 24 * 3600.0
BIBLE = {"title": "Lanternfall", "setting": "Sky-whales carry letters between islands.", "themes": ["letters"]}
LONGEST = "x" * 600  # what a model writes at most (schemas: a memory, a caption, a comment)


class YearStandIns(LivingActivities):
    """The real ``live_day`` over stand-in steps: each builds its real prompt from the state it keeps
    (events, captions, comments, memories at their longest), records the prompt's size, and stores."""

    def __init__(self, characters: int) -> None:
        super().__init__(llm=None, db=None, media=None)  # type: ignore[arg-type]  # the steps below need none
        self.profiles = [
            {"name": f"C{i}", "handle": f"c{i}", "concept": "a letter carrier", "diction": "short", "memory": ""}
            for i in range(characters)
        ]
        self.events: dict[int, dict] = {}
        self.posts: dict[tuple[int, int], dict] = {}
        self.comments: dict[tuple[int, int, bool], dict] = {}
        self.prompt_sizes: dict[int, int] = defaultdict(int)  # the longest prompt of each day
        self.spent: Counter = Counter()  # tokens billed each day
        self.commenters: Counter = Counter()  # comments (not replies) by character
        self.commented_on: Counter = Counter()  # comments on each character's posts
        self.calls: Counter = Counter()
        self.reports: list[LiveReport] = []
        self.run_ids: list[str] = []

    def _sized(self, day: int, messages: list[dict]) -> None:
        """Each step's call: its prompt's size, and the 10 tokens it bills."""
        self.prompt_sizes[day] = max(self.prompt_sizes[day], sum(len(m["content"]) for m in messages))
        self.spent[day] += 10

    async def write_event(self, day: DayInput) -> TokenUsage:
        self.calls["event"] += 1
        recent = [self.events[d] for d in sorted(self.events)[-prompts.RECENT_EVENTS :]]
        self._sized(day.day, prompts.event(day.world, BIBLE, recent, day.day))
        self.events[day.day] = {"day": day.day, "title": LONGEST[:120], "description": LONGEST}
        return TokenUsage(10)

    async def write_day_post(self, inp: DayPostInput) -> TokenUsage:
        self.calls["post"] += 1
        profile = self.profiles[inp.character_index]
        self._sized(inp.day.day, prompts.day_post(inp.day.world, profile, self.events[inp.day.day]))
        key = (inp.character_index, inp.post_index)
        assert key not in self.posts, f"post {key} made twice"
        self.posts[key] = {"handle": profile["handle"], "caption": LONGEST, "day": inp.day.day}
        return TokenUsage(10)

    async def _render(self, item: ItemInput) -> None:
        self.calls["render"] += 1

    async def write_comment(self, inp: CommentInput) -> TokenUsage:
        self.calls["reply" if inp.reply_to is not None else "comment"] += 1
        post = self.posts[(inp.post_character, inp.post_index)]
        answering = self.comments.get((inp.day.day, inp.slot, False)) if inp.reply_to is not None else None
        profile = self.profiles[inp.character_index]
        self._sized(inp.day.day, prompts.comment(inp.day.world, profile, post, answering))
        assert inp.reply_to is not None or inp.character_index != inp.post_character, "a comment on one's own post"
        key = (inp.day.day, inp.slot, inp.reply_to is not None)
        self.comments[key] = {"handle": profile["handle"], "comment": LONGEST[:300]}
        if inp.reply_to is None:
            self.commenters[inp.character_index] += 1
            self.commented_on[inp.post_character] += 1
        return TokenUsage(10)

    def react(self, day: DayInput) -> int:
        self.calls["react"] += 1
        return 0

    async def _spent(self, day: DayInput) -> int:
        return self.spent[day.day]  # what its steps billed (no ledger here)

    async def update_memory(self, inp: MemoryInput) -> TokenUsage:
        self.calls["memory"] += 1
        profile = self.profiles[inp.character_index]
        acts = [
            p["caption"] for p in self.posts.values() if p["day"] == inp.day.day and p["handle"] == profile["handle"]
        ]
        self._sized(inp.day.day, prompts.memory(profile, inp.day.day, self.events[inp.day.day], acts))
        profile["memory"] = LONGEST
        return TokenUsage(10)

    @activity.defn(name="record_live_state")
    async def record_live_state(self, report: LiveReport) -> None:
        self.reports.append(report)
        run_id = activity.info().workflow_run_id
        if run_id not in self.run_ids:
            self.run_ids.append(run_id)

    def activities(self) -> list:
        return [self.live_day, self.record_live_state]


def test_a_world_lives_a_year_in_bounded_histories_with_flat_prompts(env):
    loop, environment = env
    base = run_input(f"year-{uuid.uuid4().hex[:8]}", characters=3, posts=2)
    stand_ins = YearStandIns(characters=3)

    async def live() -> list[int]:
        start = (await environment.get_current_time()).timestamp()
        settings = LiveSettings(day_seconds=DAY, posts_per_day=2, comments_per_day=1, ends_at=start + 364.5 * DAY)
        run = RunRef(1, 1, 1, f"{base.run.workflow_id}-live")
        inp = LiveWorldInput(1, run, base.world, base.config, settings)
        queues = (base.config.workflows_queue, base.config.llm_queue, base.config.media_queue)
        workers = [
            Worker(
                environment.client,
                task_queue=queue,
                activities=stand_ins.activities(),
                workflows=[LiveWorldWorkflow] if queue == base.config.workflows_queue else [],
            )
            for queue in queues
        ]
        async with workers[0], workers[1], workers[2]:
            state = await environment.client.execute_workflow(
                LiveWorldWorkflow.run, inp, id=run.workflow_id, task_queue=base.config.workflows_queue
            )
            assert (state.status, state.days, state.skipped_days) == (LiveStatus.ENDED, 365, 0)
            lengths = []
            for run_id in stand_ins.run_ids:
                history = await environment.client.get_workflow_handle(run.workflow_id, run_id=run_id).fetch_history()
                lengths.append(len(history.events))
                if len(lengths) == 1 and os.environ.get("RECORD_HISTORIES") == "1":  # ends in continue-as-new
                    (HISTORIES / "live_world_continued_as_new.json").write_text(history.to_json())
            return lengths

    lengths = loop.run(live(), timeout=110)
    days = 365
    assert stand_ins.calls["event"] == days and len(stand_ins.events) == days
    assert stand_ins.calls["post"] == stand_ins.calls["render"] == 2 * days and len(stand_ins.posts) == 2 * days
    assert stand_ins.calls["comment"] == stand_ins.calls["reply"] == days
    assert stand_ins.calls["react"] == days and len(stand_ins.comments) == 2 * days
    authors = Counter(post["handle"] for post in stand_ins.posts.values())
    assert max(authors.values()) - min(authors.values()) <= 1  # a fair rotation
    for counts in (stand_ins.commenters, stand_ins.commented_on):  # every character comments and is commented on
        assert sorted(counts) == [0, 1, 2] and max(counts.values()) - min(counts.values()) <= 1, counts
    assert [r.day.day for r in stand_ins.reports if r.day] == list(range(1, days + 1))
    print(f"executions: {len(lengths)}, history events per execution: max {max(lengths)}")
    assert len(lengths) > 1 and max(lengths) < 2000  # it continued as new
    sizes = stand_ins.prompt_sizes
    print("longest prompt (characters) on days 1-5, 100, 365:", [sizes[d] for d in (1, 2, 3, 4, 5, 100, 365)])
    # It grows while the first events and memories are written (at their longest here), then stays flat:
    # only the numbers of the days in it grow longer.
    full = prompts.RECENT_EVENTS + 1
    assert max(sizes[d] for d in range(full, days + 1)) <= sizes[full] + 12  # the day numbers get digits


def test_the_catch_up_rule_skips_whole_missed_days_and_keeps_to_the_grid():
    assert catch_up(scheduled=1000.0, now=1000.5, day_seconds=60) == (1000.0, 0)  # on time
    assert catch_up(scheduled=1000.0, now=1059.0, day_seconds=60) == (1000.0, 0)  # late, within the day
    assert catch_up(scheduled=1000.0, now=1000 + 3.5 * 60, day_seconds=60) == (1180.0, 3)  # 3 skipped, 1 lived


class RefusingProvider:
    """``live_day`` whose provider refuses day 2 for good until told otherwise."""

    def __init__(self) -> None:
        self.refuse, self.days, self.reports = True, [], []

    @activity.defn(name="live_day")
    async def live_day(self, plan: DayPlan) -> DayMade:
        self.days.append(plan.day.day)
        if plan.day.day == 2 and self.refuse:
            raise ApplicationError("Incorrect API key provided", type="LlmFatal", non_retryable=True)
        return DayMade(tokens=5)

    @activity.defn(name="record_live_state")
    async def record_live_state(self, report: LiveReport) -> None:
        self.reports.append(report)


def test_a_provider_that_refuses_for_good_pauses_the_world_and_resumed_it_lives_that_day_again(env):
    loop, environment = env
    base = run_input(f"refused-{uuid.uuid4().hex[:8]}", characters=2, posts=1)
    provider = RefusingProvider()
    run = RunRef(1, 1, 1, f"{base.run.workflow_id}-live")
    inp = LiveWorldInput(1, run, base.world, base.config, LiveSettings(day_seconds=60))

    async def live() -> None:
        queues = (base.config.workflows_queue, base.config.llm_queue)
        workers = [
            Worker(
                environment.client,
                task_queue=queue,
                activities=[provider.live_day, provider.record_live_state],
                workflows=[LiveWorldWorkflow] if queue == base.config.workflows_queue else [],
            )
            for queue in queues
        ]
        async with workers[0], workers[1]:
            handle = await environment.client.start_workflow(
                LiveWorldWorkflow.run, inp, id=run.workflow_id, task_queue=base.config.workflows_queue
            )

            async def state_after(seconds: float):
                await environment.sleep(seconds)
                return await handle.query(LiveWorldWorkflow.state)

            state = await state_after(90)  # day 1 at once, day 2 at 60 s: refused
            assert (state.status, state.days, state.tokens) == (LiveStatus.PAUSED, 1, 5)
            assert "Incorrect API key provided" in provider.reports[-1].error
            assert (await state_after(600)).days == 1  # paused: no day starts
            provider.refuse = False
            await handle.execute_update(LiveWorldWorkflow.resume)
            state = await state_after(5)
            assert (state.status, state.days, state.tokens) == (LiveStatus.LIVE, 2, 10)
            assert provider.reports[-1].error == ""
            await handle.execute_update(LiveWorldWorkflow.stop)
            assert (await handle.result()).status == LiveStatus.STOPPED

    loop.run(live(), timeout=60)
    assert provider.days == [1, 2, 2]  # day 2 once refused, once lived; the days missed while paused skipped
