"""``LiveWorldWorkflow``: one long-running workflow per live world, a world day at a time.

Why a workflow and not a Temporal Schedule: a day needs the world's state (the day number, the events staff
injected, whether it is paused), staff commands must be validated against that state and answered at once
(updates), and two days must never overlap. One workflow holds all of that; its history stays bounded
because it continues as new, carrying its state, before it grows past ``HISTORY_LIMIT`` events.

Catch-up policy: a day missed while no worker ran is not replayed. When the workflow finds that more than a
whole day has passed since a day was due, it counts the missed days as skipped, lives one day at once, and
keeps to the schedule's grid afterwards. Imports nothing from Django."""

import asyncio
import builtins
import hashlib
import random
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from generation.contracts import ItemInput
    from generation.documents import live_day_key
    from generation.living.activities import LivingActivities
    from generation.living.contracts import (
        MAX_DAY_SECONDS,
        MAX_EVENT_CHARS,
        MAX_INJECTED_EVENTS,
        MIN_DAY_SECONDS,
        CommentInput,
        DayInput,
        DayPlan,
        DayPostInput,
        DayReport,
        LiveReport,
        LiveState,
        LiveStatus,
        LiveWorldInput,
        MemoryInput,
    )
    from generation.workflows import (
        MIRROR_OPTIONS,
        budget_stop,
        cancel_requested,
        describe_failure,
        item_failed,
        render_or_degrade,
        run_activity,
        run_llm,
    )

HISTORY_LIMIT = 1500  # events in one execution before it continues as new
# Patch: a day is one activity and its report a local activity (before: an activity per item and per report).
CHEAP_DAYS = "cheap-live-days"
# A day heartbeats every 12 s: a thousand days waiting on a busy worker would otherwise send 500 a second.
DAY_TIMEOUTS = {"start_to_close_timeout": timedelta(minutes=30), "heartbeat_timeout": timedelta(seconds=60)}
LIVE_MIRROR_ACTIVITY = "record_live_state"  # registered by worlds.activities (Django side)


def day_plan(inp: LiveWorldInput, day: DayInput, state: LiveState | None = None) -> DayPlan:
    """Who posts and who comments on ``day``. Posts go round the cast in turn from the state's ``next_slot``
    (the world's post slots so far: a rotation that goes on from day to day and from one time live to the
    next). Each comment goes to the post whose author has received fewest comments so far, by the character
    who has written fewest (ties drawn from a seed of the day), so every character comments and is commented
    on about as often as the others, whatever the cast size and the posts a day; the post's author replies.
    The same state gives the same plan, so a day lived again is the same day. ``state`` None: the plan of
    worlds that went live before CHEAP_DAYS (their recorded days replay with it), whose comments went round in
    a fixed turn."""
    world, settings, number = inp.world, inp.settings, day.day
    cast, per_day = world.character_count, settings.posts_per_day
    first = (number - 1) * per_day if state is None else state.next_slot or 0
    posts = [
        DayPostInput(day, slot, (first + slot) % cast, world.posts_per_character + first + slot)
        for slot in range(per_day)
    ]
    comments: list[CommentInput] = []
    if cast > 1 and posts:
        written, received = _counts(state, "comments_written", cast), _counts(state, "comments_received", cast)
        for slot in range(settings.comments_per_day):
            if state is None:
                post = posts[slot % len(posts)]
                turn = ((number - 1) * settings.comments_per_day + slot) % (cast - 1)
                commenter = (post.character_index + 1 + turn) % cast
            else:
                draw = random.Random(hashlib.sha256(f"{day.run.key}/{number}/comment-{slot}".encode()).digest())
                pairs = [(p, c) for p in posts for c in range(cast) if c != p.character_index]
                ties = [draw.random() for _ in pairs]
                best = min(
                    range(len(pairs)),
                    key=lambda i: (received[pairs[i][0].character_index], written[pairs[i][1]], ties[i]),
                )
                post, commenter = pairs[best]
                written[commenter] += 1
                received[post.character_index] += 1
            comments.append(CommentInput(day, slot, commenter, post.character_index, post.post_index))
        comments += [replace(c, character_index=c.post_character, reply_to=c.slot) for c in comments]
    return DayPlan(day, posts, comments)


def _counts(state: LiveState | None, name: str, cast: int) -> list[int]:
    counts = list(getattr(state, name, None) or [])
    return counts + [0] * (cast - len(counts))


def plan_lived(state: LiveState, plan: DayPlan, cast: int) -> None:
    """A day of ``plan`` was lived: the rotation goes on after its posts and counts its comments."""
    state.next_slot = (state.next_slot or 0) + len(plan.posts)
    written, received = _counts(state, "comments_written", cast), _counts(state, "comments_received", cast)
    for comment in plan.comments:
        if comment.reply_to is None:
            written[comment.character_index] += 1
            received[comment.post_character] += 1
    state.comments_written, state.comments_received = written, received


def catch_up(scheduled: float, now: float, day_seconds: float) -> tuple[float, int]:
    """The catch-up policy: (the slot of the day to live now, days skipped). Whole days that passed while no
    worker ran are skipped, not replayed: the day lives in the latest slot that has come."""
    missed = max(0, int((now - scheduled) // day_seconds))
    return scheduled + missed * day_seconds, missed


@workflow.defn
class LiveWorldWorkflow:
    @workflow.init
    def __init__(self, inp: LiveWorldInput) -> None:
        self._inp = inp
        self._state = inp.state
        self._changed = False  # a command arrived: the wait for the next day looks again

    @workflow.query
    def state(self) -> LiveState:
        return self._state

    # --- staff commands: updates, validated first, so the caller knows at once ------------------

    @workflow.update
    def pause(self) -> LiveState:
        return self._set_status(LiveStatus.PAUSED)

    @pause.validator
    def _pause_allowed(self) -> None:
        self._require(LiveStatus.LIVE, "pause")

    @workflow.update
    def resume(self) -> LiveState:
        state = self._state
        state.error = ""
        # Paused time is not missed time: the next day is due at once at the latest, never counted as skipped.
        state.next_day_at = max(state.next_day_at, self._now())
        return self._set_status(LiveStatus.LIVE)

    @resume.validator
    def _resume_allowed(self) -> None:
        self._require(LiveStatus.PAUSED, "resume")
        if self._budget_left() <= 0:
            raise ValueError(f"{self._budget_spent()}: raise it first")

    @workflow.update
    def stop(self) -> LiveState:
        return self._set_status(LiveStatus.STOPPED)

    @stop.validator
    def _stop_allowed(self) -> None:
        if self._state.status not in (LiveStatus.LIVE, LiveStatus.PAUSED):
            raise ValueError(f"the world is {self._state.status}: there is nothing to stop")

    @workflow.update
    def set_cadence(self, day_seconds: float) -> LiveState:
        state = self._state
        self._inp.settings.day_seconds = day_seconds
        if state.days:  # the next day comes one new day after the last one, or at once: never "missed"
            state.next_day_at = max(state.last_day_at + day_seconds, self._now())
        self._changed = True
        return state

    @set_cadence.validator
    def _cadence_allowed(self, day_seconds: float) -> None:
        if not MIN_DAY_SECONDS <= day_seconds <= MAX_DAY_SECONDS:
            raise ValueError(f"a world day lasts {MIN_DAY_SECONDS:g} s to {MAX_DAY_SECONDS:g} s, not {day_seconds:g} s")
        self._require_running("change the cadence of")

    @workflow.update
    def set_token_budget(self, token_budget: int) -> LiveState:
        """The time live's token budget (its whole spend, every attempt); a world it paused can then resume."""
        self._inp.settings.token_budget = token_budget
        self._changed = True
        return self._state

    @set_token_budget.validator
    def _token_budget_allowed(self, token_budget: int) -> None:
        self._require_running("change the token budget of")
        if token_budget <= self._state.tokens:
            raise ValueError(f"it has spent {self._state.tokens} tokens already: give it more than that")

    @workflow.update
    def inject_event(self, text: str) -> int:
        """Returns the day whose event it is: the next day to start (a day begun keeps the events it began with)."""
        state = self._state
        state.injected.append(" ".join(text.split()))
        return state.days + (2 if state.started_day else 1)

    @inject_event.validator
    def _event_allowed(self, text: str) -> None:
        self._require_running("inject an event into")
        text = " ".join((text or "").split())
        if not text:
            raise ValueError("say what happens: the event is empty")
        if len(text) > MAX_EVENT_CHARS:
            raise ValueError(f"keep the event to {MAX_EVENT_CHARS} characters (it has {len(text)})")
        if len(self._state.injected) >= MAX_INJECTED_EVENTS:
            raise ValueError(f"{MAX_INJECTED_EVENTS} events already wait for the next day")

    def _require(self, status: LiveStatus, verb: str) -> None:
        if self._state.status != status:
            raise ValueError(f"the world is {self._state.status}: only a {status} world can {verb}")

    def _require_running(self, verb: str) -> None:
        if self._state.status not in (LiveStatus.LIVE, LiveStatus.PAUSED):
            raise ValueError(f"the world is {self._state.status}: cannot {verb} it")

    def _set_status(self, status: LiveStatus) -> LiveState:
        self._state.status = status
        self._changed = True
        return self._state

    def _budget_left(self) -> int:
        return self._inp.settings.token_budget - self._state.tokens

    def _budget_spent(self) -> str:
        return f"its token budget of {self._inp.settings.token_budget} is spent ({self._state.tokens} used)"

    # --- the days ---------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: LiveWorldInput) -> LiveState:
        state = self._state
        if state.next_slot is None:  # a state carried from before next_slot: its days took these slots
            state.next_slot = state.days * inp.settings.posts_per_day
        if not state.next_day_at:
            state.next_day_at = self._now()  # the first day starts at once
        while await self._until_next_day():
            await self._live_day()
            info = workflow.info()
            if info.get_current_history_length() > HISTORY_LIMIT or info.is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(replace(self._inp, state=self._state))
        await self._report(None)
        return self._state

    @staticmethod
    def _now() -> float:
        return workflow.now().timestamp()

    async def _until_next_day(self) -> bool:
        """Wait until the next day is due (True), or the world is stopped or past its end (False). A world
        whose token budget is spent pauses and says why."""
        while True:
            state, settings = self._state, self._inp.settings
            if state.status == LiveStatus.STOPPED:
                return False
            if state.status == LiveStatus.PAUSED:
                await workflow.wait_condition(lambda: self._state.status != LiveStatus.PAUSED)
                continue
            if self._budget_left() <= 0:
                self._pause(self._budget_spent())
                await self._report(None)
                continue
            now = self._now()
            slot = catch_up(state.next_day_at, now, settings.day_seconds)[0]  # where a day would live now
            if settings.ends_at is not None and slot > settings.ends_at:
                state.status = LiveStatus.ENDED
                return False
            wait = state.next_day_at - now
            if wait <= 0:
                return True
            self._changed = False
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=timedelta(seconds=wait))
            except builtins.TimeoutError:
                pass

    def _pause(self, reason: str) -> None:
        """Pause with the reason, unless staff stopped the world meanwhile (their stop stands)."""
        self._state.error = reason
        if self._state.status != LiveStatus.STOPPED:
            self._state.status = LiveStatus.PAUSED

    async def _live_day(self) -> None:
        state, settings = self._state, self._inp.settings
        now = self._now()
        # The slot this day lives in; the skipped days are counted once, even if the day is lived again.
        scheduled, missed = catch_up(state.next_day_at, now, settings.day_seconds)
        state.skipped_days += missed
        state.next_day_at = scheduled
        number = state.days + 1
        if state.started_day != number:  # a new day takes the events waiting; a day lived again keeps its own
            state.started_day, state.day_events, state.injected = number, list(state.injected), []
        budget_left = self._budget_left()
        budget = min(settings.daily_token_budget, budget_left)
        ledger = live_day_key(self._inp.run, self._inp.live_id, number)
        day = DayInput(self._inp.run, self._inp.world, number, budget, list(state.day_events), ledger)
        report = DayReport(number, scheduled_at=scheduled, started_at=now, live_id=self._inp.live_id, ledger=ledger)
        try:
            if workflow.patched(CHEAP_DAYS):
                plan = day_plan(self._inp, day, state)
                made = await run_llm(
                    LivingActivities.live_day,
                    plan,
                    self._inp.config,
                    self._inp.world.world_id,
                    exact=True,
                    **DAY_TIMEOUTS,
                )
                report.tokens, report.budget_reached = made.tokens, made.budget_reached
            else:
                plan = await self._make(day, report)
        except ActivityError as err:
            if cancel_requested(err):
                raise
            # The day cannot go on (the provider refused for good, the run lacks what the day needs): the world
            # pauses and says why. Resumed, it lives the same day again, and what was stored of it is kept.
            report.failed = describe_failure(err)
            self._pause(report.failed)
            await self._report(report)
            return
        state.days, state.started_day, state.day_events = number, 0, []
        state.tokens += report.tokens
        plan_lived(state, plan, self._inp.world.character_count)
        # The cadence as it is now: one changed during the day counts from this day.
        state.last_day_at, state.next_day_at = scheduled, scheduled + settings.day_seconds
        report.finished_at = self._now()
        if report.budget_reached and budget_left <= settings.daily_token_budget:
            self._pause(self._budget_spent())  # the time live's budget, not the day's, cut the day short
        await self._report(report)

    async def _make(self, day: DayInput, report: DayReport) -> DayPlan:
        """A day as one activity per item, as days were made before CHEAP_DAYS (kept for the worlds
        that went live then; ``LivingActivities.live_day`` makes the same items in the same order)."""
        plan = day_plan(self._inp, day)  # as these worlds' days were planned (their recorded days replay)
        if not await self._llm(LivingActivities.write_event, day, report):
            return plan
        await asyncio.gather(*(self._post(post, report) for post in plan.posts))
        for replies in (False, True):
            wave = [c for c in plan.comments if (c.reply_to is not None) == replies]
            await asyncio.gather(*(self._llm(LivingActivities.write_comment, c, report) for c in wave))
        await run_activity(
            LivingActivities.react,
            day,
            exact=True,
            task_queue=self._inp.config.workflows_queue,
            start_to_close_timeout=timedelta(seconds=30),
        )
        actors = sorted({p.character_index for p in plan.posts} | {c.character_index for c in plan.comments})
        await asyncio.gather(*(self._llm(LivingActivities.update_memory, MemoryInput(day, c), report) for c in actors))
        return plan

    async def _post(self, post: DayPostInput, report: DayReport) -> None:
        if await self._llm(LivingActivities.write_day_post, post, report):
            config = self._inp.config
            item = ItemInput(self._inp.run, self._inp.world, post.character_index, post.post_index)
            await render_or_degrade(item, config.media_queue, config.workflows_queue, exact=True)

    async def _llm(self, activity, arg, report: DayReport) -> bool:
        """One LLM step of the day; False if it was not made (the day's budget is spent, or the item failed
        for good). Other failures go up."""
        if report.budget_reached:
            return False
        try:
            usage = await run_llm(activity, arg, self._inp.config, self._inp.world.world_id, exact=True)
        except ActivityError as err:
            if cancel_requested(err):
                raise
            if budget_stop(err):
                report.budget_reached = True
                return False
            if item_failed(err):
                return False
            raise
        report.tokens += usage.tokens
        return True

    async def _report(self, day: DayReport | None) -> None:
        report = LiveReport(self._inp.live_id, self._state, day, self._state.error)
        if workflow.patched(CHEAP_DAYS):  # a short write: no round trip through the server
            await workflow.execute_local_activity(LIVE_MIRROR_ACTIVITY, report, **MIRROR_OPTIONS)
            return
        await run_activity(
            LIVE_MIRROR_ACTIVITY, report, exact=True, task_queue=self._inp.config.workflows_queue, **MIRROR_OPTIONS
        )
